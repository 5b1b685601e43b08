"""Exact stored size of a model at given weight bits, counted from its layer shapes alone.

The count follows `lowbit.accounting.cost_report` exactly (the tests check equality), so it can
be computed on a model built on the meta device, in milliseconds, at any width:

- quantized conv/linear weights: elements x bits / 8 bytes;
- float conv/linear weights (bits 32): elements x 4 bytes;
- one float32 scale per quantized layer (the per-tensor scale of `binary`, `ternary` and
  `uniform`); a per-channel quantizer stores one per output channel (the study's ternary on
  depthwise convs, see `weight_spec`);
- biases: 4 bytes each;
- everything else with stored float state (BatchNorm weight, bias, running mean and variance):
  4 bytes per element; integer counters (`num_batches_tracked`) are not counted.

Activations stay float in this study (the paper quantizes weights only), so no activation
quantizer state is counted. The packed `.lowbit` file holds exactly these numbers plus its
header, the BN counters and at most one byte of padding per packed tensor.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Collection, Mapping
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

FLOAT_BITS = 32

BitsTable = dict[str, int]
Bits = int | Mapping[str, int]
ModelFactory = Callable[[float], nn.Module]


@dataclass(frozen=True)
class ComputeLayer:
    """One conv/linear layer: its qualified name, weight and bias elements, output channels,
    and whether it is a depthwise conv (one input channel per group)."""

    name: str
    weight: int
    bias: int
    out_channels: int
    depthwise: bool = False


@dataclass(frozen=True)
class SizeBreakdown:
    """Stored bytes of a model, by kind; `total` is their sum."""

    quantized_weights: float
    float_weights: float
    scales: float
    biases: float
    norms_and_other: float
    params: int

    @property
    def total(self) -> float:
        return (self.quantized_weights + self.float_weights + self.scales + self.biases
                + self.norms_and_other)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "total": self.total}


def weight_spec(bits: int, depthwise: bool = False) -> dict[str, Any] | None:
    """The weight quantizer for `bits`: 1 binary, 2 ternary, 3..8 signed uniform, 32 float.

    Every scale is per tensor except ternary on a depthwise conv, which gets one scale per
    channel: a per-tensor ternary scale zeroes whole depthwise channels (9 weights each), BN
    then divides their constant output by sqrt(eps), and the ~300x gradient that reaches their
    latent weights through the STE diverges within a few steps (MobileNetV2 trained at 10 %).
    Binary cannot zero a channel; 4- and 8-bit uniform keep every channel whose largest weight
    exceeds half a step (1/14 and 1/254 of the layer's largest).
    """
    if bits == FLOAT_BITS:
        return None
    if bits == 1:
        return {"name": "binary"}
    if bits == 2:
        return {"name": "ternary", "per_channel": True} if depthwise else {"name": "ternary"}
    if 3 <= bits <= 8:
        return {"name": "uniform", "bits": bits, "signed": True, "clip": "max"}
    raise ValueError(f"weight bits must be 1..8 or 32 (float), got {bits}")


def compute_layers(model: nn.Module) -> list[ComputeLayer]:
    """Every Conv2d/Linear of `model` once, in registration order (works on the meta device)."""
    out, seen = [], set()
    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d | nn.Linear) and id(module) not in seen:
            seen.add(id(module))
            bias = module.bias.numel() if module.bias is not None else 0
            out.append(ComputeLayer(name, module.weight.numel(), bias, module.weight.shape[0],
                                    is_depthwise(module)))
    return out


def is_depthwise(module: nn.Module) -> bool:
    """A conv whose every group sees one input channel (and there is more than one group)."""
    return isinstance(module, nn.Conv2d) and module.groups > 1 \
        and module.groups == module.in_channels


def depthwise_names(model: nn.Module) -> frozenset[str]:
    """The qualified names of `model`'s depthwise convs (works on the meta device)."""
    return frozenset(layer.name for layer in compute_layers(model) if layer.depthwise)


def full_table(model: nn.Module, bits: Bits, first_last_bits: int = 8) -> BitsTable:
    """Bits of every conv/linear layer: `first_last_bits` on the first and last one, `bits`
    (one number, or a per-layer table that may also override the first/last) elsewhere."""
    layers = [layer.name for layer in compute_layers(model)]
    if isinstance(bits, Mapping):
        unknown = set(bits) - set(layers)
        if unknown:
            raise ValueError(f"bits table names unknown layers {sorted(unknown)[:3]}; layers "
                             f"look like {layers[:3]}")
        missing = set(layers[1:-1]) - set(bits)
        if missing:
            raise ValueError(f"bits table lacks layers {sorted(missing)[:3]}")
        table = {name: int(bits.get(name, first_last_bits)) for name in layers}
    else:
        table = {name: int(bits) for name in layers}
        table[layers[0]] = table[layers[-1]] = first_last_bits
    for value in table.values():
        weight_spec(value)  # validates
    return table


def stored_scales(layer: ComputeLayer, bits: int) -> int:
    """float32 scales `layer` stores at `bits`: none in float, one per output channel for a
    per-channel quantizer (`weight_spec`), else one."""
    spec = weight_spec(bits, layer.depthwise)
    if spec is None:
        return 0
    return layer.out_channels if spec.get("per_channel") else 1


def layer_bits(layer: ComputeLayer, bits: int) -> int:
    """Stored bits of `layer`'s weight at `bits`: its codes (float: 32 per element) and scales."""
    return layer.weight * bits + 32 * stored_scales(layer, bits)


def table_size(model: nn.Module, table: Mapping[str, int]) -> SizeBreakdown:
    """Stored bytes of `model` (float, any device) once its layers take the bits of `table`."""
    quant = flt = scales = biases = 0.0
    params = 0
    compute_ids = set()
    for layer in compute_layers(model):
        bits = table[layer.name]
        module = model.get_submodule(layer.name)
        compute_ids.add(id(module))
        params += layer.weight + layer.bias
        biases += layer.bias * 4
        if bits == FLOAT_BITS:
            flt += layer.weight * 4
        else:
            quant += layer.weight * bits / 8
            scales += 4 * stored_scales(layer, bits)
    other = 0
    for module in model.modules():
        if id(module) in compute_ids:
            continue
        params += sum(p.numel() for p in module.parameters(recurse=False))
        other += _stored_floats(module)
    return SizeBreakdown(quant, flt, scales, biases, other * 4.0, params)


def model_size(factory: ModelFactory, width: float, bits: Bits,
               first_last_bits: int = 8) -> SizeBreakdown:
    """Stored bytes of the model `factory(width)` (built on the meta device) at `bits`."""
    model = build_meta(factory, width)
    return table_size(model, full_table(model, bits, first_last_bits))


def build_meta(factory: ModelFactory, width: float) -> nn.Module:
    """`factory(width)` with every tensor on the meta device (no memory, no init cost)."""
    with torch.device("meta"):
        return factory(width)


def layer_macs(model: nn.Module, input_shape: tuple[int, ...]) -> dict[str, int]:
    """Multiply-accumulates per sample of each conv/linear layer, counted as `cost_report`
    counts them, from one forward pass of zeros on the model's device (meta: no compute)."""
    device = next(model.parameters()).device
    names = {id(model.get_submodule(c.name)): c.name for c in compute_layers(model)}
    counts = dict.fromkeys(names.values(), 0)

    def hook(module: nn.Module, _inp: Any, out: torch.Tensor) -> None:
        if isinstance(module, nn.Conv2d):
            kh, kw = module.kernel_size
            per_out = (module.in_channels // module.groups) * kh * kw
        else:
            per_out = int(module.in_features)  # type: ignore[arg-type]
        counts[names[id(module)]] += out.numel() * per_out // input_shape[0]

    modules = [m for m in model.modules() if id(m) in names]
    handles = [m.register_forward_hook(hook) for m in modules]
    try:
        with torch.no_grad():
            model.eval()(torch.zeros(input_shape, device=device))
    finally:
        for h in handles:
            h.remove()
    return counts


def quant_rules(table: Mapping[str, int], depthwise: Collection[str] = ()) -> dict[str, Any]:
    """`quantize_model` rules (exact-name regexes) that give every layer its bits in `table`
    (`depthwise`: the names of the depthwise convs, see `weight_spec`)."""
    return {_exact(name): (None if (spec := weight_spec(bits, name in depthwise)) is None
                           else {"weight": spec})
            for name, bits in table.items()}


def _exact(name: str) -> str:
    return re.escape(name)


def _stored_floats(module: nn.Module) -> int:
    own = {k: v for k, v in module.state_dict(keep_vars=True).items() if "." not in k}
    return sum(v.numel() for v in own.values() if v.is_floating_point())
