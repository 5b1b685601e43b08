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

Choices where the paper is silent (spec §2.7, §2.9): the first and last layers are quantized as
in the official code (`skip_first_last` keeps them float); n1 is recomputed at every step
(`n1: per_step`) but never so that an already-frozen weight leaves the codebook; `n1: first`
fixes it at the first partition. No training follows the last step, so BatchNorm statistics
are those of the model before it; `bn_recalibration_batches: N` re-estimates them on N training
batches (weights untouched; off by default, as in the paper).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import torch
from torch import nn

from lowbit.engine.hooks import Hook
from lowbit.nn.layers import QuantConv2d, QuantLinear
from lowbit.quant.inq import INQWeight
from lowbit.recipes import Recipe, register_recipe
from lowbit.schema import require
from lowbit.transform import every_layer_rules, quantize_model

if TYPE_CHECKING:
    from lowbit.engine.trainer import Trainer


@dataclass
class INQConfig:
    bits: int = 5
    portions: list[float] = field(default_factory=lambda: [0.5, 0.75, 0.875, 1.0])
    epochs_per_step: int = 4
    strategy: Literal["magnitude", "random"] = "magnitude"
    n1: Literal["per_step", "first"] = "per_step"
    prune_sparsity: float = 0.0
    prune_epochs: int = 0
    skip_first_last: bool = False
    bn_recalibration_batches: int = 0
    seed: int = 0

    def validate(self) -> None:
        require(2 <= self.bits <= 8, f"bits must be in 2..8, got {self.bits}")
        p = self.portions
        require(len(p) >= 1 and p[-1] == 1.0, "portions must end with 1.0")
        require(
            all(0 < a < b for a, b in zip(p, p[1:], strict=False)) and p[0] > 0,
            f"portions must increase strictly within (0, 1], got {p}",
        )
        require(self.epochs_per_step >= 0, "epochs_per_step must be >= 0")
        require(0 <= self.prune_sparsity < 1, "prune_sparsity must be in [0, 1)")
        require(self.prune_epochs >= 0, "prune_epochs must be >= 0")
        require(self.bn_recalibration_batches >= 0, "bn_recalibration_batches must be >= 0")


class INQRecipe(Recipe, Hook):
    """Partition → quantize-and-freeze → retrain, driven by the trainer's epoch hooks."""

    def __init__(self, cfg: INQConfig) -> None:
        self.cfg = cfg
        self.steps_done = 0
        self.pruned = False
        self.layers: list[tuple[str, QuantConv2d | QuantLinear, INQWeight]] = []

    # ---- recipe ------------------------------------------------------------------------
    def prepare(self, model: nn.Module) -> nn.Module:
        spec = {"weight": {"name": "inq", "bits": self.cfg.bits, "strategy": self.cfg.strategy,
                           "n1_mode": self.cfg.n1}}
        if self.cfg.skip_first_last:
            model = quantize_model(model, inplace=True, **spec).model
        else:
            model = quantize_model(model, every_layer_rules(model, spec), inplace=True).model
        self.layers = [
            (name, m, m.weight_quant)
            for name, m in model.named_modules()
            if isinstance(m, QuantConv2d | QuantLinear) and isinstance(m.weight_quant, INQWeight)
        ]
        for _, layer, q in self.layers:
            q.attach(layer.weight)
        return model

    def hooks(self) -> list[Hook]:
        return [self]

    def epochs(self) -> int:
        return self.cfg.prune_epochs + (len(self.cfg.portions) - 1) * self.cfg.epochs_per_step

    # ---- hooks -------------------------------------------------------------------------
    def on_epoch_start(self, trainer: Trainer, epoch: int) -> None:
        if self.cfg.prune_sparsity > 0 and not self.pruned:
            for _, layer, q in self.layers:
                q.prune(layer.weight, self.cfg.prune_sparsity)
            self.pruned = True
        if epoch >= self.cfg.prune_epochs and self.cfg.epochs_per_step > 0:
            self._advance_to((epoch - self.cfg.prune_epochs) // self.cfg.epochs_per_step)

    def after_step(self, trainer: Trainer) -> None:
        for _, layer, q in self.layers:  # undo weight decay / momentum drift on frozen entries
            q.restore(layer.weight)

    def on_fit_end(self, trainer: Trainer) -> None:
        self._advance_to(len(self.cfg.portions) - 1)
        trainer.recalibrate_bn(self.cfg.bn_recalibration_batches)

    def phase(self, epoch: int, total: int) -> tuple[float, int] | None:
        p, e = self.cfg.prune_epochs, self.cfg.epochs_per_step
        if epoch < p:
            return float(epoch), p
        return (float((epoch - p) % e), e) if e > 0 else None

    def state_dict(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        return {}, {"steps_done": self.steps_done, "pruned": self.pruned}

    def load_state_dict(self, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
        self.steps_done, self.pruned = int(meta["steps_done"]), bool(meta["pruned"])

    # ---- steps -------------------------------------------------------------------------
    def _advance_to(self, step: int) -> None:
        """Run partition steps until step index `step` (0-based) is done."""
        while self.steps_done <= min(step, len(self.cfg.portions) - 1):
            fraction = self.cfg.portions[self.steps_done]
            for i, (_, layer, q) in enumerate(self.layers):
                gen = torch.Generator().manual_seed(
                    self.cfg.seed * 7919 + self.steps_done * 131 + i
                )
                q.partition(layer.weight, fraction, gen)
                q.restore(layer.weight)
            self.steps_done += 1


@register_recipe("inq", INQConfig)
def build_inq(cfg: INQConfig) -> Recipe:
    return INQRecipe(cfg)
