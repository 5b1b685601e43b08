"""LBW's least-squares power-of-two fit (`lowbit.quant.lbwfit`) against brute force.

The objective is min ||W - alpha*Q||^2, Q in {0, ±1, ±2, .., ±2^(n-1)}; errors are relative
squared errors ||W - Q||^2 / ||W||^2, as in spec §4.4.
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
from lowbit.quant import lbwfit


# ----------------------------------------------------------------------------- LBW b >= 3
def lbw_values(w: torch.Tensor, bits: int, **kw) -> torch.Tensor:
    codes, top = lbwfit.lbw_fit(w, bits, **kw)
    return F.pow2_decode(codes, top, lbwfit.lbw_num_magnitudes(bits))


@pytest.mark.parametrize("bits", [3, 4])
@settings(max_examples=20, deadline=None)
@given(w=st.lists(st.one_of(small, tied), min_size=2, max_size=40))
def test_lbw_alternating_objective_never_increases(bits: int, w: list[float]) -> None:
    wt = torch.tensor(w, dtype=torch.float64)
    errs = [rel_err(wt, lbw_values(wt, bits, iters=i)) if wt.any() else 0.0 for i in range(8)]
    for before, after in itertools.pairwise(errs):
        assert after <= before + 1e-12


def log_grid_optimum(w: torch.Tensor, n: int) -> float:
    """Independent check: best error over a fine grid of alpha (nearest level, then refit)."""
    a = w.abs().double()
    mags = torch.tensor([0.0] + [2.0**j for j in range(n)], dtype=torch.float64)
    best = math.inf
    for log_alpha in torch.linspace(-2, 0, 200).tolist():  # optimum near 2^-0.95 for N(0,1)
        q = mags[(a[:, None] / 2**log_alpha - mags).abs().argmin(dim=1)]
        alpha = float(a @ q) / float(q @ q)
        best = min(best, float(((a - alpha * q) ** 2).sum() / (a**2).sum()))
    return best


def test_lbw_reference_numbers(gauss: torch.Tensor) -> None:
    w = gauss[:50_000]
    e3 = rel_err(w, lbw_values(w, 3))
    assert e3 == pytest.approx(log_grid_optimum(w, 3), rel=0.005)
    # spec §4.4 quotes 0.0464 at b=3; the log-grid optimum of this objective on N(0,1) data is
    # 0.047-0.048 (seed-dependent), so the spec figure is ~2% low: allow 4%.
    assert e3 == pytest.approx(0.0464, rel=0.04)
    # b >= 4 saturates near 0.038 (spec: alternating 0.0383, fine grid 0.0375)
    assert rel_err(w, lbw_values(w, 5, iters=60)) == pytest.approx(0.0383, rel=0.03)


def test_lbw_threshold_rule_and_bits2_is_ternary() -> None:
    w = torch.tensor([0.1, -0.4, 1.0, 0.26, -2.0])
    codes, top = lbwfit.lbw_fit(w, 3, method="threshold", r=0.5)
    assert float(top) == pytest.approx(1.0)  # 4*alpha = 0.5 * max|w|: alpha = 1/4
    assert F.pow2_decode(codes, top, 3).tolist() == [0.0, -0.5, 1.0, 0.25, -1.0]
    for method in ("alternating", "threshold"):
        c2, a2 = lbwfit.lbw_fit(w, 2, method=method)
        ref = F.ternary_exact(w)
        assert torch.equal(c2, ref[0]) and torch.equal(a2, ref[1])


@pytest.mark.parametrize("method", ["alternating", "threshold"])
def test_lbw_8_bits_keeps_levels_below_float32_normal_range(method: str) -> None:
    # n = 127 magnitudes: the smallest level is 2^-126 of the top, at the edge of float32's
    # normal range; codes are computed in float64, so tiny weights still get their own level.
    w = torch.tensor([1.0, -2.0**-60, 2.0**-100, 0.0, 0.3], dtype=torch.float32)
    codes, top = lbwfit.lbw_fit(w, 8, method=method, r=1.0)
    assert codes.dtype == torch.int8 and int(codes.abs().max()) <= 127
    values = F.pow2_decode(codes, top, lbwfit.lbw_num_magnitudes(8))
    assert values[0] == pytest.approx(1.0, rel=0.34) and float(values[3]) == 0.0
    assert float(values[1]) == pytest.approx(-(2.0**-60) * float(values[0]), rel=1e-6)
    assert float(values[2]) == pytest.approx(2.0**-100 * float(values[0]), rel=1e-6)
    assert float(values[4]) in {0.25 * float(values[0]), 0.5 * float(values[0])}


# ----------------------------------------------------------------------------- optimality
def dense_search(w: torch.Tensor, bits: int, per_channel: bool, per_octave: int = 48) -> float:
    """Independent reference: the best relative error over a dense log grid of alpha (nearest
    level by brute-force argmin over the levels, scale as searched), summed over rows."""
    n = lbwfit.lbw_num_magnitudes(bits)
    a = F.rows(w, per_channel).abs().double()
    mags = torch.tensor([0.0] + [2.0**j for j in range(n)], dtype=torch.float64)
    top = a.amax(dim=1, keepdim=True)
    octaves = min(n + 6, 24)
    best = torch.full((a.shape[0],), math.inf, dtype=torch.float64)
    for t in torch.linspace(-octaves, 1.1, octaves * per_octave).tolist():
        alpha = top * 2.0**t
        q = mags[(a[..., None] / alpha[..., None] - mags).abs().argmin(dim=-1)]
        best = torch.minimum(best, ((a - alpha * q) ** 2).sum(dim=1))
    return float(best.sum() / (a**2).sum())


def lbw_rel_err(w: torch.Tensor, bits: int, **kw) -> float:
    return rel_err(w, lbw_values(w, bits, **kw))


SAMPLERS = {
    "gauss": torch.distributions.Normal(0.0, 1.0),
    "laplace": torch.distributions.Laplace(0.0, 1.0),
    "student_t3": torch.distributions.StudentT(3.0),
}


@pytest.mark.parametrize("dist", list(SAMPLERS))
@pytest.mark.parametrize("per_channel", [False, True])
def test_alternating_reaches_the_least_squares_optimum(dist: str, per_channel: bool) -> None:
    torch.manual_seed(3)
    shape = (6, 4, 3, 3) if per_channel else (16, 8, 3, 3)
    w = SAMPLERS[dist].sample(shape) * 0.02
    for bits in range(3, 9):
        ref = dense_search(w, bits, per_channel)
        got = lbw_rel_err(w, bits, per_channel=per_channel)
        assert got <= ref * 1.005, (bits, got, ref)
        assert got <= lbw_rel_err(w, bits, per_channel=per_channel, method="threshold", r=1.0)


def test_alternating_on_heavy_tailed_weights_of_the_issue() -> None:
    # issue 13: StudentT(3)*0.02, 64x64x3x3, 4 bits: 0.1115 with the old 20-step Lloyd
    # iteration, 0.0455 with 200 steps, 0.0576 with threshold r=1
    torch.manual_seed(0)
    w = torch.distributions.StudentT(3.0).sample((64, 64, 3, 3)) * 0.02
    got = lbw_rel_err(w, 4)
    assert got <= 0.99 * lbw_rel_err(w, 4, method="threshold", r=1.0)
    assert got <= dense_search(w, 4, False, per_octave=24) * 1.005


def test_alternating_more_steps_never_worse_and_zero_rows() -> None:
    w = torch.distributions.Laplace(0.0, 1.0).sample((4, 50))
    w[2] = 0
    errs = [lbw_rel_err(w, 4, per_channel=True, iters=i) for i in (0, 1, 3, 20)]
    assert all(b <= a + 1e-12 for a, b in itertools.pairwise(errs))
    codes, top = lbwfit.lbw_fit(w, 4, per_channel=True)
    assert float(top[2]) == 0 and not codes[2].any() and bool((top[[0, 1, 3]] > 0).all())
