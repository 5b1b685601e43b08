"""Plain quantization-aware training (QAT): the baseline every paper method is compared with.

Every selected conv/linear layer fake-quantizes its weight (and optionally its input) on every
forward pass; gradients reach the float latent weights through the quantizers' straight-through
rules (BinaryConnect style). Any registered quantizer works for either side. Layers are chosen by
`quantize_model`'s rules: by default the first conv and the last linear layer stay float.

Config (`quant:` section):

    method: qat
    weight: {name: uniform, bits: 4}          # quantizer spec for weights (default), or null
    act: {name: uniform, bits: 4, signed: false, clip: learned, clip_value: 6.0}
    rules: null                               # or {regex: {weight: ..., act: ...} | null}
    keep_float: first_last                    # or none: quantize the first conv / last layer
"""

from __future__ import annotations

from dataclasses import dataclass

from lowbit.recipes.base import QuantConfig, Recipe, register_recipe


@dataclass
class QATConfig(QuantConfig):
    pass


@register_recipe
class QATRecipe(Recipe):
    """Fake-quant training with the given quantizers; nothing else."""

    name = "qat"
    config_class = QATConfig
    default_weight = {"name": "uniform", "bits": 4}
