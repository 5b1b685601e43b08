"""LBW-Net — low-bit weights as zero or powers of two times a scale (Yin, Zhang, Qi, Xin; 2016).

Per layer, the weights are quantized by least squares: min ||W - alpha*Q||^2 over alpha > 0 and
Q_i in {0, ±1, ±2, ..., ±2^(n-1)}. For 2 bits (ternary) the exact solution is a sort and a prefix
sum (O(N log N)); for >= 3 bits the reference solver alternates the two exact half-steps and the
"threshold" solver uses one free parameter r (see `lowbit.quant.codebook.LBW`). Training is
BinaryConnect style: float auxiliary weights are quantized at every iteration, forward/backward
run with the quantized weights, and the gradient updates the float copy (identity STE).
Activations stay float, as in the paper.

Config: `weight: {name: lbw, bits: 2..8, method: alternating|threshold, r, iters, per_channel}`
(at 2 bits the `lbw` quantizer is the exact ternary solver), and one procedure knob, `blend`:
before each optimizer step the float weights move a fraction rho toward their quantized values,
W <- (1 - rho) W + rho Q(W), then take the gradient step computed at Q(W). That is the "blended
coarse gradient descent" of the LBW authors' group (Yin et al. 2019; their CIFAR code,
penhunt/full-quantization-DNN, runs rho = 1e-5); 0, the default, is plain BinaryConnect.

Choices where the paper is silent (spec §4.5): per-layer alpha (per-channel as an option); the
first conv and the last linear layer stay float by default (`keep_float: none` quantizes them);
the threshold solver's r defaults to 1.0 (top level = max|W|), the best of r in 0.25..2.0 by
held-out validation accuracy of a 4-bit ResNet-20 (`benchmarks/results/lbw_r_sweep.json`); the
quantizer's Gaussian-error default of 0.5 clips the heavy tails of trained weights.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from lowbit.engine.callbacks import LoopState
from lowbit.nn.layers import QuantLayer
from lowbit.recipes.base import QuantConfig, Recipe, register_recipe
from lowbit.schema import require


@dataclass
class LBWConfig(QuantConfig):
    blend: float = 0.0  # rho of BCGD: the pull of the float weights toward Q(W) per step

    def validate(self) -> None:
        super().validate()
        require(0.0 <= self.blend < 1.0, f"blend must be in [0, 1), got {self.blend}")


@register_recipe
class LBWRecipe(Recipe):
    """BinaryConnect-style training with least-squares power-of-two weights."""

    name = "lbw"
    config_class = LBWConfig
    # r = 1.0: chosen by the validation sweep in benchmarks/results/lbw_r_sweep.json
    default_weight = {"name": "lbw", "bits": 4, "method": "alternating", "r": 1.0, "iters": 20,
                      "per_channel": False}
    weight_names = ("lbw",)
    cfg: LBWConfig

    def __init__(self, cfg: LBWConfig) -> None:
        super().__init__(cfg)
        self.layers: list[QuantLayer] = []

    def prepare(self, model: nn.Module) -> nn.Module:
        model = super().prepare(model)
        self.layers = [m for m in model.modules()
                       if isinstance(m, QuantLayer) and m.weight_quant is not None]
        return model

    @torch.no_grad()
    def before_step(self, state: LoopState) -> None:
        if self.cfg.blend:
            for layer in self.layers:
                layer.weight.lerp_(layer.quantized_weight(), self.cfg.blend)
