"""Inference merge (GDRQ, spec §1.4, §3.5): fold quantization scales into the following BatchNorm.

A fake-quantized conv followed by BN computes, per output channel c,
    BN(conv(Delta_a * A, Delta_w(c) * W) + b)_c = M_c * conv(A, W)_c + B_c
    M_c = gamma_c * Delta_w(c) * Delta_a / sqrt(var_c + eps)
    B_c = beta_c + gamma_c * (b_c - mu_c) / sqrt(var_c + eps)
where A and W are the integer codes (`act_quant.encode`, `weight_quant.encode`) and b the conv
bias (0 if none). `fold_bn` replaces every such QuantConv2d + BatchNorm2d pair by a
`FoldedConvBN` (integer weight codes, one multiply-add per output channel: the BN's own) and the
BN by `nn.Identity`, so per-group weight scales cost nothing at inference.

Pairs are found on the torch.fx graph (conv and BN leaf modules, each called once, the conv's
output feeding only the BN); a model fx cannot trace is refused with a clear error.
Which quantizers fold:
- weights: any quantizer whose values are codes * scale (scaleclip, uniform, ternary, twn,
  binary, dorefa, lsq); power-of-two layouts (pow2, inq, lbw >= 3 bits) fold too, as their
  values divided by the smallest non-zero magnitude of each output channel, which are integers;
  anything else (e.g. INQ before its last partition) is refused;
- activations: uniform codes with a clip frozen at evaluation (scaleclip after at least one
  training batch, uniform with clip fixed/learned/ema); per-batch clips (uniform "max") are
  refused, since a folded Delta_a must be a constant. A conv without act_quant sees x as is.
- layers: a Group-Net `BinaryConv2d` that pads with a constant (`pad_value`) or multiplies by
  XNOR scales (`act_scale`) does not fold (a FoldedConvBN does neither).
"""

from __future__ import annotations

import copy
import logging
import math
from collections import Counter
from typing import Any

import torch
from torch import Tensor, fx, nn

from lowbit.errors import LowbitError
from lowbit.nn.layers import QuantConv2d, QuantLinear
from lowbit.nn.multibranch import BinaryConv2d
from lowbit.quant import functional as F
from lowbit.quant.base import Quantizer

log = logging.getLogger(__name__)


class FoldedConvBN(nn.Module):
    """`y = conv(codes_a(x), weight_codes) * multiplier + offset`, per output channel.

    `weight_codes` is an integer buffer; `codes_a` is uniform encoding with the frozen clip
    `act_clip` (`act_bits` None: x passes as is). The integer convolution runs in the input's
    float dtype (exact for fp32 while partial sums stay below 2^24).
    """

    weight_codes: Tensor
    multiplier: Tensor
    offset: Tensor
    act_clip: Tensor

    def __init__(self, weight_shape: list[int], stride: list[int], padding: list[int] | str,
                 dilation: list[int], groups: int, codes_dtype: str = "int8",
                 act_bits: int | None = None, act_signed: bool = False) -> None:
        super().__init__()
        self.stride, self.dilation = tuple(stride), tuple(dilation)
        pad = padding if isinstance(padding, str) else tuple(padding)
        self.padding: tuple[int, ...] | str = pad
        self.groups, self.act_bits, self.act_signed = groups, act_bits, act_signed
        dtype = getattr(torch, codes_dtype)
        self.register_buffer("weight_codes", torch.zeros(weight_shape, dtype=dtype))
        self.register_buffer("multiplier", torch.ones(weight_shape[0]))
        self.register_buffer("offset", torch.zeros(weight_shape[0]))
        if act_bits is not None:
            self.register_buffer("act_clip", torch.zeros(()))

    def to_config(self) -> dict[str, Any]:
        """Constructor arguments (JSON-able): `FoldedConvBN(**cfg)` rebuilds an empty twin."""
        pad = self.padding if isinstance(self.padding, str) else list(self.padding)
        return {"weight_shape": list(self.weight_codes.shape), "stride": list(self.stride),
                "padding": pad, "dilation": list(self.dilation), "groups": self.groups,
                "codes_dtype": str(self.weight_codes.dtype).removeprefix("torch."),
                "act_bits": self.act_bits, "act_signed": self.act_signed}

    def forward(self, x: Tensor) -> Tensor:
        if self.act_bits is not None:
            x = F.uniform_encode(x, self.act_clip, self.act_bits, self.act_signed)[0].to(x.dtype)
        y = nn.functional.conv2d(x, self.weight_codes.to(x.dtype), None, self.stride,
                                 self.padding, self.dilation, self.groups)
        return y * self.multiplier.view(1, -1, 1, 1).to(y.dtype) + self.offset.view(
            1, -1, 1, 1).to(y.dtype)

    def extra_repr(self) -> str:
        act = "float" if self.act_bits is None else f"{self.act_bits}-bit"
        return f"codes={tuple(self.weight_codes.shape)}, stride={self.stride}, input={act}"


