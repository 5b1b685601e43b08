"""Straight-through estimators: exact forward values and the declared backward rules."""

from __future__ import annotations

import doctest
import math

import hypothesis.strategies as st
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis.extra.numpy import arrays

from lowbit.quant import LSQ, Uniform
from lowbit.quant import ste as S

FAST = settings(max_examples=40, deadline=None)
vectors = arrays(np.float32, st.integers(1, 30),
                 elements=st.one_of(st.floats(-3, 3, width=32), st.sampled_from([0.0, 1.0, -1.0])))


def grad_of(fn, x: np.ndarray) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(x, fn's output, d sum(g*out) / dx) for a fixed upstream gradient g."""
    xt = torch.from_numpy(x).requires_grad_(True)
    out = fn(xt)
    g = torch.linspace(0.5, 2.0, xt.numel())
    out.backward(g)
    return xt.detach(), out.detach(), xt.grad / g


def test_docstring_examples() -> None:
    assert doctest.testmod(S, optionflags=doctest.NORMALIZE_WHITESPACE).failed == 0


@FAST
@given(x=vectors)
def test_identity_ste_is_exact_in_value(x: np.ndarray) -> None:
    q = torch.from_numpy(x) * 0.1 + 0.3  # values not reachable from x by x + (q - x)
    xt, out, grad = grad_of(lambda t: S.ste(t, q), x)
    assert torch.equal(out, q)
    assert torch.equal(grad, torch.ones_like(xt))


@FAST
@given(x=vectors, lo=st.floats(-2, 0), hi=st.floats(0, 2))
def test_clipped_ste(x: np.ndarray, lo: float, hi: float) -> None:
    xt, out, grad = grad_of(lambda t: S.ste_clipped(t, torch.round(t), lo, hi), x)
    assert torch.equal(out, torch.round(xt))
    assert torch.equal(grad, ((xt >= lo) & (xt <= hi)).float())


@FAST
@given(x=vectors)
def test_bireal_ste(x: np.ndarray) -> None:
    xt, out, grad = grad_of(lambda t: S.ste_bireal(t, torch.where(t >= 0, 1.0, -1.0)), x)
    assert set(out.tolist()) <= {-1.0, 1.0}
    expected = torch.where(xt.abs() < 1, 2 - 2 * xt.abs(), 0.0)
    torch.testing.assert_close(grad, expected)


@FAST
@given(x=vectors)
def test_fused_sign_bireal_matches_the_composed_form(x: np.ndarray) -> None:
    _, out, grad = grad_of(S.sign_bireal, x)
    _, want, want_grad = grad_of(lambda t: S.ste_bireal(t, torch.where(t >= 0, 1.0, -1.0)), x)
    assert torch.equal(out, want)
    torch.testing.assert_close(grad, want_grad)


@pytest.mark.parametrize("signed", [True, False])
@pytest.mark.parametrize("clip_input_grad", [True, False])
@FAST
@given(x=vectors, c=st.floats(0.1, 2.0))
def test_pact_ste(signed: bool, clip_input_grad: bool, x: np.ndarray, c: float) -> None:
    xt = torch.from_numpy(x).requires_grad_(True)
    clip = torch.tensor(c, requires_grad=True)
    q = torch.clamp(xt.detach(), -c if signed else 0.0, c)
    out = S.ste_pact(xt, q, clip, signed, clip_input_grad)
    out.sum().backward()
    assert torch.equal(out.detach(), q)
    lo = -c if signed else 0.0
    inside = ((xt >= lo) & (xt <= clip)).float() if clip_input_grad else torch.ones_like(xt)
    assert torch.equal(xt.grad, inside.detach())
    expected = float((xt >= c).sum()) - (float((xt <= -c).sum()) if signed else 0.0)
    assert float(clip.grad) == pytest.approx(expected)


def test_round_ste_and_grad_scale() -> None:
    x = torch.tensor([0.4, 1.5, 2.5, -0.6], requires_grad=True)
    y = S.round_ste(x)
    assert y.tolist() == [0.0, 2.0, 2.0, -1.0]  # half to even
    y.sum().backward()
    assert x.grad.tolist() == [1.0] * 4
    s = torch.tensor(0.3, requires_grad=True)
    z = S.grad_scale(s, 0.01)
    assert torch.equal(z.detach(), s.detach())
    (3 * z).backward()
    assert float(s.grad) == pytest.approx(0.03)


@pytest.mark.parametrize("signed", [True, False])
def test_lsq_step_gradient(signed: bool) -> None:
    """d out / d s = (-x/s + round(x/s)) inside, -Q_N / Q_P outside, times 1/sqrt(N Q_P)."""
    q = LSQ(bits=3, signed=signed)
    x = torch.tensor([[-9.0, -0.7, 0.0, 0.26, 0.55, 2.0, 40.0]])
    q(x)  # initialises the step
    with torch.no_grad():
        q.step.fill_(0.5)
    q(x).sum().backward()
    qn, qp = (4, 3) if signed else (0, 7)
    v = x / 0.5
    inside = (v >= -qn) & (v <= qp)
    per_elem = torch.where(inside, -v + torch.round(v), torch.where(v < -qn, -qn, qp))
    expected = float(per_elem.sum()) / math.sqrt(x.numel() * qp)
    assert float(q.step.grad) == pytest.approx(expected, rel=1e-5)


def test_pact_learned_clip_gets_gradient_from_clipped_inputs_only() -> None:
    q = Uniform(bits=2, signed=False, clip="learned", clip_value=1.0)
    x = torch.tensor([-1.0, 0.2, 0.7, 1.5, 3.0], requires_grad=True)
    q(x).sum().backward()
    assert float(q.learned_clip.grad) == 2.0  # two inputs at or above the clip
    assert x.grad.tolist() == [0.0, 1.0, 1.0, 0.0, 0.0]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("signed", [False, True])
@pytest.mark.parametrize("clip_input_grad", [False, True])
def test_fused_uniform_equals_unfused_path(dtype: torch.dtype, signed: bool,
                                           clip_input_grad: bool) -> None:
    """The QAT hot path: same values, same x-gradients, same PACT clip gradient as the reference."""
    from lowbit.quant import functional as F
    from lowbit.quant.ste import fused_uniform_ste

    torch.manual_seed(0)
    x = (torch.randn(2000) * 2).to(dtype)
    x[:6] = torch.tensor([0.0, 2.5, -2.5, 1.0, -1.0, 3.0]).to(dtype)  # exact boundaries included
    x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
    c1, c2 = torch.tensor(2.5, requires_grad=True), torch.tensor(2.5, requires_grad=True)
    codes, step = F.uniform_encode(x2, c2, 4, signed)
    ref = S.ste_pact(x2, codes.to(step.dtype) * step, c2.to(dtype), signed, clip_input_grad)
    out = fused_uniform_ste(x1, c1, F.uniform_num_steps(4, signed), signed, clip_input_grad)
    g = torch.randn(2000).to(dtype)
    (out * g).sum().backward()
    (ref * g).sum().backward()
    assert torch.equal(out, ref) and torch.equal(x1.grad, x2.grad)
    torch.testing.assert_close(c1.grad, c2.grad, rtol=1e-2, atol=0.1)  # summation order only


@pytest.mark.parametrize("signed", [False, True])
def test_fused_pact_clip_gradient_is_accurate_in_bf16(signed: bool) -> None:
    """The clip gradient sums a bf16 gradient without a float32 copy: float32 accumulation,
    one rounding of each part's result (<= 2^-8 of its float64 sum)."""
    from lowbit.quant.ste import fused_uniform_ste

    gen = torch.Generator().manual_seed(2)
    x = (torch.randn(64, 8, 16, 16, generator=gen) * 2).to(torch.bfloat16)
    x = x.contiguous(memory_format=torch.channels_last).requires_grad_()
    g = torch.rand(64, 8, 16, 16, generator=gen).to(torch.bfloat16) + 0.5
    clip = torch.tensor(1.5, requires_grad=True)
    fused_uniform_ste(x, clip, 15, signed, clip_input_grad=True).backward(g)
    xd, gd = x.detach().double(), g.double()
    above, below = float(gd[xd >= 1.5].sum()), float(gd[xd <= -1.5].sum()) if signed else 0.0
    assert clip.grad.dtype == torch.float32
    assert abs(float(clip.grad) - (above - below)) <= 2**-8 * (abs(above) + abs(below))
    inside = (xd >= (-1.5 if signed else 0)) & (xd <= 1.5)
    assert torch.equal(x.grad, (gd * inside).to(torch.bfloat16))
