"""Integer reference inference: quantized layers computed on integers, one rescale per channel.

`to_integer(model)` folds every conv + BN pair that can fold (`lowbit.export.fold`) and replaces
each quantized conv / linear layer by an `IntegerConv2d`, whose forward is
    codes_in, s_in = input codes of x (the layer's activation grid; sign codes for 1-bit inputs;
                     for float inputs a fixed-point code round(x * 2^f), |code| < 2^24)
    acc = integer accumulation of codes_in with the integer weight codes (int64; no float op)
    y   = acc * (scale_c * s_in) + offset_c (the one rescale per output channel, plus bias / BN)
The accumulation depends on the weight codes:
- "xnor": binary weights on 1-bit (sign) inputs: XNOR + popcount on packed bits
  (`lowbit.kernels.xnor`, with the exact +1-padding correction; a Group-Net `BinaryConv2d`
  that pads with +-1 gets binary inputs padded with that value and no correction, and its
  XNOR scale K: `lowbit.export.integer_binary`);
- "shift": power-of-two codes (INQ, LBW >= 3 bits): for each exponent e, the +-1 mask of the
  weights with |code| = 2^e is accumulated (adds and subtracts only) and shifted left by e;
- "int8": input codes on a grid of at most 256 values and weight codes that fit int8
  (ternary, binary on k-bit inputs, small pow2, <= 8-bit uniform): oneDNN's u8 x s8 -> s32
  convolution (`torch.ops.onednn.qconv_pointwise`, VNNI on x86; the input shifted by its
  grid's lowest code, which is the zero point, so padding stays a true zero), read out in
  float32 -- exact because the layer is only given this kernel when max|x| * sum|w| < 2^24;
- "mac": anything else integer (ternary, uniform on wide input codes): integer
  multiply-accumulate in int64 (the reference, slow).
"int8" needs a PyTorch built with oneDNN (every x86 / ARM wheel); without it "mac" runs.
`accumulate(codes_in)` exposes the accumulator, which equals `conv2d(codes_in, codes_w)` exactly;
the output equals the fake-quantized layer's within float rounding (1e-4 relative is checked).
A packed `.lowbit` file runs on this path as `to_integer(lowbit.artifacts.load_packed(path)[0])`.
"""

from __future__ import annotations

import copy
import logging
import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lowbit.errors import LowbitError
from lowbit.export.fold import (
    FoldedConvBN,
    act_clip,
    find_conv_bn_pairs,
    fold_pair,
    weight_codes,
)
from lowbit.export.integer_binary import core_padding, wrap_binary
from lowbit.kernels.xnor import xnor_conv2d
from lowbit.nn.layers import QuantConv2d, QuantLinear
from lowbit.quant import functional as QF
from lowbit.quant.base import Quantizer
from lowbit.quant.codebook import Sign
from lowbit.quant.uniform import LSQ, ScaleClip, Uniform

log = logging.getLogger(__name__)
FIXED_POINT_BITS = 24


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


def fold_foldable(model: nn.Module) -> tuple[nn.Module, list[str]]:
    """Fold each quantized conv + BN pair that can fold (in place); the others stay as they are.

    Returns the model and the names of the folded convs.
    """
    folded = []
    for conv_name, bn_name in find_conv_bn_pairs(model):
        conv = model.get_submodule(conv_name)
        assert isinstance(conv, QuantConv2d)
        if conv.weight_quant is None:
            continue
        try:
            layer = fold_pair(conv, model.get_submodule(bn_name), conv_name)
        except LowbitError as exc:
            log.info("%s stays unfolded (%s)", conv_name, exc)
            continue
        model.set_submodule(conv_name, layer)
        model.set_submodule(bn_name, nn.Identity())
        folded.append(conv_name)
    return model, folded


_EXACT_F32 = 2**24
HAVE_ONEDNN = hasattr(torch.ops.onednn, "qconv_pointwise")


def _input_range(act: ActGrid | str | None) -> tuple[int, int] | None:
    """(lowest, highest) input code, or None for float (fixed-point) inputs."""
    if act == "sign":
        return -1, 1
    return (act.lo, act.hi) if isinstance(act, ActGrid) else None


def _fits_int8(codes: Tensor, act: ActGrid | str | None) -> bool:
    """oneDNN's int8 kernel applies and its float32 readout of the accumulators is exact."""
    span = _input_range(act)
    if not HAVE_ONEDNN or span is None or span[1] - span[0] > 255:
        return False
    if int(codes.min()) < -128 or int(codes.max()) > 127:
        return False
    worst = max(abs(span[0]), abs(span[1])) * int(codes.abs().flatten(1).sum(1).max())
    return worst < _EXACT_F32


