"""The training / evaluation loop, readable in one sitting.

It knows nothing of quantization methods: they take part as `Callback`s on a `LoopState`, and
lay out the training as phases. The loop reads top to bottom:

    for phase in phases:                      # the learning rate restarts at a phase boundary
        callbacks.on_phase_start(phase)
        for epoch in phase:                   # seeded batches, per-iteration learning rate,
            train_epoch(); evaluate(); save()  # callbacks around optimizer.step()

`resume()` restores model, optimizer, RNG, epoch and callback state, so a run killed at any
moment continues to the same result as an uninterrupted one. With `train.save_every_steps` a
checkpoint is also written inside an epoch, every N steps; the resumed epoch replays the
loader's batches up to where it stopped, without training on them. lowbit's loaders seed each
epoch's order and augmentation themselves, so the replay gives the same batches; a loader that
draws from the global random state would not (resume such runs from epoch ends).
"""

from __future__ import annotations

import itertools
import logging
import math
import time
from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from lowbit.config import RunConfig
from lowbit.data import DatasetSplits
from lowbit.engine import checkpoint as ckpt
from lowbit.engine.callbacks import Callback, LoopState, Phase
from lowbit.engine.device import autocast, resolve_device, rng_states, set_rng_states, to_device
from lowbit.engine.distill import distill_loss
from lowbit.engine.distributed import DistInfo, all_reduce_sum, sync_batchnorm
from lowbit.engine.evaluate import evaluate
from lowbit.engine.optim import build_optimizer, lr_at, set_lr
from lowbit.engine.progress import progress_bar
from lowbit.engine.resume import EpochSoFar, check_resumable
from lowbit.engine.rundir import RunDir
from lowbit.schema import ConfigError

log = logging.getLogger(__name__)


