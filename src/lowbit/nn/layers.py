"""Fake-quantized drop-in layers: `QuantConv2d`, `QuantLinear` and the standalone `QuantAct`.

`QuantConv2d` and `QuantLinear` subclass the float layers, so a converted model keeps every
state_dict key of the float one (`weight`, `bias`): a float checkpoint loads into the quantized
model and back. The quantizers are submodules named `weight_quant` and `act_quant`; whatever
state they hold (learned step sizes, masks, ...) appears under `weight_quant.*` / `act_quant.*`.

Forward: `y = op(act_quant(x), weight_quant(W), b)` where `op` is the float convolution or
matrix product and the bias stays float. Either quantizer may be None (that side stays float).
Gradients reach `W` and `x` through each quantizer's own straight-through rule.

Eval-mode cache: frozen weights are quantized once, not on every forward. In eval mode, when
no gradient can reach `W` (grad disabled, or `W.requires_grad` False), the layer keeps
`weight_quant(W)` and reuses it while nothing it depends on changed: the key holds the identity of
the weight and of every quantizer tensor (a replaced tensor, e.g. after `.to()`, is a new one)
with its `_version` (bumped by any in-place write: optimizer steps, `load_state_dict`,
`copy_`), plus the quantizer's plain attributes (bits, flags such as Scale-Clip's `quantize`).
`train()` drops the cache.
"""

from __future__ import annotations

from typing import Any, Literal, TypeVar

import torch
from torch import nn

from lowbit.quant.base import Quantizer

PaddingMode = Literal["zeros", "reflect", "replicate", "circular"]
_Layer = TypeVar("_Layer", bound="_QuantMixin")


def _check_quantizer(q: object, what: str) -> None:
    if q is not None and not isinstance(q, Quantizer):
        raise TypeError(f"{what} must be a lowbit Quantizer or None, got {type(q).__name__}")


def _check_float_type(module: nn.Module, expected: type[nn.Module], cls_name: str) -> None:
    # Exact type only: a subclass may override forward, and converting it would silently drop
    # that behaviour.
    if type(module) is not expected:
        raise TypeError(f"{cls_name}.from_float expects an nn.{expected.__name__}, "
                        f"got {type(module).__name__}")


class _QuantMixin(nn.Module):
    """What QuantConv2d and QuantLinear share: quantizer slots and weight views."""

    weight: torch.Tensor
    weight_quant: Quantizer | None
    act_quant: Quantizer | None

    def _set_quantizers(self, weight_quant: Quantizer | None, act_quant: Quantizer | None) -> None:
        _check_quantizer(weight_quant, "weight_quant")
        _check_quantizer(act_quant, "act_quant")
        # register_module accepts None, so the slot exists (and prints) even when unused.
        self.register_module("weight_quant", weight_quant)
        self.register_module("act_quant", act_quant)

    def _quant_input(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.act_quant is None else self.act_quant(x)

    def _quant_weight(self) -> torch.Tensor:
        q, w = self.weight_quant, self.weight
        if q is None:
            return w
        if self.training or (w.requires_grad and torch.is_grad_enabled()):
            return q(w)
        inputs = _cache_inputs(w, q)
        key = _cache_key(inputs, q)
        cached = self.__dict__.get("_weight_cache")
        if cached is not None and cached[0] == key:
            return cached[1]  # type: ignore[no-any-return]
        # A normal tensor even under inference_mode, so later autograd calls may save it.
        with torch.inference_mode(False), torch.no_grad():
            value = q(w).detach()
        self.__dict__["_weight_cache"] = (key, value, inputs)
        return value

    def train(self: _Layer, mode: bool = True) -> _Layer:
        self.__dict__.pop("_weight_cache", None)
        return super().train(mode)

    @torch.no_grad()
    def quantized_weight(self) -> torch.Tensor:
        """The fake-quantized weight `weight_quant(W)` (or `W` itself if float), detached.

        Returned as a fresh tensor: writing into it never changes the layer.
        """
        return self._quant_weight().detach().clone()

    def _float_params(self, latent: bool) -> tuple[nn.Parameter, nn.Parameter | None]:
        """Fresh (weight, bias) parameters for a float twin; cloned so nothing is aliased."""
        w = self.weight.detach().clone() if latent else self.quantized_weight()
        weight = nn.Parameter(w, requires_grad=self.weight.requires_grad)
        b, bias = self.bias, None
        if isinstance(b, torch.Tensor):
            bias = nn.Parameter(b.detach().clone(), requires_grad=b.requires_grad)
        return weight, bias


_PLAIN = (int, float, str, bool, type(None))


def _cache_inputs(weight: torch.Tensor, q: Quantizer) -> list[torch.Tensor]:
    """The tensors a quantized weight depends on: the weight and the quantizer's own."""
    if q._modules:  # a quantizer with sub-quantizers: walk all of their tensors
        return [weight, *q.parameters(), *q.buffers()]
    inputs = [weight]
    for group in (q._parameters, q._buffers):
        if group:
            inputs += [t for t in group.values() if t is not None]
    return inputs


def _cache_key(tensors: list[torch.Tensor], q: Quantizer) -> list[Any]:
    """Identity and in-place version of each tensor, plus the quantizer's plain attributes.

    The cache keeps `tensors` alive, so an `id` cannot be reused by another tensor meanwhile.
    """
    key: list[Any] = [(id(t), t._version) for t in tensors]
    key += [v for v in q.__dict__.values() if type(v) in _PLAIN]
    return key


class QuantConv2d(_QuantMixin, nn.Conv2d):
    """`nn.Conv2d` whose input and weight pass through quantizers before the convolution.

    Supports every Conv2d option (stride, padding incl. 'same', dilation, groups, padding_mode,
    bias). State dict: the float Conv2d keys plus `weight_quant.*` / `act_quant.*`.

    Args:
        in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias,
        padding_mode, device, dtype: as for `nn.Conv2d`.
        weight_quant: quantizer applied to the weight on every forward, or None (float weight).
        act_quant: quantizer applied to the layer's input, or None (float input).
    """

    def __init__(self, in_channels: int, out_channels: int,
                 kernel_size: int | tuple[int, int], stride: int | tuple[int, int] = 1,
                 padding: int | tuple[int, int] | str = 0, dilation: int | tuple[int, int] = 1,
                 groups: int = 1, bias: bool = True, padding_mode: PaddingMode = "zeros",
                 device: torch.device | str | None = None, dtype: torch.dtype | None = None, *,
                 weight_quant: Quantizer | None = None, act_quant: Quantizer | None = None) -> None:
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation,
                         groups, bias, padding_mode, device, dtype)
        self._set_quantizers(weight_quant, act_quant)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # _conv_forward is what nn.Conv2d.forward calls; it handles non-zero padding modes.
        return self._conv_forward(self._quant_input(x), self._quant_weight(), self.bias)

    @classmethod
    def from_float(cls, module: nn.Conv2d, weight_quant: Quantizer | None = None,
                   act_quant: Quantizer | None = None) -> QuantConv2d:
        """A QuantConv2d holding `module`'s own weight and bias Parameters (shared, not copied).

        Sharing is deliberate: the quantized layer replaces the float one, and optimizers or
        tied weights that reference those Parameters keep working.
        """
        _check_float_type(module, nn.Conv2d, cls.__name__)
        new = cls(module.in_channels, module.out_channels, module.kernel_size,  # type: ignore[arg-type]
                  module.stride, module.padding, module.dilation,  # type: ignore[arg-type]
                  module.groups, module.bias is not None, module.padding_mode, device="meta",
                  dtype=module.weight.dtype, weight_quant=weight_quant, act_quant=act_quant)
        new.weight, new.bias = module.weight, module.bias
        return new.to(module.weight.device).train(module.training)

    def to_float(self, latent: bool = False) -> nn.Conv2d:
        """A plain `nn.Conv2d` with the quantized weight baked in (or, if `latent`, the float one).

        The new layer owns fresh copies of its tensors; the input quantizer is dropped.
        """
        conv = nn.Conv2d(self.in_channels, self.out_channels, self.kernel_size,  # type: ignore[arg-type]
                         self.stride, self.padding, self.dilation,  # type: ignore[arg-type]
                         self.groups, self.bias is not None, self.padding_mode, device="meta",
                         dtype=self.weight.dtype)
        weight, bias = self._float_params(latent)
        conv.register_parameter("weight", weight)
        conv.register_parameter("bias", bias)
        return conv.train(self.training)