def _kernel(codes: Tensor, act: ActGrid | str | None) -> str:
    values = set(codes.unique().tolist())
    if act == "sign" and values <= {-1, 1}:
        return "xnor"
    if _fits_int8(codes, act):
        return "int8"
    mags = {abs(v) for v in values} - {0}
    if len(mags) > 1 and all(m & (m - 1) == 0 for m in mags):
        return "shift"
    return "mac"


class IntegerConv2d(nn.Module):
    """y = accumulate(input codes) * rescale_c + offset_c (see the module docstring).

    A linear layer is a 1 x 1 convolution on (N, C, 1, 1) (`linear=True` reshapes for it).
    """

    codes: Tensor
    scale: Tensor
    offset: Tensor

    def __init__(self, codes: Tensor, scale: Tensor, offset: Tensor | None,
                 act: ActGrid | str | None, stride: Any = 1, padding: Any = 0,
                 linear: bool = False) -> None:
        super().__init__()
        self.register_buffer("codes", codes.to(torch.int64))
        self.register_buffer("scale", scale.double().reshape(-1))
        self.register_buffer("offset", torch.zeros(codes.shape[0], dtype=torch.float64)
                             if offset is None else offset.double().reshape(-1))
        self.act, self.linear = act, linear
        self.stride, self.padding = _single(stride), _single(padding)
        self.kernel = _kernel(self.codes, act)

    def input_codes(self, x: Tensor) -> tuple[Tensor, float]:
        """(int64 input codes, their value unit): the layer's input quantization."""
        if isinstance(self.act, ActGrid):
            return self.act.encode(x), self.act.step
        if self.act == "sign":
            return torch.where(x >= 0, 1, -1), 1.0
        top = float(x.detach().abs().max())
        f = FIXED_POINT_BITS - 1 - (math.frexp(top)[1] if top > 0 else 0)
        return torch.round(torch.ldexp(x.double(), torch.tensor(f))).to(torch.int64), 2.0**-f

    def accumulate(self, codes: Tensor) -> Tensor:
        """int64 accumulators conv2d(codes, weight codes); integer operations only."""
        if self.kernel == "xnor":
            return xnor_conv2d(codes, self.codes, self.stride, self.padding).to(torch.int64)
        if self.kernel == "int8":
            lo = _input_range(self.act)[0]  # type: ignore[index]
            acc = int8_conv2d(codes, self.codes, self.stride, self.padding, lo,
                              self._int8_weights())
            return acc.to(torch.int64)
        if self.kernel == "mac":
            return int_conv2d(codes, self.codes, self.stride, self.padding)
        acc = torch.zeros((), dtype=torch.int64)
        for e in range(int(self.codes.abs().max()).bit_length()):
            mask = torch.where(self.codes.abs() == 1 << e, self.codes.sign(), 0)
            if bool(mask.any()):
                acc = acc + (int_conv2d(codes, mask, self.stride, self.padding) << e)
        return acc

    def forward(self, x: Tensor) -> Tensor:
        if self.linear:
            x = x.view(*x.shape, 1, 1)
        if self.kernel == "int8":
            y = self._int8_forward(x)
        else:
            codes, unit = self.input_codes(x)
            acc = self.accumulate(codes).double()
            y = acc * (self.scale * unit).view(1, -1, 1, 1) + self.offset.view(1, -1, 1, 1)
        y = y.to(x.dtype)
        return y.flatten(1) if self.linear else y

    def _int8_weights(self) -> Tensor:
        if "_packed" not in self.__dict__:  # prepacked once; not state
            lo = _input_range(self.act)[0]  # type: ignore[index]
            self._packed = int8_weights(self.codes, self.stride, self.padding, lo)
        return self._packed

    def _int8_forward(self, x: Tensor) -> Tensor:
        """The int8 kernel with the rescale and offset fused into its float32 output."""
        codes = self.act.rounded(x) if isinstance(self.act, ActGrid) else torch.where(
            x >= 0, 1.0, -1.0)
        unit = self.act.step if isinstance(self.act, ActGrid) else 1.0
        lo = _input_range(self.act)[0]  # type: ignore[index]
        scale, offset = (self.scale * unit).float(), self.offset.float()
        return int8_conv2d(codes, self.codes, self.stride, self.padding, lo,
                           self._int8_weights(), scale, offset)


def _single(v: Any) -> int:
    vals = set(v) if isinstance(v, tuple | list) else {v}
    if len(vals) != 1 or isinstance(next(iter(vals)), str):
        raise LowbitError(f"integer path: unsupported stride/padding {v!r}")
    return int(next(iter(vals)))