class Trainer:
    """Trains `model` on `data.train` per `cfg`, evaluating on `data.test` (rank 0 writes files)."""

    def __init__(
        self,
        cfg: RunConfig,
        model: nn.Module,
        data: DatasetSplits,
        callbacks: list[Callback] | None = None,
        run_dir: RunDir | None = None,
        dist: DistInfo | None = None,
        meta: dict[str, Any] | None = None,
        teacher: nn.Module | None = None,
        phases: list[Phase] | None = None,
    ) -> None:
        self.cfg, self.data, self.callbacks = cfg, data, list(callbacks or [])
        self.phases = phases or [Phase("train", cfg.train.epochs or 0)]
        self.total = sum(p.epochs for p in self.phases)
        self.dist, self.run_dir, self.meta = dist or DistInfo(), run_dir, dict(meta or {})
        tc = cfg.train
        self.device = resolve_device(tc.device)
        self.model, self.net, self.teacher = self._place(model, teacher)
        self.optimizer = build_optimizer(self.model, cfg.optim)
        self.loader = data.train.batches(cfg.data.batch_size, train=True, seed=tc.seed,
                                         rank=self.dist.rank, world_size=self.dist.world_size,
                                         channels_last=tc.channels_last,
                                         augment=cfg.data.augment)
        self.epoch, self.step, self.history = 0, 0, []  # type: ignore[var-annotated]
        self.partial = EpochSoFar()  # the current epoch's batches done (mid-epoch checkpoints)
        self.lr = cfg.optim.lr
        self.loop = LoopState(self.model, self.optimizer, self._calibration_batches,
                              autocast=lambda: autocast(tc.bf16, self.device),
                              progress=tc.progress and self.dist.is_main)

    def _place(self, model: nn.Module, teacher: nn.Module | None
               ) -> tuple[nn.Module, nn.Module, nn.Module | None]:
        """(model, what the loop calls, teacher) on the run's device and memory format; the
        loop calls a DistributedDataParallel wrapper under torchrun (CPU only)."""
        if self.dist.enabled and self.device.type != "cpu":
            raise ConfigError("train.device: several processes (torchrun, --nproc) train on "
                              "CPU only; use one process on a GPU")
        model = model.to(self.device)
        if self.cfg.train.channels_last:
            model = model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        if teacher is not None:
            teacher = teacher.eval().requires_grad_(False).to(self.device)
        if not self.dist.enabled:
            return model, model, teacher
        model = sync_batchnorm(model)  # BatchNorm statistics over the global batch
        return model, nn.parallel.DistributedDataParallel(model), teacher

    def _calibration_batches(self, n: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Up to `n` training batches in the current epoch's order (for calibration)."""
        self.loader.set_epoch(self.epoch)
        return itertools.islice(iter(self.loader), n)  # recalibrate_bn moves them to the model

    def _sync(self) -> LoopState:
        self.loop.epoch, self.loop.step = self.epoch, self.step
        return self.loop

    # ---- state -------------------------------------------------------------------------
    def state(self, full: bool = True) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        tensors = ckpt.with_prefix("model", self.model.state_dict())
        meta: dict[str, Any] = {
            **self.meta,
            "config": self.cfg.to_dict(),
            "epoch": self.epoch,
            "step": self.step,
            "metrics": self.history[-1] if self.history else {},
            "epoch_so_far": self.partial.to_dict(),
        }
        if full:
            opt_t, meta["optim"] = ckpt.optimizer_state(self.optimizer)
            tensors.update(ckpt.with_prefix("optim", opt_t))
            tensors.update(rng_states(self.device))
            meta["hooks"] = []
            for i, cb in enumerate(self.callbacks):
                h_t, h_m = cb.state_dict()
                tensors.update(ckpt.with_prefix(f"hook{i}", h_t))
                meta["hooks"].append(h_m)
        return tensors, meta

    def resume(self, path: Any) -> None:
        """Continue from a full checkpoint written by `save()`."""
        tensors, meta = ckpt.load_checkpoint(path)
        check_resumable(path, tensors, meta, self.total, self.optimizer, len(self.callbacks),
                        len(self.loader))
        ckpt.load_model_state(self.model, ckpt.split_prefix(tensors, "model"), path)
        ckpt.load_optimizer_state(
            self.optimizer, ckpt.split_prefix(tensors, "optim"), meta["optim"]
        )
        set_rng_states(tensors, self.device)
        for i, cb in enumerate(self.callbacks):
            cb.load_state_dict(ckpt.split_prefix(tensors, f"hook{i}"), meta["hooks"][i])
        self.epoch, self.step = int(meta["epoch"]), int(meta["step"])
        self.partial = EpochSoFar.from_dict(meta.get("epoch_so_far"))
        if self.dist.rank:  # the saved sums are global: rank 0 carries them
            self.partial = self.partial.position_only()
        if self.run_dir is not None:
            self.run_dir.truncate_metrics(self.epoch)
            self.history = self.run_dir.read_metrics()
        log.info("resumed from %s at epoch %d", path, self.epoch)

    def _save_mid_epoch(self) -> None:
        """Every rank takes part: the checkpoint holds the epoch's sums over all ranks (which
        rank 0 alone carries on after a resume)."""
        local = self.partial
        self.partial = local.reduced(self.dist)
        self._save_last()
        self.partial = local

    def _save_last(self) -> None:
        if self.run_dir is not None:
            self.save(self.run_dir.last)

    def save(self, path: Any, full: bool = True) -> None:
        if self.dist.is_main:
            tensors, meta = self.state(full)
            ckpt.save_checkpoint(path, tensors, meta)

    # ---- loop --------------------------------------------------------------------------
    def fit(self) -> dict[str, float]:
        """Train from `self.epoch` to the end of the last phase; returns the last metrics row."""
        self._call("on_fit_start")
        start = 0
        for phase in self.phases:
            # a resumed run re-entering a phase midway (or its first epoch midway) skips its start
            if self.epoch < start or (self.epoch == start and not self.partial.batches):
                self._call("on_phase_start", phase)
            while self.epoch < start + phase.epochs:
                self._run_epoch(phase, start)
            start += phase.epochs
        self._call("on_fit_end")
        return self.history[-1] if self.history else {}

    def _run_epoch(self, phase: Phase, start: int) -> None:
        row = self.train_epoch(self.epoch, phase, start)
        self.epoch += 1
        if self.epoch % self.cfg.train.eval_every == 0 or self.epoch == self.total:
            split = "val" if self.data.val is not None else "test"
            row.update({f"{split}_{k}": v for k, v in self.evaluate().items()})
        state = self._sync()
        state.epoch = self.epoch - 1  # the epoch that just ended (as the metrics row says)
        for cb in self.callbacks:
            cb.on_epoch_end(state, row)
        self._record(row)

    def _call(self, hook: str, *args: Any) -> None:
        state = self._sync()
        for cb in self.callbacks:
            getattr(cb, hook)(state, *args)

    def _record(self, row: dict[str, Any]) -> None:
        self.history.append(row)
        if self.run_dir is not None and self.dist.is_main:
            self.run_dir.log_metrics(row)
            if self.epoch % self.cfg.train.save_every == 0 or self.epoch == self.total:
                self._save_last()
        log.info(
            "epoch %d/%d %s",
            self.epoch,
            self.total,
            " ".join(f"{k}={v:.4g}" for k, v in row.items() if isinstance(v, float)),
        )

    def evaluate(self) -> dict[str, float]:
        tc = self.cfg.train
        return evaluate(
            self.model,
            self.data.val if self.data.val is not None else self.data.test,
            self.cfg.data.eval_batch_size,
            tc.bf16,
            tc.channels_last,
            self.dist,
            tc.progress,
        )

    def _lr_for(self, epoch: float, phase: Phase, start: int) -> float:
        """The schedule within the phase when it restarts the learning rate, else overall."""
        if phase.restart_lr:
            return lr_at(epoch - start, max(phase.epochs, 1), self.cfg.optim.lr, self.cfg.schedule)
        return lr_at(epoch, self.total, self.cfg.optim.lr, self.cfg.schedule)

    def train_epoch(self, epoch: int, phase: Phase, phase_start: int) -> dict[str, Any]:
        so_far, n_batches = self.partial, len(self.loader)
        if not so_far.batches:
            self._call("on_epoch_start")
        so_far.of, start = n_batches, time.perf_counter() - so_far.seconds
        self.loader.set_epoch(epoch)
        self.net.train()
        bar = self._epoch_bar(epoch, so_far.batches, n_batches)
        # a resumed epoch draws (and skips) the batches it already trained on: lowbit's loader
        # seeds each epoch's order and augmentation itself, so the rest comes out the same
        for i, (x, y) in itertools.islice(enumerate(self.loader), so_far.batches, None):
            self.lr = self._lr_for(epoch + i / n_batches, phase, phase_start)
            set_lr(self.optimizer, self.lr)
            loss, correct = self.train_step(x, y)
            so_far.add(loss * len(y), correct, len(y), time.perf_counter() - start)
            bar.update(loss=loss)
            if self._step_save_due() and i + 1 < n_batches:
                self._save_mid_epoch()
        bar.close()
        loss, correct, count = all_reduce_sum(so_far.sums(), self.dist)
        seconds, self.partial = time.perf_counter() - start, EpochSoFar()
        return {"epoch": epoch, "phase": phase.name, "lr": self.lr,
                "train_loss": loss / max(count, 1), "train_top1": 100 * correct / max(count, 1),
                "epoch_seconds": seconds, "images_per_s": count / max(seconds, 1e-9)}

    def _epoch_bar(self, epoch: int, done: int, n_batches: int) -> Any:
        desc = f"epoch {epoch + 1}/{self.total}" + (f" from batch {done + 1}" if done else "")
        return progress_bar(n_batches - done, desc,
                            enabled=self.cfg.train.progress and self.dist.is_main)

    def _step_save_due(self) -> bool:
        every = self.cfg.train.save_every_steps
        return every is not None and self.step % every == 0

    @torch.no_grad()
    def _teacher_logits(self, x: torch.Tensor) -> torch.Tensor:
        assert self.teacher is not None
        return self.teacher(x)

    def train_step(self, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
        x, y = to_device((x, y), self.device)
        with autocast(self.cfg.train.bf16, self.device):
            logits = self.net(x)
            loss = F.cross_entropy(
                logits.float(), y, label_smoothing=self.cfg.train.label_smoothing
            )
            if self.teacher is not None and self.cfg.distill is not None:
                loss = distill_loss(loss, logits, self._teacher_logits(x), self.cfg.distill)
        # the step's one read of a device value: the loss and the number right, before the
        # backward pass, so a non-finite loss never reaches a gradient (nor, under DDP, the
        # other ranks' gradients through the all-reduce)
        value, correct = torch.stack([loss.detach().float(),
                                      (logits.detach().argmax(1) == y).sum().float()]).tolist()
        if not math.isfinite(value):
            raise FloatingPointError(
                f"loss became {value} at step {self.step}; lower the "
                f"learning rate or check the data"
            )
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self._call("before_step")
        self.optimizer.step()
        self._call("after_step")
        self.step += 1
        return value, correct
