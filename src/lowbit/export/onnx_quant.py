"""ONNX lowerings of lowbit's quantized layers, in both export flavours.

Activation quantizers (`lower_act`):
- "float": the fake-quant arithmetic itself, op for op as PyTorch runs it:
  `Clip(x, lo, T) -> Div(step) -> Round -> Mul(step)` (uniform / Scale-Clip; per-batch clips
  as ReduceMax), `Div -> Clip -> Round -> Mul` (LSQ), `Where(x >= 0, 1, -1)` (sign).
- "int": a constant grid (frozen clip T, step = T / L) becomes `QuantizeLinear(x, step, 0)`
  (uint8, or int8 when signed) followed, when the code range is narrower than the type's, by an
  integer `Clip(lo, hi)`, then `DequantizeLinear`. QuantizeLinear saturates at the type's range
  (so it also performs the ReLU / lower clip) and rounds half to even, as `torch.round` does;
  `round(x/step)` clamped to [lo, hi] equals `round(clamp(x, lo*step, T)/step)` for every x, so
  the codes are lowbit's codes exactly (tests check it value by value). The clip sits *after*
  QuantizeLinear so onnxruntime's QDQ fusion sees `Conv -> QuantizeLinear` and runs QLinearConv.
  Quantizers without a constant grid (per-batch clips, sign) fall back to the float form.

Weights (`weight_codes` from `lowbit.export.fold`: integer codes, a scale per output channel):
- "float": the fake-quantized weight `weight_quant(W)` as a float initializer;
- "int": int8 codes + `DequantizeLinear(axis=0)` with per-channel scales, where every code fits
  int8 (ternary, binary, pow2 <= 4 bits, uniform <= 8 bits); otherwise float, as above.
A folded conv + BN (`FoldedConvBN`, y = conv(codes_a, W) * M + B) keeps the BN inside the
per-channel weight scale (|M| / step_a, the sign moved into the codes) and B as the conv's float
bias, so the file's ONNX semantics are exact. When onnxruntime fuses `DQ -> Conv -> Q` into
QLinearConv it rounds that bias to a multiple of the accumulator unit step_a * scale_w; the codes
are therefore multiplied by a per-channel integer gain g (codes * g stays in int8 and the u8 x s8
pair sums of AVX2 kernels below 2^15) chosen so that B is (nearly) a multiple of the unit
|M| / g: with ternary or binary codes (g up to 127) the fused integer graph reproduces the
fake-quant codes exactly in practice. Wider codes leave too little room (4-bit: g <= 18 changed
2.6 % of test-set predictions), so below MIN_FUSED_GAIN (and always in the "int-exact" flavour,
`builder.fuse` False) the bias goes to a separate Add after
the conv, which keeps onnxruntime from fusing that conv: it runs as a float conv on the
dequantized int8 weights, exact, and its file still stores int8 codes. The requantization
itself (round half to even of (acc + bias) * multiplier, float32) differs from the float path by
float rounding only. Codebooks (codes and scales) and bits per
layer go to `builder.layers`, which `export_onnx` writes to the metadata.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import torch
from torch import nn

from lowbit.errors import LowbitError
from lowbit.export.fold import FoldedConvBN, weight_codes
from lowbit.export.grid import ActGrid, act_grid, folded_grid
from lowbit.export.onnx_graph import GraphBuilder, register_module_lowering
from lowbit.export.onnx_ops import clip, emit_conv, emit_linear
from lowbit.kernels.int8 import PAIR_LIMIT
from lowbit.nn.layers import QuantAct, QuantConv2d, QuantLinear
from lowbit.quant import functional as F
from lowbit.quant.base import Quantizer
from lowbit.quant.codebook import Sign
from lowbit.quant.uniform import Uniform

log = logging.getLogger(__name__)


def _act_info(q: Quantizer, grid: ActGrid | None, storage: str) -> dict[str, Any]:
    info = {"quantizer": q.to_config(), "bits": q.bits, "storage": storage}
    if grid is not None:
        info.update(step=grid.step, codes=[grid.lo, grid.hi])
    return info


def lower_act(b: GraphBuilder, q: Quantizer, x: str, name: str) -> tuple[str, dict[str, Any]]:
    """The quantized activation (dequantized value) and its metadata; see the module docstring."""
    grid = act_grid(q)
    if b.flavour == "int" and grid is not None and grid.step > 0:
        dtype = np.uint8 if grid.lo >= 0 else np.int8
        info = np.iinfo(dtype)
        if info.min <= grid.lo and grid.hi <= info.max:
            return emit_qdq(b, x, grid, dtype, name), _act_info(q, grid, dtype.__name__)
    return emit_fake_act(b, q, grid, x, name), _act_info(q, grid, "float")


def emit_codes(b: GraphBuilder, x: str, grid: ActGrid, dtype: Any, name: str) -> str:
    """`QuantizeLinear` (+ integer `Clip`) of x to the grid's codes, as `dtype` (uint8/int8)."""
    scale = b.const(np.float32(grid.step), f"{name}.act_step")
    zero = b.const(np.zeros((), dtype), f"{name}.act_zero")
    codes = b.op("QuantizeLinear", [x, scale, zero], f"{name}.act_q")
    info = np.iinfo(dtype)
    if (grid.lo, grid.hi) != (info.min, info.max):
        bounds = [b.const(np.array(v, dtype), f"{name}.act_bound") for v in (grid.lo, grid.hi)]
        codes = b.op("Clip", [codes, *bounds], f"{name}.act_clip")
    return codes


