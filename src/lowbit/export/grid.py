"""Constant activation grids of quantized layers in eval mode: codes in [lo, hi], value =
code * step, computed with the quantizer's own float ops (so that they are its codes). The
integer path (`lowbit.export.integer`) and the ONNX integer graph (`lowbit.export.onnx_quant`)
quantize their inputs on these grids."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from lowbit.errors import LowbitError
from lowbit.export.fold import FoldedConvBN, act_clip
from lowbit.quant import functional as QF
from lowbit.quant.base import Quantizer
from lowbit.quant.uniform import LSQ, ScaleClip, Uniform


@dataclass(frozen=True)
class ActGrid:
    """A constant activation grid: codes in [lo, hi], value = code * step.

    `pre_clip` (uniform, Scale-Clip) clamps x to [lo*step, T] before dividing by the step; LSQ
    divides first and clamps the codes (`pre_clip` None).
    """

    step: float
    lo: int
    hi: int
    pre_clip: tuple[float, float] | None

    def encode(self, x: Tensor) -> Tensor:
        """int64 codes of x, with the quantizer's own float ops (so they are its codes)."""
        return self.rounded(x).to(torch.int64)

    def rounded(self, x: Tensor) -> Tensor:
        """The codes of x as integer-valued floats of x's dtype."""
        step = torch.tensor(self.step, dtype=x.dtype)
        div = step if self.step > 0 else torch.ones_like(step)
        if self.pre_clip is not None:
            return torch.round(torch.clamp(x, *self.pre_clip) / div)
        return torch.round(torch.clamp(x / div, self.lo, self.hi))


def act_grid(q: Quantizer) -> ActGrid | None:
    """The constant grid of an activation quantizer in eval mode, or None (per-batch / other)."""
    if isinstance(q, LSQ):
        if not bool(q.initialized):
            return None
        qn, qp = QF.lsq_bounds(q.bits, q.signed)
        step = q.step.detach().abs().clamp_min(torch.finfo(torch.float32).tiny).float()
        return ActGrid(float(step), -qn, qp, None)
    if not isinstance(q, Uniform | ScaleClip):
        return None
    try:
        t = act_clip(q, torch.float32)
    except LowbitError:
        return None
    assert t is not None
    big_l = QF.uniform_num_steps(q.bits, q.signed)
    step = t.float() / big_l  # the same float32 division the quantizer runs
    lo = -big_l if q.signed else 0
    return ActGrid(float(step), lo, big_l, (-float(t) if q.signed else 0.0, float(t)))


def folded_grid(m: FoldedConvBN) -> ActGrid | None:
    """The input grid of a folded conv (None: float input)."""
    if m.act_bits is None:
        return None
    big_l = QF.uniform_num_steps(m.act_bits, m.act_signed)
    t = m.act_clip.detach().float()
    return ActGrid(float(t / big_l), -big_l if m.act_signed else 0, big_l,
                   (-float(t) if m.act_signed else 0.0, float(t)))
