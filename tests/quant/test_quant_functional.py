"""The maths of lowbit.quant.functional against brute force, the papers' rules and the
reference numbers of spec/algorithms.md.

The spec's "relative L2 error" figures are ratios of squared norms, ||W - Q||^2 / ||W||^2
(e.g. the optimal ternary 0.191 = 0.437^2); `tests.quant.common.rel_err` computes exactly that.
"""

from __future__ import annotations

import itertools
import math

import hypothesis.strategies as st
import pytest
import torch
from hypothesis import given, settings
from tests.quant.common import rel_err, small, tied

from lowbit.quant import functional as F
from lowbit.quant import stats as S

FAST = settings(max_examples=40, deadline=None)


def ternary_values(w: torch.Tensor, per_channel: bool = False) -> torch.Tensor:
    codes, alpha = F.ternary_exact(w, per_channel)
    return codes * F.channel_view(alpha, w)


def brute_force_ternary(w: list[float]) -> float:
    """min over all 3^N ternary Q (optimal alpha each) of ||W - alpha Q||^2."""
    wt = torch.tensor(w, dtype=torch.float64)
    best = float((wt**2).sum())
    for q in itertools.product((-1.0, 0.0, 1.0), repeat=len(w)):
        qt = torch.tensor(q, dtype=torch.float64)
        if qt.any():
            alpha = max(float(wt @ qt) / float(qt @ qt), 0.0)
            best = min(best, float(((wt - alpha * qt) ** 2).sum()))
    return best


# ----------------------------------------------------------------------------- INQ pow2
@FAST
@given(s=st.floats(1e-30, 1e30))
def test_pow2_top_exponent_brackets_the_max(s: float) -> None:
    n1 = F.pow2_top_exponent(s)
    assert 0.75 * 2.0**n1 <= s < 1.5 * 2.0**n1


def test_pow2_top_exponent_exact_at_binade_edges() -> None:
    assert F.pow2_top_exponent(0.75) == 0  # log2(4/3 * 0.75) = 0 exactly
    assert F.pow2_top_exponent(math.nextafter(0.75, 0)) == -1
    assert F.pow2_top_exponent(1.5) == 1
    with pytest.raises(ValueError, match="positive"):
        F.pow2_top_exponent(0.0)


def eq4_literal(w: torch.Tensor, n1: int, bits: int) -> torch.Tensor:
    """INQ paper Eq. 4 written out: beta*sgn(w) if (alpha+beta)/2 <= |w| < 3*beta/2."""
    n2 = n1 + 1 - 2 ** (bits - 2)
    pos = [0.0] + [2.0**k for k in range(n2, n1 + 1)]
    out = torch.zeros_like(w, dtype=torch.float64)
    a = w.abs().double()
    for lo, beta in itertools.pairwise(pos):
        out = torch.where(((lo + beta) / 2 <= a) & (a < 1.5 * beta), beta, out)
    return out * torch.sign(w)


@pytest.mark.parametrize("bits", [2, 3, 4, 5])
@FAST
@given(w=st.lists(small, min_size=1, max_size=30))
def test_pow2_equals_paper_eq4_and_nearest_rounding(bits: int, w: list[float]) -> None:
    wt = torch.tensor(w)
    if not wt.abs().max() > 0:
        return
    n1 = F.pow2_top_exponent(float(wt.abs().max()))
    n2 = n1 + 1 - 2 ** (bits - 2)
    q = F.pow2_quantize(wt, bits).double()
    levels = torch.tensor([0.0] + [2.0**k for k in range(n2, n1 + 1)], dtype=torch.float64)
    dist = (wt.abs().double()[:, None] - levels).abs()
    nearest = levels[dist.argmin(dim=1)] * torch.sign(wt)
    ties = (dist == dist.min(dim=1, keepdim=True).values).sum(dim=1) > 1
    eq4 = eq4_literal(wt, n1, bits)
    assert torch.equal(q[~ties], nearest[~ties]) and torch.equal(q[~ties], eq4[~ties])
    assert (q.abs()[ties] < eq4.abs()[ties]).all()  # exact midpoint: smaller magnitude wins


def test_pow2_ties_and_clamp_with_frozen_n1() -> None:
    w = torch.tensor([0.75, -1.5, 3.0, 100.0, -0.125, 0.12])
    # n1 = 0, bits 3: levels {0, 1/2, 1}; midpoints 1/4 and 3/4 go down; above 1.5 clamps to 1
    q = F.pow2_quantize(w, bits=3, n1=0)
    assert q.tolist() == [0.5, -1.0, 1.0, 1.0, 0.0, 0.0]