class QuantLinear(_QuantMixin, nn.Linear):
    """`nn.Linear` whose input and weight pass through quantizers before the matrix product.

    State dict: the float Linear keys (`weight`, `bias`) plus `weight_quant.*` / `act_quant.*`.

    Args:
        in_features, out_features, bias, device, dtype: as for `nn.Linear`.
        weight_quant: quantizer applied to the weight on every forward, or None (float weight).
        act_quant: quantizer applied to the layer's input, or None (float input).
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True,
                 device: torch.device | str | None = None, dtype: torch.dtype | None = None, *,
                 weight_quant: Quantizer | None = None, act_quant: Quantizer | None = None) -> None:
        super().__init__(in_features, out_features, bias, device, dtype)
        self._set_quantizers(weight_quant, act_quant)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.linear(self._quant_input(x), self._quant_weight(), self.bias)

    @classmethod
    def from_float(cls, module: nn.Linear, weight_quant: Quantizer | None = None,
                   act_quant: Quantizer | None = None) -> QuantLinear:
        """A QuantLinear holding `module`'s own weight and bias Parameters (shared, not copied)."""
        _check_float_type(module, nn.Linear, cls.__name__)
        new = cls(module.in_features, module.out_features, module.bias is not None,
                  device="meta", dtype=module.weight.dtype, weight_quant=weight_quant,
                  act_quant=act_quant)
        new.weight, new.bias = module.weight, module.bias
        return new.to(module.weight.device).train(module.training)

    def to_float(self, latent: bool = False) -> nn.Linear:
        """A plain `nn.Linear` with the quantized weight baked in (or, if `latent`, the float one).

        The new layer owns fresh copies of its tensors; the input quantizer is dropped.
        """
        linear = nn.Linear(self.in_features, self.out_features, self.bias is not None,
                           device="meta", dtype=self.weight.dtype)
        weight, bias = self._float_params(latent)
        linear.register_parameter("weight", weight)
        linear.register_parameter("bias", bias)
        return linear.train(self.training)


class QuantAct(nn.Module):
    """An activation quantizer as a standalone layer: `forward(x) = act_quant(x)`.

    For places where a quantized tensor is wanted outside a conv/linear input, e.g. before a
    pooling layer or a residual addition. Its state lives under `act_quant.*`.
    """

    def __init__(self, act_quant: Quantizer) -> None:
        super().__init__()
        if not isinstance(act_quant, Quantizer):
            raise TypeError(f"act_quant must be a lowbit Quantizer, got {type(act_quant).__name__}")
        self.act_quant = act_quant

    @property
    def bits(self) -> int:
        """Bits of the wrapped quantizer."""
        return self.act_quant.bits

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act_quant(x)