def emit_qdq(b: GraphBuilder, x: str, grid: ActGrid, dtype: Any, name: str) -> str:
    """QuantizeLinear (+ Clip) + DequantizeLinear: the activation's value on its grid."""
    codes = emit_codes(b, x, grid, dtype, name)
    scale = b.const(np.float32(grid.step), f"{name}.act_step")
    zero = b.const(np.zeros((), dtype), f"{name}.act_zero")
    return b.op("DequantizeLinear", [codes, scale, zero], f"{name}.act_dq")


def emit_fake_act(b: GraphBuilder, q: Quantizer, grid: ActGrid | None, x: str, name: str,
                  codes_only: bool = False) -> str:
    """The float fake-quant ops of `q` (codes_only: stop at the rounded codes)."""
    if isinstance(q, Sign):
        zero = b.const(np.float32(0), f"{name}.zero")
        pos, neg = b.const(np.float32(1), f"{name}.one"), b.const(np.float32(-1), f"{name}.m1")
        return b.op("Where", [b.op("GreaterOrEqual", [x, zero]), pos, neg], f"{name}.sign")
    if grid is None:
        return _dynamic_uniform(b, q, x, name, codes_only)
    return fake_grid(b, grid, x, name, codes_only)


def fake_grid(b: GraphBuilder, grid: ActGrid, x: str, name: str, codes_only: bool = False) -> str:
    """Float ops putting x on a constant grid, exactly as PyTorch computes it."""
    step = b.const(np.float32(grid.step), f"{name}.act_step")
    div = step if grid.step > 0 else b.const(np.float32(1), f"{name}.one")
    if grid.pre_clip is not None:
        codes = b.op("Round", [b.op("Div", [clip(b, x, *grid.pre_clip, name), div])])
    else:
        codes = b.op("Round", [clip(b, b.op("Div", [x, div]), grid.lo, grid.hi, name)])
    return codes if codes_only else b.op("Mul", [codes, step], f"{name}.act_fq")


def _dynamic_uniform(b: GraphBuilder, q: Quantizer, x: str, name: str, codes_only: bool) -> str:
    """Uniform with clip "max" (T = max|x| or max(x, 0) over the whole batch tensor)."""
    if not isinstance(q, Uniform) or q.clip not in ("max", "ema"):
        raise LowbitError(f"export_onnx: {name}: the activation quantizer {q.name} has no "
                          "constant grid and no ONNX form (train it, or calibrate its clip)")
    zero = b.const(np.float32(0), f"{name}.zero")
    if q.signed:
        t = b.op("ReduceMax", [b.op("Abs", [x])], keepdims=0)
        lo = b.op("Neg", [t])
    else:
        t, lo = b.op("Max", [b.op("ReduceMax", [x], keepdims=0), zero]), zero
    step = b.op("Div", [t, b.const(np.float32(F.uniform_num_steps(q.bits, q.signed)), "L")])
    div = b.op("Where", [b.op("Greater", [step, zero]), step, b.const(np.float32(1), "one")])
    codes = b.op("Round", [b.op("Div", [b.op("Clip", [x, lo, t]), div])])
    return codes if codes_only else b.op("Mul", [codes, step], f"{name}.act_fq")