def test_pow2_ternary_gives_three_values_and_reference_errors(gauss: torch.Tensor) -> None:
    n1 = F.pow2_top_exponent(float(gauss.abs().max()))
    assert set(F.pow2_quantize(gauss, 2).unique().tolist()) == {-(2.0**n1), 0.0, 2.0**n1}
    # spec §2.5 one-shot INQ on 2e5 Gaussian weights: b=2 zeroes ~95% (0.86), 0.33, 0.045, 0.038
    q2 = F.pow2_quantize(gauss, 2)
    assert float((q2 == 0).float().mean()) == pytest.approx(0.95, abs=0.01)
    for bits, ref in [(2, 0.86), (3, 0.33), (4, 0.045), (5, 0.038)]:
        assert rel_err(gauss, F.pow2_quantize(gauss, bits)) == pytest.approx(ref, rel=0.03)


def test_pow2_code_layout() -> None:
    codes, top = F.pow2_encode(torch.tensor([0.3, -1.0, 0.0, 0.05]), bits=4)
    assert top == 1.0  # n1 = 0, n2 = -3: levels {0, 1/8, 1/4, 1/2, 1}
    assert codes.tolist() == [2, -4, 0, 0]  # code j <-> 2^(n2-1+j): 0.3 -> 1/4 is code 2
    assert F.pow2_decode(codes, top, 4).tolist() == [0.25, -1.0, 0.0, 0.0]


# ----------------------------------------------------------------------------- exact ternary
@settings(max_examples=60, deadline=None)
@given(w=st.lists(st.one_of(small, tied), min_size=1, max_size=8))
def test_ternary_matches_brute_force(w: list[float]) -> None:
    wt = torch.tensor(w, dtype=torch.float64)
    err = float(((wt - ternary_values(wt)) ** 2).sum())
    assert err == pytest.approx(brute_force_ternary(w), rel=1e-9, abs=1e-9)


@settings(max_examples=15, deadline=None)
@given(w=st.lists(st.lists(st.one_of(small, tied), min_size=5, max_size=5),
                  min_size=1, max_size=3))
def test_ternary_per_channel_matches_brute_force_per_row(w: list[list[float]]) -> None:
    wt = torch.tensor(w, dtype=torch.float64)
    q = ternary_values(wt, per_channel=True)
    for row, qrow, wrow in zip(wt, q, w, strict=True):
        err = float(((row - qrow) ** 2).sum())
        assert err == pytest.approx(brute_force_ternary(wrow), rel=1e-9, abs=1e-9)


def test_ternary_keeps_whole_tie_groups() -> None:
    w = torch.tensor([3.0, -1.0, 1.0, 1.0, -1.0, 0.1])
    codes, alpha = F.ternary_exact(w)
    # Keeping all four 1s (alpha = 7/5, err 3.21) beats keeping only the 3 (err 4.01).
    assert codes.tolist() == [1, -1, 1, 1, -1, 0]
    assert float(alpha) == pytest.approx(7 / 5)


def test_ternary_reference_numbers(gauss: torch.Tensor) -> None:
    codes, alpha = F.ternary_exact(gauss)
    mean_abs = float(gauss.abs().mean())
    assert rel_err(gauss, codes * alpha) == pytest.approx(0.191, abs=0.002)
    assert float(alpha) / mean_abs == pytest.approx(1.54, abs=0.01)
    assert float((codes == 0).float().mean()) == pytest.approx(0.46, abs=0.005)
    thr = float(gauss.abs()[codes != 0].min())
    assert thr / mean_abs == pytest.approx(0.77, abs=0.01)
    tcodes, talpha = F.twn_ternary(gauss)
    assert rel_err(gauss, tcodes * talpha) == pytest.approx(0.193, abs=0.002)


# ----------------------------------------------------------------------------- GDRQ scale-clip
@pytest.mark.parametrize(("bits", "k", "ref"), [
    (2, 2, 0.230), (2, 3, 0.458), (3, 2, 0.058), (4, 2, 0.041), (4, 3, 0.013),
])
def test_scale_clip_reference_numbers(gauss: torch.Tensor, bits: int, k: float,
                                      ref: float) -> None:
    codes, step = F.uniform_encode(gauss, F.scale_clip_threshold(gauss, k), bits, signed=True)
    # spec §3.4 table; our N(0,1) sample lands within 4% of every entry (W4 k=2: 0.0396)
    assert rel_err(gauss, codes * step) == pytest.approx(ref, rel=0.04)


