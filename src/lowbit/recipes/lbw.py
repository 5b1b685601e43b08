"""LBW-Net — low-bit weights as zero or powers of two times a scale (Yin, Zhang, Qi, Xin; 2016).

Per layer, the weights are quantized by least squares: min ||W - alpha*Q||^2 over alpha > 0 and
Q_i in {0, ±1, ±2, ..., ±2^(n-1)}. For 2 bits (ternary) the exact solution is a sort and a prefix
sum (O(N log N)); for >= 3 bits the reference solver alternates the two exact half-steps and the
"threshold" solver uses one free parameter r (see `lowbit.quant.weight.LBW`). Training is
BinaryConnect style: float auxiliary weights are quantized at every iteration, forward/backward
run with the quantized weights, and the gradient updates the float copy (identity STE).
Activations stay float, as in the paper.

Choices where the paper is silent (spec §4.5): per-layer alpha (per-channel as an option); the
first conv and the last linear layer stay float by default (`quantize_first_last` quantizes them);
the threshold solver's r defaults to 1.0 (top level = max|W|), the best of r in 0.25..2.0 by
held-out validation accuracy of a 4-bit ResNet-20 (`benchmarks/results/lbw_r_sweep.json`); the
quantizer's Gaussian-error default of 0.5 clips the heavy tails of trained weights.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from torch import nn

from lowbit.recipes import Recipe, register_recipe
from lowbit.schema import require
from lowbit.transform import every_layer_rules, quantize_model


@dataclass
class LBWConfig:
    bits: int = 4
    solver: Literal["alternating", "threshold"] = "alternating"
    r: float = 1.0  # chosen by the validation sweep in benchmarks/results/lbw_r_sweep.json
    iters: int = 20
    per_channel: bool = False
    quantize_first_last: bool = False

    def validate(self) -> None:
        require(2 <= self.bits <= 8, f"bits must be in 2..8, got {self.bits}")
        require(self.r > 0, f"r must be > 0, got {self.r}")
        require(self.iters >= 0, f"iters must be >= 0, got {self.iters}")

    def weight_spec(self) -> dict[str, Any]:
        if self.bits == 2:
            return {"name": "ternary", "per_channel": self.per_channel}
        return {
            "name": "lbw",
            "bits": self.bits,
            "method": self.solver,
            "r": self.r,
            "iters": self.iters,
            "per_channel": self.per_channel,
        }


class LBWRecipe(Recipe):
    def __init__(self, cfg: LBWConfig) -> None:
        self.cfg = cfg

    def prepare(self, model: nn.Module) -> nn.Module:
        spec = {"weight": self.cfg.weight_spec()}
        if self.cfg.quantize_first_last:
            return quantize_model(model, every_layer_rules(model, spec), inplace=True).model
        return quantize_model(model, inplace=True, **spec).model


@register_recipe("lbw", LBWConfig)
def build_lbw(cfg: LBWConfig) -> Recipe:
    return LBWRecipe(cfg)
