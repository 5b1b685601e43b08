"""Checks on a checkpoint before a run resumes from it: everything resume will read, read once;
and `EpochSoFar`, the position inside an epoch that a mid-epoch checkpoint carries.

A checkpoint that passed its integrity check can still not fit this run (another model, another
schedule, an optimizer of other parameters) or have been written by hand; each problem is one
line naming the file and what is wrong, before any state is touched.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from lowbit.engine.checkpoint import CheckpointError, split_prefix
from lowbit.engine.distributed import DistInfo, all_reduce_sum


def check_resumable(path: Path, tensors: dict[str, torch.Tensor], meta: dict[str, Any],
                    total_epochs: int, optimizer: torch.optim.Optimizer,
                    callbacks: int, batches_per_epoch: int) -> None:
    """Raise CheckpointError unless `path` can resume this run (see the module docstring)."""
    def bad(what: str) -> CheckpointError:
        return CheckpointError(f"cannot resume from {path}: {what}")

    if not isinstance(meta, dict) or "optim" not in meta:
        raise bad("it holds no optimizer state (a final or exported model, not a run's "
                  "last.safetensors)")
    rng = tensors.get("rng/torch")
    like = torch.get_rng_state()
    if rng is None or rng.dtype != like.dtype or rng.shape != like.shape:
        raise bad("the random-number-generator state is missing or malformed")
    epoch, step = meta.get("epoch"), meta.get("step")
    if not (isinstance(epoch, int) and 0 <= epoch <= total_epochs):
        raise bad(f"epoch {epoch!r} is outside this run's schedule of {total_epochs} epochs")
    if not (isinstance(step, int) and step >= 0):
        raise bad(f"step {step!r} is not a count of steps")
    _check_epoch_so_far(meta.get("epoch_so_far"), epoch, total_epochs, batches_per_epoch, bad)
    hooks = meta.get("hooks")
    if not (isinstance(hooks, list) and len(hooks) == callbacks):
        raise bad(f"it holds state for {len(hooks) if isinstance(hooks, list) else 'no'} "
                  f"methods, this run has {callbacks}")
    _check_optimizer(optimizer, split_prefix(tensors, "optim"), meta["optim"], bad)


def _check_epoch_so_far(so_far: Any, epoch: int, total_epochs: int, batches_per_epoch: int,
                        bad: Any) -> None:
    """A mid-epoch position (absent in checkpoints written at an epoch's end)."""
    if so_far is None:
        return
    keys = ("batches", "of", "loss_sum", "correct", "count", "seconds")
    if not (isinstance(so_far, dict) and set(so_far) == set(keys) and all(
            isinstance(so_far[k], int | float) and not isinstance(so_far[k], bool)
            and 0 <= so_far[k] < float("inf") for k in keys)):
        raise bad("its position within the epoch (epoch_so_far) is malformed")
    batches, of = so_far["batches"], so_far["of"]
    if not batches:
        if any(so_far[k] for k in ("loss_sum", "correct", "count")):
            raise bad("its position within the epoch (epoch_so_far) is malformed")
        return
    if not (isinstance(batches, int) and batches < of == batches_per_epoch
            and epoch < total_epochs):
        raise bad(f"it stopped after batch {batches} of {of} in epoch {epoch + 1}, but an "
                  f"epoch of this run has {batches_per_epoch} batches (another batch size or "
                  "dataset?)")


def _check_optimizer(optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor],
                     meta: Any, bad: Any) -> None:
    groups = meta.get("param_groups") if isinstance(meta, dict) else None
    if not isinstance(groups, list) or not isinstance(meta.get("scalars"), dict):
        raise bad("the optimizer state is malformed")
    ours = [len(g["params"]) for g in optimizer.param_groups]
    theirs = [len(g.get("params", [])) if isinstance(g, dict) else -1 for g in groups]
    if ours != theirs:
        raise bad(f"the optimizer state holds parameter groups of {theirs} parameters, this "
                  f"model's optimizer {ours}")
    params = [p for g in optimizer.param_groups for p in g["params"]]
    for key, value in tensors.items():
        index, _, name = key.partition("/")
        if not index.isdigit() or int(index) >= len(params):
            raise bad(f"optimizer state {key!r} names no parameter of this model")
        if value.dim() > 0 and value.shape != params[int(index)].shape:
            raise bad(f"optimizer state {key} has shape {tuple(value.shape)}, its parameter "
                      f"{tuple(params[int(index)].shape)}")


@dataclass
class EpochSoFar:
    """What the current epoch (of `of` batches) has done so far: batches, sums of loss, correct
    and images, and seconds; zero between epochs. Saved with mid-epoch checkpoints."""

    batches: int = 0
    of: int = 0
    loss_sum: float = 0.0
    correct: float = 0.0
    count: float = 0.0
    seconds: float = 0.0

    def add(self, loss_sum: float, correct: float, count: int, seconds: float) -> None:
        self.batches += 1
        self.loss_sum += loss_sum
        self.correct += correct
        self.count += count
        self.seconds = seconds

    def sums(self) -> list[float]:
        return [self.loss_sum, self.correct, self.count]

    def reduced(self, dist: DistInfo) -> EpochSoFar:
        """The same position with the sums over every rank."""
        loss_sum, correct, count = all_reduce_sum(self.sums(), dist)
        return EpochSoFar(self.batches, self.of, loss_sum, correct, count, self.seconds)

    def position_only(self) -> EpochSoFar:
        """The same position without sums (ranks other than 0 after a resume: rank 0 carries
        the global sums)."""
        return EpochSoFar(self.batches, self.of, seconds=self.seconds)

    def to_dict(self) -> dict[str, float]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, float] | None) -> EpochSoFar:
        """From a checkpoint's `epoch_so_far` (checked by `check_resumable`); None: zero."""
        if not d:
            return cls()
        return cls(int(d["batches"]), int(d["of"]), *(float(d[k]) for k in
                                                      ("loss_sum", "correct", "count", "seconds")))