class _Tracer(fx.Tracer):
    """Keeps quantized layers and quantizers whole: folding works at layer granularity."""

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        if isinstance(m, QuantConv2d | QuantLinear | Quantizer | FoldedConvBN):
            return True
        return super().is_leaf_module(m, module_qualified_name)


def find_conv_bn_pairs(model: nn.Module) -> list[tuple[str, str]]:
    """(conv name, BN name) of each QuantConv2d whose only consumer is a BatchNorm2d.

    Both must be called exactly once in the traced forward (a shared or reused module cannot be
    rewritten per call site).

    Raises:
        LowbitError: torch.fx cannot trace the model.
    """
    try:
        graph = _Tracer().trace(model)
    except Exception as exc:  # fx raises many types (TraceError, TypeError on proxies, ...)
        raise LowbitError(f"fold_bn needs a model torch.fx can trace; tracing failed with "
                          f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
                          " (data-dependent control flow in forward?)") from exc
    calls = Counter(n.target for n in graph.nodes if n.op == "call_module")
    pairs = []
    for node in graph.nodes:
        if node.op != "call_module" or calls[node.target] != 1 or len(node.users) != 1:
            continue
        bn = next(iter(node.users))
        if (bn.op == "call_module" and calls[bn.target] == 1 and bn.args == (node,)
                and not bn.kwargs
                and isinstance(model.get_submodule(str(node.target)), QuantConv2d)
                and isinstance(model.get_submodule(str(bn.target)), nn.BatchNorm2d)):
            pairs.append((str(node.target), str(bn.target)))
    return pairs


def fold_bn(model: nn.Module, inplace: bool = False) -> nn.Module:
    """Fold every quantized conv + BN pair (see module docstring); returns the model in eval mode.

    Args:
        model: a fake-quantized model whose activation clips are frozen (trained, or after a
            few train-mode batches) and whose BN layers hold running statistics.
        inplace: modify `model` itself instead of a deep copy.

    Raises:
        LowbitError: nothing to fold, an untraceable model, or a quantizer that cannot fold.
    """
    return fold_with_layout(model, inplace)[0]


def fold_with_layout(model: nn.Module, inplace: bool = False
                     ) -> tuple[nn.Module, dict[str, dict[str, Any]]]:
    """`fold_bn`, plus {conv name: {"bn": BN name, "config": FoldedConvBN config}} to rebuild."""
    if not inplace:
        model = copy.deepcopy(model)
    model.eval()
    layout: dict[str, dict[str, Any]] = {}
    for conv_name, bn_name in find_conv_bn_pairs(model):
        conv = model.get_submodule(conv_name)
        assert isinstance(conv, QuantConv2d)
        if conv.weight_quant is None:
            log.info("fold_bn: %s has a float weight; left as is", conv_name)
            continue
        folded = fold_pair(conv, model.get_submodule(bn_name), conv_name)
        model.set_submodule(conv_name, folded)
        model.set_submodule(bn_name, nn.Identity())
        layout[conv_name] = {"bn": bn_name, "config": folded.to_config()}
    if not layout:
        raise LowbitError("fold_bn found no quantized conv followed by a BatchNorm2d to fold")
    log.info("fold_bn: folded %d conv+BN pairs", len(layout))
    return model, layout


