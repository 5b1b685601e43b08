"""INQ — Incremental Network Quantization (Zhou, Yao, Guo, Xu, Chen; ICLR 2017).

Start from a trained float model. For each accumulated portion sigma_1 < ... < sigma_N = 1:
(1) partition each layer's not-yet-quantized weights, largest |w| first ("pruning-inspired",
default) or at random, so that exactly round(sigma_n * N) weights are frozen; (2) quantize the
new group to {0, ±2^n2, ..., ±2^n1} and freeze it; (3) retrain the still-float weights for
`epochs_per_step` epochs, the learning-rate schedule restarting at every step. After the last
step every weight is a power of two or zero: b bits per weight (1 bit for zero, b-1 for the
signed exponents). Optional DNS-style pruning first: `prune_sparsity` of each layer's smallest
weights are frozen at 0 and fine-tuned around for `prune_epochs`; portions then count the
remaining weights. Frozen weights never change (see `lowbit.quant.inq`); the masks live in the
model's buffers and the step counter in the checkpoint, so a killed run resumes exactly.

Config: `weight: {name: inq, bits, strategy: magnitude|random, n1_mode: per_step|first}`;
procedure knobs `portions`, `epochs_per_step`, `prune_sparsity`, `prune_epochs`, `seed` (and
the common `bn_recalibration_batches`). Phases: `prune` (if any), then one per partition step but
the last, each restarting the learning rate; the last partition (100 %) happens at fit end.

Choices where the paper is silent (spec §2.7, §2.9): the first and last layers are quantized as
in the official code (`keep_float: first_last` keeps them float); n1 is recomputed at every step
(`n1_mode: per_step`) but never so that an already-frozen weight leaves the codebook;
`n1_mode: first` fixes it at the first partition. No training follows the last step, so
BatchNorm statistics are those of the model before it; the common `bn_recalibration_batches`
(default 100; 0 is the paper's procedure) re-estimates them on that many training batches after
the last step, weights untouched.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from lowbit.engine.callbacks import LoopState, Phase
from lowbit.nn.layers import QuantConv2d, QuantLinear
from lowbit.quant.inq import INQWeight
from lowbit.recipes.base import FINETUNE_SCHEDULE, KeepFloat, QuantConfig, Recipe, register_recipe
from lowbit.schema import require


@dataclass
class INQConfig(QuantConfig):
    keep_float: KeepFloat = "none"
    portions: list[float] = field(default_factory=lambda: [0.5, 0.75, 0.875, 1.0])
    epochs_per_step: int = 4
    prune_sparsity: float = 0.0
    prune_epochs: int = 0
    seed: int = 0

    def validate(self) -> None:
        super().validate()
        p = self.portions
        require(len(p) >= 1 and p[-1] == 1.0, "portions must end with 1.0")
        require(
            all(0 < a < b for a, b in zip(p, p[1:], strict=False)) and p[0] > 0,
            f"portions must increase strictly within (0, 1], got {p}",
        )
        require(self.epochs_per_step >= 0, "epochs_per_step must be >= 0")
        require(0 <= self.prune_sparsity < 1, "prune_sparsity must be in [0, 1)")
        require(self.prune_epochs >= 0, "prune_epochs must be >= 0")


@register_recipe
class INQRecipe(Recipe):
    """Partition → quantize-and-freeze → retrain, one phase per partition step."""

    name = "inq"
    config_class = INQConfig
    default_weight = {"name": "inq", "bits": 5, "strategy": "magnitude", "n1_mode": "per_step"}
    weight_names = ("inq",)
    finetune = FINETUNE_SCHEDULE  # the method's schedule fixes the length
    cfg: INQConfig

    def __init__(self, cfg: INQConfig) -> None:
        super().__init__(cfg)
        self.steps_done = 0
        self.pruned = False
        self.layers: list[tuple[QuantConv2d | QuantLinear, INQWeight]] = []

    def prepare(self, model: nn.Module) -> nn.Module:
        model = super().prepare(model)
        self.layers = [(m, m.weight_quant) for m in model.modules()
                       if isinstance(m, QuantConv2d | QuantLinear)
                       and isinstance(m.weight_quant, INQWeight)]
        for layer, q in self.layers:
            q.attach(layer.weight)
        return model

    def fixed_epochs(self) -> int:
        return self.cfg.prune_epochs + (len(self.cfg.portions) - 1) * self.cfg.epochs_per_step

    def phases(self, epochs: int | None = None) -> list[Phase]:
        out = [Phase("prune", self.cfg.prune_epochs)] if self.cfg.prune_epochs else []
        out += [Phase(f"step {i + 1}/{len(self.cfg.portions)}", self.cfg.epochs_per_step)
                for i in range(len(self.cfg.portions) - 1)]
        return [Phase(p.name, p.epochs, index=i) for i, p in enumerate(out)]

    # ---- callbacks ---------------------------------------------------------------------
    def on_fit_start(self, state: LoopState) -> None:
        if self.cfg.prune_sparsity > 0 and not self.pruned:
            for layer, q in self.layers:
                q.prune(layer.weight, self.cfg.prune_sparsity)
            self.pruned = True

    def on_phase_start(self, state: LoopState, phase: Phase) -> None:
        step = phase.index - (1 if self.cfg.prune_epochs else 0)
        if step >= 0:
            self._advance_to(step)

    def after_step(self, state: LoopState) -> None:
        for layer, q in self.layers:  # undo weight decay / momentum drift on frozen entries
            q.restore(layer.weight)

    def on_fit_end(self, state: LoopState) -> None:
        self._advance_to(len(self.cfg.portions) - 1)
        super().on_fit_end(state)

    def state_dict(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        return {}, {"steps_done": self.steps_done, "pruned": self.pruned}

    def load_state_dict(self, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
        self.steps_done, self.pruned = int(meta["steps_done"]), bool(meta["pruned"])

    # ---- steps -------------------------------------------------------------------------
    def _advance_to(self, step: int) -> None:
        """Run partition steps until step index `step` (0-based) is done."""
        while self.steps_done <= min(step, len(self.cfg.portions) - 1):
            fraction = self.cfg.portions[self.steps_done]
            for i, (layer, q) in enumerate(self.layers):
                gen = torch.Generator().manual_seed(
                    self.cfg.seed * 7919 + self.steps_done * 131 + i
                )
                q.partition(layer.weight, fraction, gen)
                q.restore(layer.weight)
            self.steps_done += 1
