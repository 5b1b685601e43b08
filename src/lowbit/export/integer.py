"""Integer reference inference: quantized layers computed on integers, one rescale per channel.

`to_integer(model)` folds every conv + BN pair that can fold (`lowbit.export.fold`) and replaces
each quantized conv / linear layer by an `IntegerConv2d`, whose forward is
    codes_in, s_in = input codes of x (the layer's activation grid; sign codes for 1-bit inputs;
                     for float inputs a fixed-point code round(x * 2^f), |code| < 2^24)
    acc = integer accumulation of codes_in with the integer weight codes (no float op; int64,
          int32 from "xnor")
    y   = acc * (scale_c * s_in) + offset_c (the one rescale per output channel, plus bias / BN)
The accumulation depends on the weight codes:
- "xnor": binary weights on 1-bit (sign) inputs: XNOR + popcount on packed bits
  (`lowbit.kernels.xnor`, with the exact +1-padding correction; a Group-Net `BinaryConv2d`
  that pads with +-1 has the kernel pad with that value (`pad_value`), and its XNOR scale K:
  `lowbit.export.integer_binary`); its accumulators (|acc| <= C * k * k < 2^24) are exact in
  float32, so a float32 input is rescaled in float32 (scale and offset rounded to float32: a
  few ulp, as the int8 kernel's fused rescale) and a float64 input in float64;
- "shift": power-of-two codes (INQ, LBW >= 3 bits): for each exponent e, the +-1 mask of the
  weights with |code| = 2^e is accumulated (adds and subtracts only) and shifted left by e;
- "int8": input codes on a grid of at most 256 values (or signs) with int8 weight codes
  (ternary, binary on k-bit inputs, small pow2, narrow uniform): oneDNN's u8 x s8 -> s32
  convolution (`lowbit.kernels.int8`), given only where it is exact (every accumulator below
  2^24, no int16 pair saturation on pre-VNNI CPUs); on float32 inputs the per-channel rescale
  and offset are fused into the kernel's float32 output (one float32 rounding), on float64
  inputs they run in float64 as for the other kernels;
- "mac": anything else integer (ternary, uniform on wide input codes): integer
  multiply-accumulate in int64 (the reference, slow).
"int8" needs a PyTorch built with oneDNN (the x86 and ARM wheels); without it "mac" runs.
`accumulate(codes_in)` exposes the accumulator, which equals `conv2d(codes_in, codes_w)` exactly;
each layer's output equals the exact rescale of its accumulators within float rounding (float32:
1e-6 relative, checked), and the whole model the fake-quantized one within 1e-4 relative, except
where a rounding difference at a dense (8-bit) grid moves an activation code.
A packed `.lowbit` file runs on this path as `to_integer(lowbit.artifacts.load_packed(path)[0])`.
"""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lowbit.errors import LowbitError
from lowbit.export.fold import (
    FoldedConvBN,
    find_conv_bn_pairs,
    fold_pair,
    weight_codes,
)
from lowbit.export.grid import ActGrid, act_grid, folded_grid
from lowbit.export.integer_binary import core_padding, wrap_binary
from lowbit.kernels import int8
from lowbit.kernels.xnor import XnorConv
from lowbit.nn.layers import QuantConv2d, QuantLinear
from lowbit.quant.base import Quantizer
from lowbit.quant.codebook import Sign

log = logging.getLogger(__name__)
FIXED_POINT_BITS = 24


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


def _input_range(act: ActGrid | str | None) -> tuple[int, int] | None:
    """(lowest, highest) input code, or None for float (fixed-point) inputs."""
    if act == "sign":
        return -1, 1
    return (act.lo, act.hi) if isinstance(act, ActGrid) else None


