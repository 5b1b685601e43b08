"""High-level entry points shared by the CLI and by users' scripts.

`train(cfg)` runs a configured training job; `load_model(path)` rebuilds the model saved in a
checkpoint (quantized layers included); `evaluate_checkpoint(path)` measures it on its dataset's
full test set.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lowbit.artifacts import load_model, model_from_config
from lowbit.config import RunConfig, build_config
from lowbit.data import ENV_DATA_DIR, DatasetSplits, load_dataset
from lowbit.engine import checkpoint as ckpt
from lowbit.engine.distributed import DistInfo, cleanup, init_distributed
from lowbit.engine.rundir import RunDir, cpu_bf16_native
from lowbit.engine.trainer import Trainer, evaluate
from lowbit.models import create_model
from lowbit.recipes import Recipe, build_recipe

log = logging.getLogger(__name__)


def _float_model(cfg: RunConfig, num_classes: int, in_channels: int) -> nn.Module:
    m = cfg.model
    return create_model(m.name, num_classes=num_classes, in_channels=in_channels, width=m.width,
                        **m.kwargs)  # fmt: skip


def build_model(cfg: RunConfig, data: DatasetSplits) -> tuple[nn.Module, Recipe | None]:
    """The float model of `cfg` (initialised from `train.init` if set), prepared by its recipe."""
    model = _float_model(cfg, data.train.num_classes, data.train.in_channels)
    if cfg.train.init:
        tensors, _ = ckpt.load_checkpoint(cfg.train.init)
        ckpt.load_model_state(model, ckpt.split_prefix(tensors, "model"), cfg.train.init)
    recipe = build_recipe(cfg.quant) if cfg.quant else None
    if recipe is not None:
        model = recipe.prepare(model)
    return model, recipe


def default_run_name(cfg: RunConfig) -> str:
    tag = cfg.quant["method"] if cfg.quant else "float"
    return f"{cfg.model.name}-{cfg.data.name}-{tag}-{time.strftime('%Y%m%d-%H%M%S')}"


def train(
    cfg: RunConfig, resume: str | Path | None = None, run_path: str | Path | None = None
) -> dict[str, Any]:
    """Train per `cfg` in a run directory; `resume` continues from that run's last checkpoint."""
    dist = init_distributed()
    try:
        return _train(cfg, dist, resume, run_path)
    finally:
        cleanup(dist)


def _train(
    cfg: RunConfig, dist: DistInfo, resume: str | Path | None, run_path: str | Path | None
) -> dict[str, Any]:
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    if cfg.train.bf16 and not cpu_bf16_native():
        log.warning(
            "train.bf16: this CPU has no native bf16 (AVX512-BF16/AMX) and emulated bf16 "
            "autocast is many times slower than fp32, so this run trains in fp32 "
            "(set train.bf16=false to silence this)"
        )
        cfg.train.bf16 = False
    torch.manual_seed(cfg.train.seed)
    data = load_dataset(cfg.data.name, cfg.data.data_dir, cfg.data.download)
    if cfg.data.val_fraction > 0:
        data = data.with_validation(cfg.data.val_fraction, cfg.train.seed)
    model, recipe = build_model(cfg, data)
    path = (
        Path(resume)
        if resume
        else Path(run_path or Path(cfg.out_dir) / (cfg.name or default_run_name(cfg)))
    )
    run_dir = RunDir(path) if dist.is_main else None
    meta = {
        "model": cfg.model.name,
        "dataset": cfg.data.name,
        "num_classes": data.train.num_classes,
        "in_channels": data.train.in_channels,
    }
    teacher = _teacher(cfg)
    trainer = Trainer(
        cfg, model, data, recipe.hooks() if recipe else [], run_dir, dist, meta, teacher
    )
    if run_dir is not None:
        if not resume:
            run_dir.write_config(cfg.to_dict())
        run_dir.attach_log()
    try:
        if resume:
            trainer.resume(path / "last.safetensors")
        trainer.fit()
        if recipe is not None:
            trainer.model = recipe.convert(trainer.model)
        final = _final_metrics(trainer, data)
        if run_dir is not None:
            trainer.save(run_dir.final, full=False)
            log.info("final checkpoint: %s  top1=%.2f", run_dir.final, final["top1"])
        return {"run_dir": str(path), "epochs": trainer.epoch, **final}
    finally:
        if run_dir is not None:
            run_dir.detach_log()


def _teacher(cfg: RunConfig) -> nn.Module | None:
    """The distillation teacher named by `cfg.distill`, in eval mode (None without one)."""
    if cfg.distill is None:
        return None
    teacher, _ = load_model(cfg.distill.teacher)
    if cfg.train.channels_last:
        teacher = teacher.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    log.info("distilling from %s (T=%g, weight=%g)", cfg.distill.teacher,
             cfg.distill.temperature, cfg.distill.weight)
    return teacher


def _final_metrics(trainer: Trainer, data: DatasetSplits) -> dict[str, Any]:
    """fp32 accuracy on the full test set (what `lowbit eval` reproduces), and on val if held out;
    also stored in the final checkpoint's metadata."""
    batch, dist = trainer.cfg.data.eval_batch_size, trainer.dist
    final = evaluate(trainer.model, data.test, batch, bf16=False, dist=dist)
    trainer.meta["final_test"] = final
    if data.val is not None:
        val = evaluate(trainer.model, data.val, batch, bf16=False, dist=dist)
        trainer.meta["final_val"] = val
        final = {**final, **{f"val_{k}": v for k, v in val.items()}}
    return final


# Kept for compatibility: both now live in `lowbit.artifacts`.
build_quant_model = model_from_config
__all__ = ["build_model", "build_quant_model", "evaluate_checkpoint", "load_model", "train"]


def evaluate_checkpoint(
    path: str | Path, data_dir: str | None = None, batch_size: int = 500
) -> dict[str, Any]:
    """Top-1/top-5 of a checkpoint on its dataset's full test set.

    Data location: `data_dir`, else `$LOWBIT_DATA`, else the folder the run trained from (a
    checkpoint made on another machine names a path that may not exist here).
    """
    model, meta = load_model(path)
    saved = build_config(base=meta["config"]).data.data_dir
    data = load_dataset(meta["dataset"], data_dir or os.environ.get(ENV_DATA_DIR) or saved)
    result = evaluate(model, data.test, batch_size, bf16=False)
    return {
        "checkpoint": str(path),
        "model": meta["model"],
        "dataset": meta["dataset"],
        "num_test": len(data.test),
        **result,
    }
