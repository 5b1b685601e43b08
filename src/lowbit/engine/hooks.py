"""Hooks: how a quantization method takes part in training without the loop knowing it.

The trainer calls every hook at fixed points. A method (INQ, LBW, GDRQ, ...) implements the ones
it needs: INQ masks gradients in `before_step` and restarts the learning-rate schedule per
quantization step through `phase`; LBW swaps float and quantized weights around the step.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from lowbit.engine.trainer import Trainer


class Hook:
    """Base hook: every method is a no-op."""

    def on_fit_start(self, trainer: Trainer) -> None:
        """Once, after the model, optimizer and any resumed state are in place."""

    def on_epoch_start(self, trainer: Trainer, epoch: int) -> None:
        """Before the first batch of `epoch`."""

    def before_step(self, trainer: Trainer) -> None:
        """After backward, before `optimizer.step()`: gradient masking goes here."""

    def after_step(self, trainer: Trainer) -> None:
        """After `optimizer.step()`: restoring frozen values goes here."""

    def on_epoch_end(self, trainer: Trainer, epoch: int, metrics: dict[str, float]) -> None:
        """After the epoch's training (and evaluation, when it ran)."""

    def on_fit_end(self, trainer: Trainer) -> None:
        """After the last epoch."""

    def phase(self, epoch: int, total: int) -> tuple[float, int] | None:
        """(epoch within the current phase, phase length) for the LR schedule, or None.

        Returning a phase restarts the schedule at each phase boundary (INQ's per-step restart).
        """
        return None

    def state_dict(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """Method state for checkpoints: (tensors, JSON-able metadata)."""
        return {}, {}

    def load_state_dict(self, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
        """Restore what `state_dict` returned."""