def int8_codes(q: Quantizer, w: torch.Tensor, name: str
               ) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(codes, per-channel scale) of a weight when every code fits int8, else None."""
    try:
        codes, scale = weight_codes(q, w.detach(), name)
    except LowbitError:
        return None
    if codes.numel() and int(codes.abs().max()) > 127:
        return None
    return codes.to(torch.int64), scale.double()


def _weight_info(q: Quantizer, codes: torch.Tensor | None, scale: torch.Tensor | None,
                 storage: str) -> dict[str, Any]:
    info: dict[str, Any] = {"quantizer": q.to_config(), "bits": q.bits, "storage": storage}
    if codes is not None and scale is not None:
        info.update(codes=sorted(int(c) for c in codes.unique()),
                    scale=[float(s) for s in scale.reshape(-1)])
    return info


def emit_dq_weight(b: GraphBuilder, codes: torch.Tensor, scale: torch.Tensor, name: str) -> str:
    """int8 codes + DequantizeLinear with per-output-channel scales (axis 0)."""
    w = b.const(codes.to(torch.int8), f"{name}.weight_codes")
    s = b.const(scale.float().reshape(-1), f"{name}.weight_scale")
    z = b.const(np.zeros(codes.shape[0], np.int8), f"{name}.weight_zero")
    return b.op("DequantizeLinear", [w, s, z], f"{name}.weight_dq", axis=0)


def _quant_weight(b: GraphBuilder, m: QuantConv2d | QuantLinear, name: str
                  ) -> tuple[str, dict[str, Any] | None]:
    q = m.weight_quant
    if q is None:
        return b.const(m.weight.detach().float(), f"{name}.weight"), None
    found = int8_codes(q, m.weight, name) if b.flavour == "int" else None
    if found is not None:
        return emit_dq_weight(b, *found, name), _weight_info(q, *found, "int8")
    codes: torch.Tensor | None
    scale: torch.Tensor | None
    try:
        codes, scale = weight_codes(q, m.weight.detach(), name)
    except LowbitError:
        codes = scale = None
    return b.const(m.quantized_weight().float(), f"{name}.weight"), _weight_info(
        q, codes, scale, "float")


def lower_quant_inputs(b: GraphBuilder, m: QuantConv2d | QuantLinear, x: str, name: str
                       ) -> tuple[str, str, dict[str, Any]]:
    """(quantized input, weight value, the layer's metadata) of a quantized conv / linear."""
    info: dict[str, Any] = {"type": type(m).__name__}
    if m.act_quant is not None:
        x, info["act"] = lower_act(b, m.act_quant, x, name)
    weight, info["weight"] = _quant_weight(b, m, name)
    return x, weight, info


@register_module_lowering(QuantConv2d, QuantLinear)
def _quant_layer(b: GraphBuilder, m: nn.Module, name: str, xs: list[str]) -> str:
    assert isinstance(m, QuantConv2d | QuantLinear)
    x, weight, b.layers[name] = lower_quant_inputs(b, m, xs[0], name)
    if isinstance(m, QuantConv2d):
        return emit_conv(b, x, weight, m.bias, m, name)
    return emit_linear(b, x, weight, m.bias, name)


@register_module_lowering(QuantAct)
def _quant_act(b: GraphBuilder, m: nn.Module, name: str, xs: list[str]) -> str:
    assert isinstance(m, QuantAct)
    out, b.layers[name] = lower_act(b, m.act_quant, xs[0], name)
    return out


@register_module_lowering(FoldedConvBN)
def _folded(b: GraphBuilder, m: nn.Module, name: str, xs: list[str]) -> str:
    assert isinstance(m, FoldedConvBN)
    grid, codes = folded_grid(m), m.weight_codes.to(torch.int64)
    info: dict[str, Any] = {"type": "FoldedConvBN", "act_bits": m.act_bits,
                            "act_step": None if grid is None else grid.step}
    if b.flavour == "int" and (codes.numel() == 0 or int(codes.abs().max()) <= 127):
        out = _folded_int(b, m, grid, xs[0], name, info)
        b.layers[name] = info
        return out
    b.layers[name] = {**info, "storage": "float"}
    x = xs[0] if grid is None else fake_grid(b, grid, xs[0], name, codes_only=True)
    y = emit_conv(b, x, b.const(codes.float(), f"{name}.weight_codes"), None, m, name)
    y = b.op("Mul", [y, b.const(m.multiplier.float().view(1, -1, 1, 1), f"{name}.mul")])
    return b.op("Add", [y, b.const(m.offset.float().view(1, -1, 1, 1), f"{name}.offset")])


# Below this gain the rounding of the bias to one accumulator unit flips activations often
# enough to change test-set predictions (GDRQ W4A4, 4-bit codes, gain <= 18: 259 of 10,000
# top-1 classes; ternary codes, gain <= 127: 1, as float rounding alone does).
MIN_FUSED_GAIN = 64


def _max_gain(max_code: int, max_act: int) -> int:
    """Largest g with max_code * g <= 127 whose u8 x s8 pair sums fit int16 (AVX2 kernels
    saturate there: `lowbit.kernels.int8.PAIR_LIMIT`)."""
    if max_code == 0:
        return 1
    return max(1, min(127 // max_code, PAIR_LIMIT // (2 * max(max_act, 1) * max_code)))


def bias_gains(mult: torch.Tensor, offset: torch.Tensor, step: float, max_gain: int
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """Per channel, the integer code gain g <= max_gain whose accumulator unit
    step * |M| / (step * g) represents the bias B best (an integer runtime rounds B to a multiple
    of that unit), and the resulting weight scale (float32 values, as stored)."""
    g = torch.arange(1, max_gain + 1, dtype=torch.float64)
    scale = (mult.abs()[:, None] / step / g).float()
    unit = (torch.tensor(step, dtype=torch.float32) * scale).double()  # x_scale * w_scale
    ratio = offset[:, None] / unit
    best = ((ratio - ratio.round()).abs() * unit).argmin(dim=1)
    return (best + 1).to(torch.int64), scale.gather(1, best[:, None]).squeeze(1).double()


def _folded_int(b: GraphBuilder, m: FoldedConvBN, grid: ActGrid | None, x: str, name: str,
                info: dict[str, Any]) -> str:
    """The QDQ form of a folded conv: DQ(x codes), DQ(int8 weight codes), float bias (exact in
    ONNX semantics; an integer runtime rounds it to one accumulator unit when it fuses)."""
    mult, offset = m.multiplier.double(), m.offset.double()
    codes = m.weight_codes.to(torch.int64) * torch.where(mult < 0, -1, 1).view(-1, 1, 1, 1)
    live = (codes.flatten(1) != 0).any(1) & (mult != 0)
    codes = torch.where(live.view(-1, 1, 1, 1), codes, 0)
    step = 1.0 if grid is None else grid.step
    if grid is None:
        unit = torch.where(live, mult.abs(), 1.0)
        info.update(storage="int8", codes=sorted(int(c) for c in codes.unique()),
                    accumulator_unit=[float(u) for u in unit])
        return emit_conv(b, x, emit_dq_weight(b, codes, unit, name), offset.float(), m, name)
    top = _max_gain(int(codes.abs().max()), max(abs(grid.lo), abs(grid.hi)))
    xq = emit_qdq(b, x, grid, np.uint8 if grid.lo >= 0 else np.int8, name)
    info.update(storage="int8", codes=sorted(int(c) for c in codes.unique()))
    if top < MIN_FUSED_GAIN or not b.fuse:  # keep the conv out of fusion: its bias stays exact
        unit = torch.where(live, mult.abs() / step, 1.0)
        info.update(fused=False, accumulator_unit=[float(u) for u in unit * step])
        y = emit_conv(b, xq, emit_dq_weight(b, codes, unit, name), None, m, name)
        return b.op("Add", [y, b.const(offset.float().view(1, -1, 1, 1), f"{name}.offset")])
    gain, unit = bias_gains(mult, offset, step, top)
    # a dead channel (all codes 0) outputs its offset alone: a tiny unit keeps its bias exact
    dead = torch.where(offset != 0, offset.abs(), 1.0) / 2**20 / step
    unit = torch.where(live, unit, dead)
    weight = emit_dq_weight(b, codes * gain.view(-1, 1, 1, 1), unit, name)
    info.update(fused=True, code_gain=gain.tolist(),
                accumulator_unit=[float(u) for u in unit * step])
    return emit_conv(b, xq, weight, offset.float(), m, name)