@torch.no_grad()
def fold_pair(conv: QuantConv2d, bn: nn.Module, name: str = "conv") -> FoldedConvBN:
    """The FoldedConvBN equal to `bn(conv(x))` in eval mode (spec §1.4)."""
    if not isinstance(bn, nn.BatchNorm2d) or bn.running_mean is None or bn.running_var is None:
        raise LowbitError(f"fold_bn: the BN after {name} has no running statistics to fold")
    _check_conv_folds(conv, name)
    assert conv.weight_quant is not None
    codes, w_scale = weight_codes(conv.weight_quant, conv.weight.detach(), name)
    act = act_clip(conv.act_quant, conv.weight.dtype, name)
    out = FoldedConvBN(list(codes.shape), list(conv.stride), _padding(conv), list(conv.dilation),
                       conv.groups, str(codes.dtype).removeprefix("torch."),
                       None if act is None else conv.act_quant.bits,  # type: ignore[union-attr]
                       bool(getattr(conv.act_quant, "signed", False)))
    # float buffers in the layer's dtype before filling them: a float64 model folds in float64
    out = out.to(conv.weight.device, conv.weight.dtype)
    delta_a = torch.ones((), dtype=torch.float64)
    if act is not None:
        out.act_clip.copy_(act)
        delta_a = act.double() / F.uniform_num_steps(out.act_bits or 1, out.act_signed)
    inv_std = (bn.running_var.double() + bn.eps).rsqrt()
    gamma = bn.weight.double() if bn.weight is not None else torch.ones_like(inv_std)
    beta = bn.bias.double() if bn.bias is not None else torch.zeros_like(inv_std)
    bias = conv.bias.double() if conv.bias is not None else torch.zeros_like(inv_std)
    out.weight_codes.copy_(codes)
    out.multiplier.copy_(gamma * inv_std * w_scale.double() * delta_a)
    out.offset.copy_(beta + gamma * inv_std * (bias - bn.running_mean.double()))
    return out


def _check_conv_folds(conv: QuantConv2d, name: str) -> None:
    """LowbitError when the conv computes something a FoldedConvBN cannot."""
    if conv.padding_mode != "zeros":
        raise LowbitError(f"fold_bn: {name} uses padding_mode={conv.padding_mode!r}; only "
                          "'zeros' folds")
    if isinstance(conv, BinaryConv2d) and (conv.explicit_pad() is not None or conv.act_scale):
        raise LowbitError(f"fold_bn: {name} pads with {conv.pad_value} or scales its output "
                          "(XNOR act_scale); a folded conv does neither")


def _padding(conv: nn.Conv2d) -> list[int] | str:
    return conv.padding if isinstance(conv.padding, str) else list(conv.padding)


def weight_codes(q: Quantizer, w: Tensor, name: str = "conv") -> tuple[Tensor, Tensor]:
    """(integer codes shaped like `w`, scale per output channel (C,)) with codes * scale = q(w)."""
    if not q.enabled:
        raise LowbitError(f"fold_bn: {name} is in the clip-only (reshaping) stage; it has no codes")
    channels = w.shape[0]
    try:
        if q.linear_codes:
            codes, scale = q.encode(w)
            return codes, scale.reshape(-1).expand(channels).clone()
        return _dyadic_codes(q.decode(*q.encode(w)), name)
    except ValueError as exc:
        raise LowbitError(f"fold_bn: cannot encode the weights of {name}: {exc}") from exc


def _dyadic_codes(values: Tensor, name: str) -> tuple[Tensor, Tensor]:
    """Integer codes of power-of-two-like levels: values / smallest non-zero |value| per row."""
    rows = values.reshape(values.shape[0], -1).double()
    mags = torch.where(rows != 0, rows.abs(), math.inf)
    unit = mags.min(dim=1).values
    unit = torch.where(torch.isfinite(unit), unit, 1.0)
    codes = rows / unit[:, None]
    if not torch.equal(codes, codes.round()) or codes.abs().max() > 2**15 - 1:
        raise LowbitError(f"fold_bn: the weights of {name} are not integer multiples of one "
                          "step per channel; this quantizer cannot fold")
    dtype = F.code_dtype(int(codes.abs().max()))
    return codes.to(dtype).reshape(values.shape), unit.to(values.dtype)


def act_clip(q: Quantizer | None, dtype: torch.dtype, name: str = "conv") -> Tensor | None:
    """The frozen clip T of a uniform activation quantizer (0-d), or None without one."""
    if q is None:
        return None
    try:
        t = q.frozen_clip(dtype)
    except ValueError as exc:
        raise LowbitError(f"fold_bn: the input quantizer of {name} cannot fold: {exc}") from None
    if t.dim() != 0:
        raise LowbitError(f"fold_bn: the input quantizer of {name} has per-channel clips")
    return t
