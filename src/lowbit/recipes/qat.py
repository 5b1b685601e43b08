"""Plain quantization-aware training (QAT): the baseline every paper method is compared with.

Every selected conv/linear layer fake-quantizes its weight (and optionally its input) on every
forward pass; gradients reach the float latent weights through the quantizers' straight-through
rules (BinaryConnect style). Any registered quantizer works for either side. Layers are chosen by
`quantize_model`'s rules: by default the first conv and the last linear layer stay float.

Config (`quant:` section):

    method: qat
    weight: {name: uniform, bits: 4}          # quantizer spec for weights, or null
    act: {name: uniform, bits: 4, signed: false, clip: learned, clip_value: 6.0}
    rules: null                               # or {regex: {weight: ..., act: ...} | null}
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import nn

from lowbit.quant.registry import get_quantizer
from lowbit.recipes import Recipe, register_recipe
from lowbit.schema import require
from lowbit.transform import quantize_model


def check_spec(spec: Any, what: str) -> None:
    """Build a quantizer from `spec` once, so a bad spec fails at config load time."""
    if spec is not None:
        get_quantizer(spec)


@dataclass
class QATConfig:
    weight: dict[str, Any] | None = None
    act: dict[str, Any] | None = None
    rules: dict[str, Any] | None = None

    def validate(self) -> None:
        require(
            self.weight is not None or self.act is not None or self.rules is not None,
            "give weight:, act: or rules:",
        )
        require(
            self.rules is None or (self.weight is None and self.act is None),
            "give either rules: or weight:/act:, not both",
        )
        check_spec(self.weight, "weight")
        check_spec(self.act, "act")
        for key, spec in (self.rules or {}).items():
            if isinstance(spec, dict):
                check_spec(spec.get("weight"), f"rules.{key}.weight")
                check_spec(spec.get("act"), f"rules.{key}.act")


class QATRecipe(Recipe):
    def __init__(self, cfg: QATConfig) -> None:
        self.cfg = cfg

    def prepare(self, model: nn.Module) -> nn.Module:
        if self.cfg.rules is not None:
            return quantize_model(model, dict(self.cfg.rules), inplace=True).model
        return quantize_model(model, weight=self.cfg.weight, act=self.cfg.act, inplace=True).model


@register_recipe("qat", QATConfig)
def build_qat(cfg: QATConfig) -> Recipe:
    return QATRecipe(cfg)
