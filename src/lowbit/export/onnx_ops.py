"""ONNX lowerings of the standard torch layers and functions the lowbit models use.

Each lowering reproduces the eval-mode PyTorch computation (BatchNorm with running statistics,
Dropout as identity). Anything outside this set is refused by name, with a pointer to
`register_module_lowering` / `register_function_lowering`.
"""

from __future__ import annotations

import operator
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from lowbit.errors import LowbitError
from lowbit.export.onnx_graph import (
    GraphBuilder,
    Value,
    register_function_lowering,
    register_module_lowering,
)


def _pair(v: Any) -> list[int]:
    return list(v) if isinstance(v, tuple | list) else [int(v), int(v)]


def conv_attrs(conv: nn.Module, name: str) -> dict[str, Any]:
    """ONNX Conv attributes of a zero-padded `nn.Conv2d` or conv-like layer (`FoldedConvBN`)."""
    mode = getattr(conv, "padding_mode", "zeros")
    if mode != "zeros":
        raise LowbitError(f"export_onnx: {name} uses padding_mode={mode!r}; only "
                          "'zeros' is supported")
    if isinstance(conv.padding, str):
        if conv.padding != "valid":
            raise LowbitError(f"export_onnx: {name} uses padding='same'; give explicit pads")
        pads = [0, 0]
    else:
        pads = _pair(conv.padding)
    weight: Any = getattr(conv, "weight_codes", None)
    kernel = getattr(conv, "kernel_size", None) or tuple(weight.shape[2:])
    return {"kernel_shape": _pair(kernel), "strides": _pair(conv.stride),
            "pads": pads + pads, "dilations": _pair(conv.dilation), "group": conv.groups}


def emit_conv(b: GraphBuilder, x: str, weight: str, bias: torch.Tensor | str | None,
              conv: nn.Module, name: str, padded: bool = False) -> str:
    """Conv(x, weight[, bias]) with `conv`'s geometry; `bias` a tensor or a value name;
    `padded`: x is already padded (the Conv itself pads nothing)."""
    inputs = [x, weight]
    if isinstance(bias, torch.Tensor):
        inputs.append(b.const(bias.detach().float(), f"{name}.bias"))
    elif isinstance(bias, str):
        inputs.append(bias)
    attrs = conv_attrs(conv, name)
    if padded:
        attrs["pads"] = [0, 0, 0, 0]
    return b.op("Conv", inputs, name, **attrs)


def emit_linear(b: GraphBuilder, x: str, weight: str, bias: torch.Tensor | None,
                name: str) -> str:
    """Gemm(x, weight^T[, bias]): the ONNX form of `F.linear`."""
    inputs = [x, weight]
    if bias is not None:
        inputs.append(b.const(bias.detach().float(), f"{name}.bias"))
    return b.op("Gemm", inputs, name, transB=1)


@register_module_lowering(nn.Conv2d)
def _conv(b: GraphBuilder, m: nn.Module, name: str, xs: list[str]) -> str:
    assert isinstance(m, nn.Conv2d)
    return emit_conv(b, xs[0], b.const(m.weight.detach().float(), f"{name}.weight"), m.bias,
                     m, name)


@register_module_lowering(nn.Linear)
def _linear(b: GraphBuilder, m: nn.Module, name: str, xs: list[str]) -> str:
    assert isinstance(m, nn.Linear)
    return emit_linear(b, xs[0], b.const(m.weight.detach().float(), f"{name}.weight"), m.bias,
                       name)


@register_module_lowering(nn.BatchNorm2d, nn.BatchNorm1d)
def _batchnorm(b: GraphBuilder, m: nn.Module, name: str, xs: list[str]) -> str:
    assert isinstance(m, nn.modules.batchnorm._BatchNorm)
    if m.running_mean is None or m.running_var is None:
        raise LowbitError(f"export_onnx: {name} has no running statistics")
    c = m.running_mean.numel()
    gamma = m.weight if m.weight is not None else torch.ones(c)
    beta = m.bias if m.bias is not None else torch.zeros(c)
    args = [b.const(t.detach().float(), f"{name}.{k}") for k, t in
            (("weight", gamma), ("bias", beta), ("mean", m.running_mean), ("var", m.running_var))]
    return b.op("BatchNormalization", [xs[0], *args], name, epsilon=float(m.eps))


@register_module_lowering(nn.ReLU)
def _relu(b: GraphBuilder, m: nn.Module, name: str, xs: list[str]) -> str:
    return b.op("Relu", xs, name)


@register_module_lowering(nn.ReLU6, nn.Hardtanh)
def _hardtanh(b: GraphBuilder, m: nn.Module, name: str, xs: list[str]) -> str:
    assert isinstance(m, nn.Hardtanh)  # ReLU6 is a Hardtanh(0, 6)
    return clip(b, xs[0], float(m.min_val), float(m.max_val), name)


def clip(b: GraphBuilder, x: str, lo: float | None, hi: float | None, hint: str) -> str:
    """Clip(x, lo, hi) in float32 (None: that side open)."""
    bounds = ["" if v is None else b.const(np.float32(v), f"{hint}.clip") for v in (lo, hi)]
    return b.op("Clip", [x, *bounds], hint)


@register_module_lowering(nn.Identity, nn.Dropout)
def _identity(b: GraphBuilder, m: nn.Module, name: str, xs: list[str]) -> str:
    return xs[0]