def int_conv2d(x: Tensor, w: Tensor, stride: int, padding: int) -> Tensor:
    """Exact int64 convolution (groups 1, dilation 1) by patch extraction and integer einsum."""
    kh, kw = w.shape[2:]
    if padding:
        x = F.pad(x, (padding,) * 4)
    patches = x.unfold(2, kh, stride).unfold(3, kw, stride)  # (N, C, OH, OW, kh, kw)
    return torch.einsum("nchwij,ocij->nohw", patches, w)


def int8_conv2d(x: Tensor, w: Tensor, stride: int, padding: int, lo: int,
                packed: Tensor | None = None, scale: Tensor | None = None,
                offset: Tensor | None = None) -> Tensor:
    """conv2d(x, w) * scale_c + offset_c, float32, with x the input codes in [lo, lo + 255]
    (an integer tensor or integer-valued floats) and w int8 weight codes (groups 1, dilation 1),
    on oneDNN's u8 x s8 -> s32 kernel (see the module docstring). Without scale and offset the
    output is the accumulators, exact below 2^24. `packed`: `int8_weights(w, ...)` (made here
    when None)."""
    if packed is None:
        packed = int8_weights(w, stride, padding, lo)
    xu = (x - lo if lo else x).to(dtype=torch.uint8, memory_format=torch.channels_last)
    o = w.shape[0]
    return torch.ops.onednn.qconv_pointwise(  # type: ignore[no-any-return]
        xu, 1.0, -lo, packed, torch.ones(o) if scale is None else scale,
        torch.zeros(o, dtype=torch.int64), offset, [stride] * 2, [padding] * 2, [1, 1], 1, 1.0,
        0, torch.float32, "none", [], "")


def int8_weights(w: Tensor, stride: int, padding: int, lo: int) -> Tensor:
    """int8 weight codes in oneDNN's prepacked layout for `int8_conv2d`."""
    return torch.ops.onednn.qconv_prepack(w.to(torch.int8), torch.ones(w.shape[0]), 1.0, -lo,
                                          [stride] * 2, [padding] * 2, [1, 1], 1, None)


def _input_kind(q: Quantizer | None) -> ActGrid | str | None:
    """ActGrid, "sign", None (float input); raises LowbitError when no integer form exists."""
    if q is None:
        return None
    if isinstance(q, Sign):
        return "sign"
    grid = act_grid(q)
    if grid is None or grid.step <= 0:
        raise LowbitError(f"{q.name} activations have no constant grid")
    return grid


def _from_layer(m: nn.Module, codes: Tensor, scale: Tensor, offset: Tensor | None,
                act: ActGrid | str | None, padding: Any = None) -> IntegerConv2d:
    """The IntegerConv2d of a conv-like or linear layer, given its codes and scales (and a
    padding other than the layer's own)."""
    if isinstance(m, nn.Linear):
        return IntegerConv2d(codes.view(*codes.shape, 1, 1), scale, offset, act, linear=True)
    if getattr(m, "groups", 1) != 1 or set(_pair_of(getattr(m, "dilation", 1))) != {1}:
        raise LowbitError("grouped or dilated convolutions have no integer path here")
    return IntegerConv2d(codes, scale, offset, act, m.stride,  # type: ignore[arg-type]
                         m.padding if padding is None else padding)


def _pair_of(v: Any) -> tuple[int, ...]:
    return tuple(v) if isinstance(v, tuple | list) else (int(v),)


def integer_layer(m: nn.Module, name: str = "layer") -> nn.Module | None:
    """The integer form of a quantized layer (None: nothing to convert, or it cannot convert)."""
    try:
        if isinstance(m, FoldedConvBN):
            grid = folded_grid(m)
            scale = m.multiplier.double() / (grid.step if grid else 1.0)
            return _from_layer(m, m.weight_codes, scale, m.offset, grid)
        if isinstance(m, QuantConv2d | QuantLinear) and m.weight_quant is not None:
            codes, scale = weight_codes(m.weight_quant, m.weight.detach(), name)
            core = _from_layer(m, codes, scale, m.bias, _input_kind(m.act_quant), core_padding(m))
            return wrap_binary(m, core, name)
    except LowbitError as exc:
        log.info("integer path: %s stays as it is (%s)", name, exc)
    return None


def _replace(model: nn.Module, convert: Any) -> list[str]:
    done = []
    for name, m in list(model.named_modules()):
        new = convert(name, m)
        if new is not None:
            model.set_submodule(name, new)
            done.append(name)
    return done


def to_integer(model: nn.Module) -> nn.Module:
    """A copy of `model` (eval mode) running its quantized layers on the integer path."""
    model, _ = fold_foldable(copy.deepcopy(model).eval())
    converted = _replace(model, lambda name, m: integer_layer(m, name))
    if not converted:
        raise LowbitError("to_integer found no quantized layer with integer codes")
    log.info("integer path: %d layers", len(converted))
    return model
