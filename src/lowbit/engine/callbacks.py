"""How a method takes part in a training loop without the loop knowing it: `Callback`s on a
small `LoopState`.

Any loop, lowbit's `Trainer` or one a user writes, calls the hooks at fixed points:

    state = LoopState(model, optimizer, batches=lambda n: itertools.islice(train_loader, n))
    cb.on_fit_start(state)
    for phase in phases:                     # e.g. recipe.phases()
        cb.on_phase_start(state, phase)      # INQ: partition and freeze; GDRQ: switch stage
        for epoch in range(phase.epochs):
            cb.on_epoch_start(state)
            for x, y in loader:
                loss = ...; optimizer.zero_grad(); loss.backward()
                cb.before_step(state); optimizer.step(); cb.after_step(state)
            cb.on_epoch_end(state, metrics={})
            state.epoch += 1
    cb.on_fit_end(state)

Hooks see the model, the optimizer, the epoch and a way to draw calibration batches: never the
trainer, so a method runs the same in any loop.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from lowbit.engine.device import model_device, to_device
from lowbit.engine.progress import progress_bar

log = logging.getLogger(__name__)

Batch = tuple[torch.Tensor, torch.Tensor]


@dataclass(frozen=True)
class Phase:
    """A stretch of training: `epochs` epochs; the learning-rate schedule restarts at its start
    when `restart_lr` (INQ's per-step restart, GDRQ's second stage)."""

    name: str
    epochs: int
    restart_lr: bool = True
    index: int = 0


@dataclass
class LoopState:
    """What hooks may read: the model, its optimizer, the position, calibration batches.

    `batches(n)` yields up to n training batches (x, y) for calibration (BatchNorm statistics,
    activation ranges); None when the loop has none to give (calibration is then skipped).
    """

    model: nn.Module
    optimizer: torch.optim.Optimizer | None = None
    batches: Callable[[int], Iterable[Batch]] | None = None
    epoch: int = 0
    step: int = 0
    autocast: Callable[[], Any] | None = None
    progress: bool = True  # calibration progress lines (the trainer: train.progress, rank 0)


class Callback:
    """Base: every hook is a no-op; state for checkpoints is empty."""

    def on_fit_start(self, state: LoopState) -> None:
        """Once before training, and again after a resume (restore derived modes here)."""

    def on_phase_start(self, state: LoopState, phase: Phase) -> None:
        """When a phase begins (not when a resumed run re-enters it midway)."""

    def on_epoch_start(self, state: LoopState) -> None:
        """Before the first batch of epoch `state.epoch`."""

    def before_step(self, state: LoopState) -> None:
        """After backward, before `optimizer.step()`: gradient masking goes here."""

    def after_step(self, state: LoopState) -> None:
        """After `optimizer.step()`: restoring frozen values goes here."""

    def on_epoch_end(self, state: LoopState, metrics: dict[str, Any]) -> None:
        """After the epoch's training (and evaluation, when it ran)."""

    def on_fit_end(self, state: LoopState) -> None:
        """After the last epoch."""

    def state_dict(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """Method state for checkpoints: (tensors, JSON-able metadata)."""
        return {}, {}

    def load_state_dict(self, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
        """Restore what `state_dict` returned."""


@torch.no_grad()
def recalibrate_bn(state: LoopState, batches: int) -> int:
    """Re-estimate every BatchNorm's running statistics on `batches` training batches.

    Cumulative average (momentum None) in train mode, without gradients: weights never change;
    quantizers that track statistics in train mode (activation EMAs) update along. Used where
    clipping or quantizing made the float statistics stale. Returns the batches used (0 when
    the loop gives no calibration batches).
    """
    model = state.model
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if batches <= 0 or not bns or state.batches is None:
        return 0
    momenta = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None
    was_training = model.training
    model.train()
    used = 0
    bar = progress_bar(batches, "re-estimating BatchNorm statistics", enabled=state.progress)
    device = model_device(model)
    with (state.autocast or contextlib.nullcontext)():
        for batch in itertools.islice(state.batches(batches), batches):
            model(to_device(batch, device)[0])  # a user's loader may give CPU batches
            used += 1
            bar.update()
    bar.close()
    for m, momentum in zip(bns, momenta, strict=True):
        m.momentum = momentum
    model.train(was_training)
    log.info("re-estimated BatchNorm statistics on %d training batches", used)
    return used