def test_scale_clip_group_thresholds() -> None:
    w = torch.randn(6, 2, 3, 3, generator=torch.Generator().manual_seed(1))
    t = F.scale_clip_threshold(w, 2.0, group_size=2)
    for g in range(3):
        expected = 2 * w[2 * g: 2 * g + 2].abs().mean()
        torch.testing.assert_close(t[2 * g: 2 * g + 2], expected.expand(2))
    torch.testing.assert_close(F.scale_clip_threshold(w, 3.0, "std"), 3 * w.std(correction=0))
    with pytest.raises(ValueError, match="group_size 4 must divide the 6 output channels"):
        F.scale_clip_threshold(w, 2.0, group_size=4)


def test_uniform_encode_signed_and_unsigned() -> None:
    x = torch.tensor([-2.0, -0.4, 0.0, 0.3, 0.9, 5.0])
    codes, step = F.uniform_encode(x, torch.tensor(1.0), bits=3, signed=True)  # L = 3
    assert codes.tolist() == [-3, -1, 0, 1, 3, 3] and float(step) == pytest.approx(1 / 3)
    codes, step = F.uniform_encode(x, torch.tensor(1.0), bits=2, signed=False)  # L = 3 on [0,1]
    assert codes.tolist() == [0, 0, 0, 1, 3, 3]


# ----------------------------------------------------------------------------- exact ternary in
# every dtype: float64 sums, so float32/bf16/float16 inputs get the float64 result
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize(("shape", "per_channel"), [
    ((256, 256, 3, 3), False), ((64, 64, 3, 3), True), ((3, 70_000), True), ((1000,), False),
])
def test_ternary_exact_equals_float64_in_every_dtype(dtype: torch.dtype, shape: tuple[int, ...],
                                                     per_channel: bool) -> None:
    w = (torch.randn(shape, generator=torch.Generator().manual_seed(5)) * 0.05).to(dtype)
    codes, alpha = F.ternary_exact(w, per_channel)
    codes64, alpha64 = F.ternary_exact(w.double(), per_channel)
    assert codes.dtype == torch.int8 and alpha.dtype == dtype
    assert torch.equal(codes, codes64)  # the same support, element for element
    assert torch.equal(alpha, alpha64.to(dtype))  # alpha up to the dtype's rounding


@pytest.mark.parametrize("shape", [(2, 150_001), (300, 1000), (1, 7)])
def test_ternary_support_chunked_scan_matches_the_vectorised_one(shape: tuple[int, int]) -> None:
    # on CPU the prefix sums are scanned in column chunks: same k*, same float64 sums
    srt = F.sorted_abs(torch.randn(shape, generator=torch.Generator().manual_seed(6)))
    k_vec, s_vec = F._support_rows(srt)
    k_chunk, s_chunk = F._support_chunked(srt.numpy())
    assert torch.equal(k_vec, k_chunk)
    torch.testing.assert_close(s_vec, s_chunk, rtol=1e-13, atol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("kind", ["positive", "negative", "mixed"])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "transposed"])
def test_whole_tensor_abs_stats_equal_float64(dtype: torch.dtype, kind: str, layout: str) -> None:
    """abs_sum / abs_max (the activation statistics' fast path) give sum |x| and max |x| of
    every layout: one-sign tensors by a plain sum, mixed signs through vector_norm."""
    x = torch.randn(4, 6, 5, 7, generator=torch.Generator().manual_seed(3))
    x = {"positive": x.abs(), "negative": -x.abs(), "mixed": x}[kind].to(dtype)
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    elif layout == "transposed":
        x = x.transpose(1, 3)
    ref = x.double().abs()
    assert S.abs_sum(x).dtype == dtype
    tol = 1e-6 if dtype == torch.float32 else 2**-8  # the sum is rounded to x's dtype
    assert S.abs_sum(x).item() == pytest.approx(ref.sum().item(), rel=tol)
    assert S.abs_max(x).item() == ref.max().item() and S.abs_max(x).dtype == dtype


def test_whole_tensor_abs_stats_edge_cases() -> None:
    assert S.abs_sum(torch.empty(0)).item() == 0 and S.abs_max(torch.empty(0)).item() == 0
    nan = torch.tensor([1.0, float("nan"), -2.0])
    assert S.abs_sum(nan).isnan() and S.abs_max(nan).isnan()
    x = torch.ones(2, 3, 4, 4).contiguous(memory_format=torch.channels_last)
    assert S.flat(x).data_ptr() == x.data_ptr()  # a view, no copy
