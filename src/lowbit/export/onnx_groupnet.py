"""ONNX lowerings of Group-Net's layers (`lowbit.nn.multibranch`), in both export flavours.

`BinaryConv2d`: the quantized-conv lowering (`lower_quant_inputs`: the activation quantizer,
sign as `Where(x >= 0, 1, -1)` or k-bit codes, then the binary weight as float values or, in
the "int" flavour, int8 codes +-1 with a `DequantizeLinear` per-channel scale), plus its options:
- `pad_value`: the quantized input is padded by `Pad(constant, pad_value)` and the Conv pads
  nothing, so a +-1 input stays +-1 at the border, as in PyTorch;
- `act_scale`: XNOR-Net's K = `AveragePool(ReduceMean(Abs(x), axis 1))` of the float input over
  the conv's window, stride and zero padding (`count_include_pad`, as `F.avg_pool2d`),
  multiplied into the conv's output.

`BranchSum`: each base is lowered on its input (`lower_module`: its own lowering, or its traced
graph with names under `<name>.branches.<i>`), then `y = o_0 * lambda_0 + o_1 * lambda_1 + ...`
in PyTorch's order of float32 operations. The gated variant (Group-Net**, `gates: true`) lowers
too: when this sum's input is the output of the `BranchSum` linked before it (`previous`), base i
reads `s * y_i + (1 - s) * x`, with s = sigmoid(theta) and 1 - s computed by torch in float32
and stored as constants, so the arithmetic is PyTorch's. Each sum records its output and its
bases' outputs in `builder.shared` for a gated successor.

In the "int" flavour `export_onnx` folds every foldable conv + BN pair first, including those
inside the bases, so k-bit bases become `FoldedConvBN` (QDQ, QLinearConv where it fuses); a
`BinaryConv2d` with `pad_value` or `act_scale` does not fold (`lowbit.export.fold`) and is
lowered here, its sign activations as float +-1.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from lowbit.export.onnx_graph import GraphBuilder, lower_module, register_module_lowering
from lowbit.export.onnx_ops import conv_attrs, emit_conv, emit_pad
from lowbit.export.onnx_quant import lower_quant_inputs
from lowbit.nn.multibranch import BinaryConv2d, BranchSum


@register_module_lowering(BinaryConv2d)
def _binary_conv(b: GraphBuilder, m: nn.Module, name: str, xs: list[str]) -> str:
    assert isinstance(m, BinaryConv2d)
    x, weight, info = lower_quant_inputs(b, m, xs[0], name)
    pad = m.explicit_pad()
    if pad is not None:
        x = emit_pad(b, x, list(pad), float(m.pad_value or 0.0), f"{name}.pad")
    b.layers[name] = {**info, "pad_value": m.pad_value, "act_scale": m.act_scale}
    y = emit_conv(b, x, weight, m.bias, m, name, padded=pad is not None)
    if not m.act_scale:
        return y
    return b.op("Mul", [y, _xnor_scale(b, m, xs[0], name)], f"{name}.scaled")


def _xnor_scale(b: GraphBuilder, m: BinaryConv2d, x: str, name: str) -> str:
    """K = avg_pool(mean_c |x|) over the conv's window (`lowbit.nn.multibranch.xnor_scale`)."""
    attrs = conv_attrs(m, name)  # the conv's window, stride and zero padding
    mean = b.op("ReduceMean", [b.op("Abs", [x])], f"{name}.abs_mean", axes=[1], keepdims=1)
    return b.op("AveragePool", [mean], f"{name}.act_scale", kernel_shape=attrs["kernel_shape"],
                strides=attrs["strides"], pads=attrs["pads"], count_include_pad=1)


def _scalar(b: GraphBuilder, value: torch.Tensor, hint: str) -> str:
    return b.const(value.detach().float().cpu().numpy().astype(np.float32), hint)


def _base_inputs(b: GraphBuilder, m: BranchSum, x: str, name: str) -> tuple[list[str], bool]:
    """Each base's input and whether the gates were used (see the module docstring)."""
    k = m.num_branches
    prev = m.previous
    record = b.shared.get((BranchSum, id(prev))) if prev is not None else None
    if m.gate is None or record is None or record[0] != x or len(record[1]) != k:
        return [x] * k, False
    s = torch.sigmoid(m.gate.detach().float())
    rest = b.op("Mul", [x, _scalar(b, 1 - s, f"{name}.one_minus_gate")], f"{name}.gate_x")
    gate = _scalar(b, s, f"{name}.gate")
    return [b.op("Add", [b.op("Mul", [y, gate], f"{name}.gate_y"), rest], f"{name}.gated")
            for y in record[1]], True


@register_module_lowering(BranchSum)
def _branch_sum(b: GraphBuilder, m: nn.Module, name: str, xs: list[str]) -> str:
    assert isinstance(m, BranchSum)
    inputs, gated = _base_inputs(b, m, xs[0], name)
    outs = [lower_module(b, branch, f"{name}.branches.{i}", [inp])
            for i, (branch, inp) in enumerate(zip(m.branches, inputs, strict=True))]
    scales = m.scales.detach().float()
    y = b.op("Mul", [outs[0], _scalar(b, scales[0], f"{name}.lambda")], f"{name}.term")
    for i in range(1, len(outs)):
        term = b.op("Mul", [outs[i], _scalar(b, scales[i], f"{name}.lambda")], f"{name}.term")
        y = b.op("Add", [y, term], f"{name}.sum")
    b.shared[BranchSum, id(m)] = (y, outs)
    info: dict[str, Any] = {"type": "BranchSum", "bases": len(outs), "gated": gated,
                            "lambda": [float(v) for v in scales]}
    if gated:
        info["gate"] = float(torch.sigmoid(m.gate.detach()))  # type: ignore[union-attr]
    b.layers[name] = info
    return y
