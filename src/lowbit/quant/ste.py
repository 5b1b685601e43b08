"""Straight-through estimators: the only place in lowbit where gradients are faked.

Every function returns a tensor whose *value* is exactly the quantized tensor `q` and whose
*gradient* follows a declared rule. The textbook form `x + (q - x).detach()` has the right
gradient but its value is `fl(x + fl(q - x))`, which can differ from `q` by one ulp; that would
break `decode(encode(x)) == forward(x)`. We therefore write `q.detach() + (f(x) - f(x).detach())`:
the bracket is exactly zero for finite inputs, so the value is `q` bit for bit, and the gradient
is `f'(x)`. (The only visible difference is that `-0.0` may come out as `+0.0`.)

| function        | value       | d out / d x                          | spec      |
|-----------------|-------------|--------------------------------------|-----------|
| `ste`           | q           | 1                                    | STE-id    |
| `ste_clipped`   | q           | 1[lo <= x <= hi]                     | STE-clip  |
| `ste_bireal`    | q           | (2 - 2|x|) * 1[|x| < 1]              | STE-BiReal|
| `sign_bireal`   | sign(x), sign(0) = +1 | as `ste_bireal`, one node  | hot path  |
| `ste_pact`      | q           | 1[lo <= x <= clip]; d/d clip: PACT   | PACT      |
| `round_ste`     | round(x)    | 1                                    | LSQ       |
| `grad_scale`    | x           | g (a constant factor)                | LSQ       |
| `fused_uniform_ste` | uniform q | as `ste_pact`/`ste_clipped`/`ste`, one node | hot path |
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["fused_uniform_ste", "grad_scale", "round_ste", "sign_bireal", "ste", "ste_bireal",
           "ste_clipped", "ste_pact"]


def _zero_with_grad(f: Tensor) -> Tensor:
    """Exactly zero in value, gradient of `f` in backward."""
    return f - f.detach()


def ste(x: Tensor, q: Tensor) -> Tensor:
    """Identity straight-through estimator.

    Args:
        x: the float input (receives the gradient).
        q: the quantized value (same shape as `x`; its own graph is cut).

    Returns:
        A tensor equal to `q` whose gradient with respect to `x` is the identity.

    Example:
        >>> x = torch.tensor([0.3, -1.7], requires_grad=True)
        >>> ste(x, torch.round(x)).sum().backward(); x.grad
        tensor([1., 1.])
    """
    return q.detach() + _zero_with_grad(x)


def ste_clipped(x: Tensor, q: Tensor, lo: float | Tensor, hi: float | Tensor) -> Tensor:
    """Clipped STE: value `q`, gradient `1[lo <= x <= hi]` (bounds inclusive, as in §1.2).

    `lo`/`hi` may be tensors broadcastable to `x`; they receive no gradient.

    Example:
        >>> x = torch.tensor([-0.5, 0.5, 1.5], requires_grad=True)
        >>> ste_clipped(x, x.clamp(0, 1), 0.0, 1.0).sum().backward(); x.grad
        tensor([0., 1., 0.])
    """
    lo_t = torch.as_tensor(lo, dtype=x.dtype, device=x.device)
    hi_t = torch.as_tensor(hi, dtype=x.dtype, device=x.device)
    mask = ((x >= lo_t.detach()) & (x <= hi_t.detach())).to(x.dtype)
    return q.detach() + _zero_with_grad(x) * mask


def ste_bireal(x: Tensor, q: Tensor) -> Tensor:
    """Bi-Real sign STE: value `q`, gradient `(2 - 2|x|) * 1[|x| < 1]`.

    The derivative of the piecewise quadratic `2x - x|x|` (|x| < 1), a smooth stand-in for
    sign(x) (Liu et al., Bi-Real Net; Group-Net's `Q_A`).

    Example:
        >>> x = torch.tensor([-2.0, -0.5, 0.0, 0.75], requires_grad=True)
        >>> ste_bireal(x, torch.where(x >= 0, 1.0, -1.0)).sum().backward(); x.grad
        tensor([0.0000, 1.0000, 2.0000, 0.5000])
    """
    xc = x.clamp(-1.0, 1.0)  # derivative (2 - 2|x|) inside, 0 outside (and at |x| = 1)
    surrogate = 2 * xc - xc * xc.abs()  # bounded: no overflow to inf*0 = NaN in float16
    return q.detach() + _zero_with_grad(surrogate)


def ste_pact(x: Tensor, q: Tensor, clip: Tensor, signed: bool,
             clip_input_grad: bool = True) -> Tensor:
    """PACT STE for a learned clip value `clip` (Choi et al., 2018).

    Value `q`. Gradient to `clip`: `1[x >= clip]`, and for signed clips also `-1[x <= -clip]`
    (the derivative of `clamp(x, lo, clip)` wrt its bound, with rounding treated as the
    identity). Gradient to `x`: `1[lo <= x <= clip]` (lo = -clip or 0) if `clip_input_grad`,
    else 1 (weights keep the identity STE even outside the clip range).

    Example:
        >>> x = torch.tensor([-1.0, 0.5, 3.0], requires_grad=True)
        >>> c = torch.tensor(2.0, requires_grad=True)
        >>> ste_pact(x, x.clamp(0, 2), c, signed=False).sum().backward(); x.grad, c.grad
        (tensor([0., 1., 0.]), tensor(1.))
    """
    c = clip.detach()
    above = (x.detach() >= c).to(x.dtype)
    below = (x.detach() <= -c).to(x.dtype) if signed else torch.zeros_like(above)
    clip_part = _zero_with_grad(clip) * (above - below)
    if clip_input_grad:
        return ste_clipped(x, q, -c if signed else torch.zeros_like(c), c) + clip_part
    return ste(x, q) + clip_part


def round_ste(x: Tensor) -> Tensor:
    """`round(x)` (half to even) with identity gradient; the building block of LSQ."""
    return torch.round(x).detach() + _zero_with_grad(x)


def grad_scale(x: Tensor, g: float) -> Tensor:
    """Value `x` exactly, gradient multiplied by `g` (LSQ's step-size gradient scale)."""
    return x.detach() + _zero_with_grad(x * g)


def _next(v: Tensor, toward: float) -> float:
    """The neighbour of `v` in its own dtype toward `toward`, as a Python float (exact)."""
    return float(torch.nextafter(v, torch.full_like(v, toward)))


def _mask_grad(g: Tensor, x: Tensor, lo: float, hi: float) -> Tensor:
    """`g * 1[lo < x < hi]` in one fused kernel (aten's hardtanh backward)."""
    return torch.ops.aten.hardtanh_backward(g, x, lo, hi)


def _masked_sum(g: Tensor, x: Tensor, lo: float, hi: float) -> Tensor:
    """Sum of `g` over lo < x < hi, as a float32 0-d tensor.

    One fused mask kernel, then a sum in g's own dtype: torch accumulates bf16/float16 sums in
    float32 and rounds only the result (relative error <= 2^-9 in bf16), whereas
    `.sum(dtype=torch.float32)` would first copy the whole gradient to float32.
    """
    return _mask_grad(g, x, lo, hi).sum().float()


class _FusedUniform(torch.autograd.Function):
    """Per-tensor uniform quantization and its STE in one autograd node (the QAT hot path).

    Same value as `uniform_encode` + decode (same operations, in place) and the same gradients
    as `ste_pact` / `ste_clipped` / `ste`, but each mask is one fused kernel with Python-float
    bounds (several times faster on CPU than tensor-bound comparisons and `where`); the closed
    intervals of the rules become open ones by widening each bound to its neighbouring float.
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: torch.autograd.function.FunctionCtx, x: Tensor, clip: Tensor, big_l: int,
        signed: bool, clip_input_grad: bool
    ) -> Tensor:  # fmt: skip
        t = clip.detach().to(x.dtype)
        lo = -t if signed else torch.zeros_like(t)
        out = torch.clamp(x.detach(), float(lo), float(t))
        step = t / big_l
        out.div_(step if float(t) > 0 else torch.ones_like(step)).round_().mul_(step)
        ctx.save_for_backward(x.detach())
        ctx.bounds = (  # type: ignore[attr-defined]
            (_next(lo, -math.inf), _next(t, math.inf)) if clip_input_grad else None,
            (_next(t, -math.inf), _next(-t, math.inf) if signed else None),
        )
        return out

    @staticmethod
    def backward(  # type: ignore[override]
        ctx: torch.autograd.function.FunctionCtx, g: Tensor
    ) -> tuple[Tensor | None, ...]:
        (x,) = ctx.saved_tensors  # type: ignore[attr-defined]
        inside, (below_t, above_neg_t) = ctx.bounds  # type: ignore[attr-defined]
        gx = g if inside is None else _mask_grad(g, x, *inside)  # 1[lo <= x <= T]
        gclip = None
        # PACT: the clip's gradient is the sum of g over x >= T (minus over x <= -T if signed)
        if ctx.needs_input_grad[1]:  # type: ignore[attr-defined]
            gclip = _masked_sum(g, x, below_t, math.inf)
            if above_neg_t is not None:
                gclip = gclip - _masked_sum(g, x, -math.inf, above_neg_t)
        return gx, gclip, None, None, None


def fused_uniform_ste(x: Tensor, clip: Tensor, big_l: int, signed: bool,
                      clip_input_grad: bool) -> Tensor:
    """Value: `Delta * round(clamp(x, lo, T) / Delta)`, T = `clip` (0-d), Delta = T / `big_l`,
    lo = -T (signed) or 0. Gradient to x: `1[lo <= x <= T]` if `clip_input_grad` else 1;
    gradient to `clip` (if it requires grad): PACT's `1[x >= T]` (minus `1[x <= -T]` if signed).

    Example:
        >>> x = torch.tensor([-1.0, 0.4, 3.0], requires_grad=True)
        >>> c = torch.tensor(2.0, requires_grad=True)
        >>> y = fused_uniform_ste(x, c, 2, signed=False, clip_input_grad=True)
        >>> y.sum().backward(); y.detach(), x.grad, c.grad
        (tensor([0., 0., 2.]), tensor([0., 1., 0.]), tensor(1.))
    """
    return _FusedUniform.apply(x, clip, big_l, signed, clip_input_grad)  # type: ignore[no-any-return]


class _SignBiReal(torch.autograd.Function):
    """sign(x) in {-1, +1} and the Bi-Real gradient in one node, computed in place.

    Same value as `sign_pm1` and the same gradient as `ste_bireal` (max(2 - 2|x|, 0) equals
    (2 - 2|x|) * 1[|x| < 1]), without the seven full-size temporaries of the composed form: on
    CPU, a 1-bit activation layer was dominated by allocating them.
    """

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, x: Tensor) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(x.detach())
        return (x.detach() >= 0).to(x.dtype).mul_(2).sub_(1)

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, g: Tensor) -> Tensor:  # type: ignore[override]
        (x,) = ctx.saved_tensors  # type: ignore[attr-defined]
        return x.abs().mul_(-2).add_(2).clamp_(min=0).mul_(g)


def sign_bireal(x: Tensor) -> Tensor:
    """Value: +1 where x >= 0, else -1. Gradient: `(2 - 2|x|) * 1[|x| < 1]` (Bi-Real).

    Example:
        >>> x = torch.tensor([-2.0, -0.5, 0.0, 0.75], requires_grad=True)
        >>> y = sign_bireal(x); y.sum().backward(); y.detach(), x.grad
        (tensor([-1., -1.,  1.,  1.]), tensor([0.0000, 1.0000, 2.0000, 0.5000]))
    """
    return _SignBiReal.apply(x)  # type: ignore[no-any-return]
