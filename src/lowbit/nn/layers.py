"""Fake-quantized drop-in layers: `QuantConv2d`, `QuantLinear` and the standalone `QuantAct`.

`QuantConv2d` and `QuantLinear` subclass the float layers, so a converted model keeps every
state_dict key of the float one (`weight`, `bias`): a float checkpoint loads into the quantized
model and back. The quantizers are submodules named `weight_quant` and `act_quant`; whatever
state they hold (learned step sizes, masks, ...) appears under `weight_quant.*` / `act_quant.*`.

Forward: `y = op(act_quant(x), weight_quant(W), b)` where `op` is the float convolution or
matrix product and the bias stays float. Either quantizer may be None (that side stays float).
Gradients reach `W` and `x` through each quantizer's own straight-through rule.
In eval mode, with no gradient to the weight, `weight_quant(W)` is computed once and reused
until the weight or the quantizer changes (`lowbit.nn.cache`).
"""

from __future__ import annotations

import copy
from typing import Any, Literal, TypeVar

import torch
from torch import nn

from lowbit.nn.cache import cached_weight, drop_cache
from lowbit.quant.base import Quantizer

PaddingMode = Literal["zeros", "reflect", "replicate", "circular"]
_Layer = TypeVar("_Layer", bound="QuantLayer")


def _check_quantizer(q: object, what: str) -> None:
    if q is not None and not isinstance(q, Quantizer):
        raise TypeError(f"{what} must be a lowbit Quantizer or None, got {type(q).__name__}")


def _check_float_type(module: nn.Module, expected: type[nn.Module], cls_name: str) -> None:
    # Exact type only: a subclass may override forward, and converting it would silently drop
    # that behaviour.
    if type(module) is not expected:
        raise TypeError(f"{cls_name}.from_float expects an nn.{expected.__name__}, "
                        f"got {type(module).__name__}")


class QuantLayer(nn.Module):
    """What every quantized layer shares: quantizer slots and weight views.

    `isinstance(m, QuantLayer)` is how downstream code finds quantized layers (QuantConv2d,
    QuantLinear and the twins `quantized_class` makes for other conv/linear classes).
    """

    weight: torch.Tensor
    weight_quant: Quantizer | None
    act_quant: Quantizer | None

    @classmethod
    def from_float(cls, module: Any, weight_quant: Quantizer | None = None,
                   act_quant: Quantizer | None = None) -> QuantLayer:
        """The quantized layer for float `module` (sharing its Parameters)."""
        raise NotImplementedError

    def to_float(self, latent: bool = False) -> nn.Module:
        """The float layer with the quantized weight baked in (or, if `latent`, the float one)."""
        raise NotImplementedError

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
        return cached_weight(self, q, w)  # eval mode: quantized once (lowbit.nn.cache)

    def train(self: _Layer, mode: bool = True) -> _Layer:
        drop_cache(self)
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


class QuantConv2d(QuantLayer, nn.Conv2d):
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


class QuantLinear(QuantLayer, nn.Linear):
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


class _SwapForward(QuantLayer):
    """Runs the float class's own forward with `self.weight` replaced by its quantized value."""

    float_class: type[nn.Module]  # set on each twin class

    def forward(self, x: torch.Tensor, *args: object, **kwargs: object) -> torch.Tensor:
        params = self._parameters
        latent = params["weight"]
        params["weight"] = self._quant_weight()  # type: ignore[assignment]
        try:
            return super().forward(self._quant_input(x), *args, **kwargs)  # type: ignore[misc]
        finally:
            params["weight"] = latent

    @classmethod
    def from_float(cls, module: nn.Module, weight_quant: Quantizer | None = None,
                   act_quant: Quantizer | None = None) -> QuantLayer:
        """The twin of `module` (which becomes it, keeping its Parameters)."""
        return quantize_layer(module, weight_quant, act_quant)

    def to_float(self, latent: bool = False) -> nn.Module:
        """A copy of the float layer with the quantized weight baked in (or the latent one)."""
        weight, bias = self._float_params(latent)
        new = copy.deepcopy(self)
        new.__class__ = self.float_class  # type: ignore[assignment]
        del new._modules["weight_quant"], new._modules["act_quant"]
        new.register_parameter("weight", weight)
        new.register_parameter("bias", bias)
        return new


_TWINS: dict[type[nn.Module], type[QuantLayer]] = {}


def quantized_class(float_cls: type[nn.Module]) -> type[QuantLayer]:
    """The quantized twin of any conv/linear class (a user's subclass, Conv1d, ...).

    The twin runs the class's own forward with `self.weight` replaced by the quantized weight
    and the input quantized first; state-dict keys stay those of the float class. A subclass
    that transforms its weight in forward (weight standardisation) sees the quantized weight;
    to quantize after such a transform, register a converter of your own.
    """
    if float_cls not in _TWINS:
        _TWINS[float_cls] = type(f"Quant{float_cls.__name__}", (_SwapForward, float_cls),
                                 {"__module__": __name__, "float_class": float_cls})
    return _TWINS[float_cls]


def quantize_layer(module: nn.Module, weight_quant: Quantizer | None,
                   act_quant: Quantizer | None) -> QuantLayer:
    """Turn `module` (any conv/linear instance) into its quantized twin, in place."""
    module.__class__ = quantized_class(type(module))
    assert isinstance(module, QuantLayer)
    module._set_quantizers(weight_quant, act_quant)
    return module


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