@register_module_lowering(nn.AdaptiveAvgPool2d)
def _adaptive_avg(b: GraphBuilder, m: nn.Module, name: str, xs: list[str]) -> str:
    """GlobalAveragePool for a 1x1 output; else (the input size must be known) nothing when
    the grid is the input size (AlexNet and VGG at 32 x 32), AveragePool when the grid divides
    it, and otherwise PyTorch's uneven windows as two pooling matrices, rows @ x @ cols."""
    assert isinstance(m, nn.AdaptiveAvgPool2d)
    sizes = m.output_size if isinstance(m.output_size, tuple | list) else (m.output_size,) * 2
    if list(sizes) == [1, 1]:
        return b.op("GlobalAveragePool", xs, name)
    h, w = b.input_size(name)
    oh, ow = (h if sizes[0] is None else sizes[0]), (w if sizes[1] is None else sizes[1])
    if (h, w) == (oh, ow):
        return xs[0]
    if h % oh == 0 and w % ow == 0:
        kernel = [h // oh, w // ow]
        return b.op("AveragePool", xs, name, kernel_shape=kernel, strides=kernel)
    rows = b.op("MatMul", [b.const(_pool_matrix(h, oh), f"{name}.rows"), xs[0]], name)
    return b.op("MatMul", [rows, b.const(_pool_matrix(w, ow).T.copy(), f"{name}.cols")], name)


def _pool_matrix(size: int, out: int) -> np.ndarray:
    """(out, size) float32 averaging matrix of adaptive pooling: row i averages
    [floor(i * size / out), ceil((i + 1) * size / out)), PyTorch's windows."""
    matrix = np.zeros((out, size), np.float32)
    for i in range(out):
        start, end = (i * size) // out, -(-(i + 1) * size // out)
        matrix[i, start:end] = 1.0 / (end - start)
    return matrix


@register_module_lowering(nn.MaxPool2d, nn.AvgPool2d)
def _pool(b: GraphBuilder, m: nn.Module, name: str, xs: list[str]) -> str:
    assert isinstance(m, nn.MaxPool2d | nn.AvgPool2d)
    if m.ceil_mode or (isinstance(m, nn.MaxPool2d) and _pair(m.dilation) != [1, 1]):
        raise LowbitError(f"export_onnx: {name}: ceil_mode / dilation are not supported")
    pads = _pair(m.padding)
    attrs: dict[str, Any] = {"kernel_shape": _pair(m.kernel_size),
                             "strides": _pair(m.stride or m.kernel_size), "pads": pads + pads}
    if isinstance(m, nn.AvgPool2d):
        if m.divisor_override is not None:
            raise LowbitError(f"export_onnx: {name}: divisor_override is not supported")
        attrs["count_include_pad"] = int(m.count_include_pad)
        return b.op("AveragePool", xs, name, **attrs)
    return b.op("MaxPool", xs, name, **attrs)


@register_module_lowering(nn.Flatten)
def _flatten_module(b: GraphBuilder, m: nn.Module, name: str, xs: list[str]) -> str:
    assert isinstance(m, nn.Flatten)
    return _flatten(b, (Value(xs[0]), m.start_dim, m.end_dim), {})


@register_function_lowering(torch.flatten, "flatten")
def _flatten(b: GraphBuilder, args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
    x = args[0]
    start = args[1] if len(args) > 1 else kwargs.get("start_dim", 0)
    end = args[2] if len(args) > 2 else kwargs.get("end_dim", -1)
    if end != -1 or start < 1:
        raise LowbitError("export_onnx: flatten is supported from a dim >= 1 to the last")
    return b.op("Flatten", [x.name], "flatten", axis=int(start))


@register_function_lowering(operator.add, operator.iadd, torch.add, "add")
def _add(b: GraphBuilder, args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
    if len(args) != 2 or kwargs or not all(isinstance(a, Value) for a in args):
        raise LowbitError("export_onnx: only tensor + tensor additions are supported")
    return b.op("Add", [args[0].name, args[1].name], "add")


@register_function_lowering(F.relu, torch.relu, "relu")
def _relu_fn(b: GraphBuilder, args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
    return b.op("Relu", [args[0].name], "relu")


@register_function_lowering(F.pad)
def _pad(b: GraphBuilder, args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
    mode, value = kwargs.get("mode", "constant"), kwargs.get("value", 0.0) or 0.0
    if mode != "constant":
        raise LowbitError("export_onnx: only constant F.pad of a 4-d tensor is supported")
    return emit_pad(b, args[0].name, list(args[1]), float(value))


def emit_pad(b: GraphBuilder, x: str, pad: list[int], value: float, hint: str = "pad") -> str:
    """Constant `Pad` of a 4-d tensor, `pad` in `F.pad`'s order (last dim first)."""
    if len(pad) % 2 or len(pad) > 8:
        raise LowbitError("export_onnx: only constant F.pad of a 4-d tensor is supported")
    pad = pad + [0] * (8 - len(pad))  # torch: (last_lo, last_hi, prev_lo, ...); ONNX: starts, ends
    starts, ends = pad[0::2][::-1], pad[1::2][::-1]
    pads = b.const(np.array(starts + ends, dtype=np.int64), f"{hint}.pads")
    fill = b.const(np.float32(value), f"{hint}.pad_value")
    return b.op("Pad", [x, pads, fill], hint, mode="constant")