def _kernel(codes: Tensor, act: ActGrid | str | None) -> str:
    values = set(codes.unique().tolist())
    if act == "sign" and values <= {-1, 1}:
        return "xnor"
    span = _input_range(act)
    if span is not None and int8.exact_bounds(*span, codes):
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
    pad_value: int = 0  # (layers pickled before padding values existed have none)

    def __init__(self, codes: Tensor, scale: Tensor, offset: Tensor | None,
                 act: ActGrid | str | None, stride: Any = 1, padding: Any = 0,
                 linear: bool = False, pad_value: int = 0) -> None:
        """`pad_value`: what the input is padded with, 0 or (the "xnor" kernel only) -1 / +1."""
        super().__init__()
        self.register_buffer("codes", codes.to(torch.int64))
        self.register_buffer("scale", scale.double().reshape(-1))
        self.register_buffer("offset", torch.zeros(codes.shape[0], dtype=torch.float64)
                             if offset is None else offset.double().reshape(-1))
        self.act, self.linear, self.pad_value = act, linear, int(pad_value)
        self.stride, self.padding = _single(stride), _single(padding)
        _ = self.kernel  # refuses a padding value its codes' kernel cannot take

    def input_codes(self, x: Tensor) -> tuple[Tensor, float]:
        """(int64 input codes, their value unit): the layer's input quantization."""
        found = self._grid_inputs(x)
        if found is not None:
            return found[0].to(torch.int64), found[1]
        top = float(x.detach().abs().max())
        f = FIXED_POINT_BITS - 1 - (math.frexp(top)[1] if top > 0 else 0)
        return torch.round(torch.ldexp(x.double(), torch.tensor(f))).to(torch.int64), 2.0**-f

    def _grid_inputs(self, x: Tensor) -> tuple[Tensor, float] | None:
        """(input codes as integer-valued floats, their unit) on a grid or sign; else None."""
        if isinstance(self.act, ActGrid):
            return self.act.rounded(x), self.act.step
        if self.act == "sign":
            return torch.where(x >= 0, 1.0, -1.0).to(x.dtype), 1.0
        return None

    def accumulate(self, codes: Tensor) -> Tensor:
        """Integer accumulators conv2d(codes, weight codes) (input padded with `pad_value`):
        int64, int32 from the "xnor" kernel, which also takes the float activations themselves
        (only their signs count); integer operations only."""
        if self.kernel == "xnor":
            return self._prepacked()(codes)  # int32
        if self.kernel == "int8":
            return int8.conv2d(codes, self.codes, self.stride, self.padding, self.lo,
                               self._prepacked()).to(torch.int64)
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
        found = self._grid_inputs(x) if self.kernel == "int8" and x.dtype == torch.float32 else None
        if found is not None:  # float32: the rescale fused into the kernel (one f32 rounding)
            codes, unit = found
            y = int8.conv2d(codes, self.codes, self.stride, self.padding, self.lo,
                            self._prepacked(), (self.scale * unit).float(), self.offset.float())
        else:  # "xnor" packs x >= 0 itself: the bits of the sign codes, without building them
            codes, unit = (x, 1.0) if self.kernel == "xnor" else self.input_codes(x)
            exact = self.kernel == "xnor" and x.dtype in (torch.float32, torch.float64)
            dtype = x.dtype if exact else torch.float64  # xnor: |acc| <= C * k * k < 2^24
            y = torch.addcmul(self.offset.to(dtype).view(1, -1, 1, 1),
                              self.accumulate(codes).to(dtype),
                              (self.scale * unit).to(dtype).view(1, -1, 1, 1))
        y = y.to(x.dtype)
        return y.flatten(1) if self.linear else y

    @property
    def lo(self) -> int:
        """The lowest input code (0 for float inputs)."""
        span = _input_range(self.act)
        return 0 if span is None else span[0]

    @property
    def kernel(self) -> str:
        """The accumulation the codes allow ("xnor", "int8", "shift" or "mac"; module
        docstring), found again whenever they change."""
        kernel = str(self._for_codes("_kernel", lambda: _kernel(self.codes, self.act)))
        if self.pad_value and kernel != "xnor":
            raise LowbitError(f"only the xnor kernel pads with {self.pad_value}, not {kernel}")
        return kernel

    def _prepacked(self) -> Any:
        """The weights packed for the kernel (oneDNN's layout for "int8", an `XnorConv` for
        "xnor")."""
        return self._for_codes("_packed", lambda: XnorConv(
            self.codes, self.stride, self.padding, pad_value=self.pad_value)
            if self.kernel == "xnor" else int8.prepack(self.codes, self.stride, self.padding,
                                                       self.lo))

    def _for_codes(self, name: str, make: Callable[[], Any]) -> Any:
        """`make()`, kept (not as state) until the codes change, in place or as a new tensor,
        or the stride or padding does."""
        key = (self.codes._version, self.stride, self.padding, self.pad_value)
        cached = self.__dict__.get(name)
        if cached is None or cached[0] is not self.codes or cached[1] != key:
            cached = (self.codes, key, make())  # holding the codes: no reuse of their address
            self.__dict__[name] = cached
        return cached[2]

    def __getstate__(self) -> dict[str, Any]:
        """Copies and pickles leave the kept kernel and (opaque, unpicklable) prepacked weights
        behind."""
        return {k: v for k, v in self.__dict__.items() if k not in ("_packed", "_kernel")}


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
                act: ActGrid | str | None, padding: Any = None, pad_value: int = 0
                ) -> IntegerConv2d:
    """The IntegerConv2d of a conv-like or linear layer, given its codes and scales (and a
    padding other than the layer's own, or a padding value other than 0)."""
    if isinstance(m, nn.Linear):
        return IntegerConv2d(codes.view(*codes.shape, 1, 1), scale, offset, act, linear=True)
    if getattr(m, "groups", 1) != 1 or set(_pair_of(getattr(m, "dilation", 1))) != {1}:
        raise LowbitError("grouped or dilated convolutions have no integer path here")
    return IntegerConv2d(codes, scale, offset, act, m.stride,  # type: ignore[arg-type]
                         m.padding if padding is None else padding, pad_value=pad_value)


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
            act = _input_kind(m.act_quant)
            padding = core_padding(m, _kernel(codes, act))
            core = _from_layer(m, codes, scale, m.bias, act, **padding)
            return wrap_binary(m, core, name, explicit_pad="padding" in padding)
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
