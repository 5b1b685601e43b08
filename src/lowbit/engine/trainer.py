"""The training / evaluation loop, readable in one sitting.

It knows nothing of quantization methods: they take part through `Hook`s. Per epoch: set the
loader's epoch (seeded batches), step through batches with per-iteration learning rate, call the
hooks around `optimizer.step()`, evaluate, log one metrics row, and save `last.safetensors`
atomically. `resume()` restores model, optimizer, RNG, epoch and hook state, so a run killed at
any moment continues to the same result as an uninterrupted one.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import time
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from lowbit.config import DistillConfig, RunConfig
from lowbit.data import BatchLoader, DatasetSplits, ImageData
from lowbit.engine import checkpoint as ckpt
from lowbit.engine.distributed import DistInfo, all_reduce_sum
from lowbit.engine.hooks import Hook
from lowbit.engine.optim import build_optimizer, lr_at, set_lr
from lowbit.engine.progress import progress_bar
from lowbit.engine.rundir import RunDir

log = logging.getLogger(__name__)


def autocast(enabled: bool) -> contextlib.AbstractContextManager[Any]:
    return torch.autocast("cpu", dtype=torch.bfloat16) if enabled else contextlib.nullcontext()


@torch.no_grad()
def evaluate(
    model: nn.Module,
    data: ImageData,
    batch_size: int = 500,
    bf16: bool = False,
    channels_last: bool = False,
    dist: DistInfo | None = None,
) -> dict[str, float]:
    """Top-1 / top-5 accuracy (%) and mean loss of `model` on the whole of `data`."""
    dist = dist or DistInfo()
    was_training = model.training
    model.eval()
    loader = BatchLoader(
        data,
        batch_size * dist.world_size,
        train=False,
        rank=dist.rank,
        world_size=dist.world_size,
        channels_last=channels_last,
    )
    sums = [0.0, 0.0, 0.0, 0.0]  # loss, top1, top5, count
    k = min(5, data.num_classes)
    for x, y in loader:
        with autocast(bf16):
            logits = model(x)
        logits = logits.float()
        top = logits.topk(k, dim=1).indices
        sums[0] += F.cross_entropy(logits, y, reduction="sum").item()
        sums[1] += (top[:, 0] == y).sum().item()
        sums[2] += (top == y[:, None]).any(1).sum().item()
        sums[3] += len(y)
    loss, top1, top5, n = all_reduce_sum(sums, dist)
    model.train(was_training)
    n = max(n, 1)
    return {"loss": loss / n, "top1": 100 * top1 / n, "top5": 100 * top5 / n}


class Trainer:
    """Trains `model` on `data.train` per `cfg`, evaluating on `data.test` (rank 0 writes files)."""

    def __init__(
        self,
        cfg: RunConfig,
        model: nn.Module,
        data: DatasetSplits,
        hooks: list[Hook] | None = None,
        run_dir: RunDir | None = None,
        dist: DistInfo | None = None,
        meta: dict[str, Any] | None = None,
        teacher: nn.Module | None = None,
    ) -> None:
        self.cfg, self.data, self.hooks = cfg, data, list(hooks or [])
        self.teacher = teacher.eval().requires_grad_(False) if teacher is not None else None
        self.dist, self.run_dir, self.meta = dist or DistInfo(), run_dir, dict(meta or {})
        tc = cfg.train
        self.model = model.to(memory_format=torch.channels_last) if tc.channels_last else model  # type: ignore[call-overload]
        self.net: nn.Module = self.model
        if self.dist.enabled:
            self.net = nn.parallel.DistributedDataParallel(self.model)
        self.optimizer = build_optimizer(self.model, cfg.optim)
        self.loader = BatchLoader(
            data.train,
            cfg.data.batch_size,
            train=True,
            seed=tc.seed,
            rank=self.dist.rank,
            world_size=self.dist.world_size,
            channels_last=tc.channels_last,
        )
        if cfg.data.augment is False:
            self.loader.data = _no_augment(data.train)
        self.epoch, self.step, self.history = 0, 0, []  # type: ignore[var-annotated]
        self.lr = cfg.optim.lr

    # ---- state -------------------------------------------------------------------------
    def state(self, full: bool = True) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        tensors = ckpt.with_prefix("model", self.model.state_dict())
        meta: dict[str, Any] = {
            **self.meta,
            "config": self.cfg.to_dict(),
            "epoch": self.epoch,
            "step": self.step,
            "metrics": self.history[-1] if self.history else {},
        }
        if full:
            opt_t, meta["optim"] = ckpt.optimizer_state(self.optimizer)
            tensors.update(ckpt.with_prefix("optim", opt_t))
            tensors["rng/torch"] = torch.get_rng_state()
            meta["hooks"] = []
            for i, hook in enumerate(self.hooks):
                h_t, h_m = hook.state_dict()
                tensors.update(ckpt.with_prefix(f"hook{i}", h_t))
                meta["hooks"].append(h_m)
        return tensors, meta

    def resume(self, path: Any) -> None:
        """Continue from a full checkpoint written by `save()`."""
        tensors, meta = ckpt.load_checkpoint(path)
        if "optim" not in meta:
            raise ckpt.CheckpointError(f"{path} holds no optimizer state: it cannot be resumed")
        ckpt.load_model_state(self.model, ckpt.split_prefix(tensors, "model"), path)
        ckpt.load_optimizer_state(
            self.optimizer, ckpt.split_prefix(tensors, "optim"), meta["optim"]
        )
        torch.set_rng_state(tensors["rng/torch"])
        for i, hook in enumerate(self.hooks):
            hook.load_state_dict(ckpt.split_prefix(tensors, f"hook{i}"), meta["hooks"][i])
        self.epoch, self.step = int(meta["epoch"]), int(meta["step"])
        if self.run_dir is not None:
            self.run_dir.truncate_metrics(self.epoch)
            self.history = self.run_dir.read_metrics()
        log.info("resumed from %s at epoch %d", path, self.epoch)

    def save(self, path: Any, full: bool = True) -> None:
        if self.dist.is_main:
            tensors, meta = self.state(full)
            ckpt.save_checkpoint(path, tensors, meta)

    # ---- loop --------------------------------------------------------------------------
    def fit(self) -> dict[str, float]:
        """Train from `self.epoch` to `cfg.train.epochs`; returns the last metrics row."""
        for hook in self.hooks:
            hook.on_fit_start(self)
        total = self.cfg.train.epochs
        while self.epoch < total:
            row = self.train_epoch(self.epoch)
            self.epoch += 1
            if self.epoch % self.cfg.train.eval_every == 0 or self.epoch == total:
                split = "val" if self.data.val is not None else "test"
                row.update({f"{split}_{k}": v for k, v in self.evaluate().items()})
            for hook in self.hooks:
                hook.on_epoch_end(self, self.epoch - 1, row)
            self._record(row)
        for hook in self.hooks:
            hook.on_fit_end(self)
        return self.history[-1] if self.history else {}

    def _record(self, row: dict[str, Any]) -> None:
        self.history.append(row)
        if self.run_dir is not None and self.dist.is_main:
            self.run_dir.log_metrics(row)
            if self.epoch % self.cfg.train.save_every == 0 or self.epoch == self.cfg.train.epochs:
                self.save(self.run_dir.last)
        log.info(
            "epoch %d/%d %s",
            self.epoch,
            self.cfg.train.epochs,
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
        )

    def _lr_for(self, epoch: float) -> float:
        total = self.cfg.train.epochs
        for hook in self.hooks:
            ph = hook.phase(int(epoch), total)
            if ph is not None:
                epoch, total = ph[0] + (epoch - int(epoch)), ph[1]
                break
        return lr_at(epoch, total, self.cfg.optim.lr, self.cfg.schedule)

    def train_epoch(self, epoch: int) -> dict[str, Any]:
        tc, start = self.cfg.train, time.perf_counter()
        self.loader.set_epoch(epoch)
        for hook in self.hooks:
            hook.on_epoch_start(self, epoch)
        self.net.train()
        sums, n_batches = [0.0, 0.0, 0.0], len(self.loader)
        bar = progress_bar(
            n_batches, f"epoch {epoch + 1}/{tc.epochs}", enabled=tc.progress and self.dist.is_main
        )
        for i, (x, y) in enumerate(self.loader):
            self.lr = self._lr_for(epoch + i / n_batches)
            set_lr(self.optimizer, self.lr)
            loss, correct = self.train_step(x, y)
            sums[0] += loss * len(y)
            sums[1] += correct
            sums[2] += len(y)
            bar.update(loss=loss)
        bar.close()
        loss, correct, count = all_reduce_sum(sums, self.dist)
        seconds = time.perf_counter() - start
        return {
            "epoch": epoch,
            "lr": self.lr,
            "train_loss": loss / max(count, 1),
            "train_top1": 100 * correct / max(count, 1),
            "epoch_seconds": seconds,
            "images_per_s": count / max(seconds, 1e-9),
        }

    @torch.no_grad()
    def recalibrate_bn(self, batches: int) -> int:
        """Re-estimate every BatchNorm's running statistics on `batches` training batches.

        Cumulative average (momentum None) over the batches of the current epoch's order, in
        train mode, without gradients: weights never change. Used after a last quantization step
        that no training follows (INQ), where the statistics are stale. Returns batches used.
        """
        bns = [m for m in self.model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        if batches <= 0 or not bns:
            return 0
        momenta = [m.momentum for m in bns]
        for m in bns:
            m.reset_running_stats()
            m.momentum = None
        self.net.train()
        self.loader.set_epoch(self.epoch)
        used = 0
        with autocast(self.cfg.train.bf16):
            for x, _ in itertools.islice(self.loader, batches):
                self.net(x)
                used += 1
        for m, momentum in zip(bns, momenta, strict=True):
            m.momentum = momentum
        log.info("re-estimated BatchNorm statistics on %d training batches", used)
        return used

    @torch.no_grad()
    def _teacher_logits(self, x: torch.Tensor) -> torch.Tensor:
        assert self.teacher is not None
        return self.teacher(x)

    def train_step(self, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
        with autocast(self.cfg.train.bf16):
            logits = self.net(x)
            loss = F.cross_entropy(
                logits.float(), y, label_smoothing=self.cfg.train.label_smoothing
            )
            if self.teacher is not None and self.cfg.distill is not None:
                loss = distill_loss(loss, logits, self._teacher_logits(x), self.cfg.distill)
        if not torch.isfinite(loss):
            raise FloatingPointError(
                f"loss became {loss.item()} at step {self.step}; lower the "
                f"learning rate or check the data"
            )
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        for hook in self.hooks:
            hook.before_step(self)
        self.optimizer.step()
        for hook in self.hooks:
            hook.after_step(self)
        self.step += 1
        return loss.item(), (logits.argmax(1) == y).sum().item()


def distill_loss(
    ce: torch.Tensor, student: torch.Tensor, teacher: torch.Tensor, cfg: DistillConfig
) -> torch.Tensor:
    """`(1 - w) * ce + w * T^2 * KL(softmax(teacher/T) || softmax(student/T))` (Hinton et al.)."""
    t = cfg.temperature
    kl = F.kl_div(
        F.log_softmax(student.float() / t, dim=1),
        F.log_softmax(teacher.float() / t, dim=1),
        reduction="batchmean",
        log_target=True,
    )
    return (1 - cfg.weight) * ce + cfg.weight * t * t * kl


def _no_augment(data: ImageData) -> ImageData:
    return ImageData(
        data.images,
        data.labels,
        data.num_classes,
        data.mean,
        data.std,
        flip=False,
        pad=0,
        classes=data.classes,
    )
