"""Eval-mode weight cache of quantized layers: frozen weights are quantized once.

In eval mode, when no gradient can reach `W` (grad disabled, or `W.requires_grad` False), a
quantized layer keeps `weight_quant(W)` and reuses it while nothing it depends on changed: the
key holds the identity of the weight and of every quantizer tensor (a replaced tensor, e.g.
after `.to()`, is a new one) with its `_version` (bumped by any in-place write: optimizer steps,
`load_state_dict`, `copy_`), plus the quantizer's plain attributes (bits, flags such as
Scale-Clip's `quantize`). The layer's `train()` drops the cache. Checking the key costs a few
microseconds per layer.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from lowbit.quant.base import Quantizer

_PLAIN = (int, float, str, bool, type(None))
_SLOT = "_weight_cache"


def cached_weight(layer: nn.Module, q: Quantizer, w: torch.Tensor) -> torch.Tensor:
    """`q(w)` for an eval-mode layer, from the layer's cache when still valid."""
    inputs = _inputs(w, q)
    key = _key(inputs, q)
    cached = layer.__dict__.get(_SLOT)
    if cached is not None and cached[0] == key:
        return cached[1]  # type: ignore[no-any-return]
    # A normal tensor even under inference_mode, so later autograd calls may save it.
    with torch.inference_mode(False), torch.no_grad():
        value = q(w).detach()
    layer.__dict__[_SLOT] = (key, value, inputs)  # `inputs` kept alive: their ids stay unique
    return value


def drop_cache(layer: nn.Module) -> None:
    """Forget a layer's cached quantized weight."""
    layer.__dict__.pop(_SLOT, None)


def _inputs(weight: torch.Tensor, q: Quantizer) -> list[torch.Tensor]:
    """The tensors a quantized weight depends on: the weight and the quantizer's own."""
    if q._modules:  # a quantizer with sub-quantizers: walk all of their tensors
        return [weight, *q.parameters(), *q.buffers()]
    inputs = [weight]
    for group in (q._parameters, q._buffers):
        if group:
            inputs += [t for t in group.values() if t is not None]
    return inputs


def _key(tensors: list[torch.Tensor], q: Quantizer) -> list[Any]:
    """Identity and in-place version of each tensor, plus the quantizer's plain attributes."""
    key: list[Any] = [(id(t), t._version) for t in tensors]
    key += [v for v in q.__dict__.values() if type(v) in _PLAIN]
    return key
