"""High-level entry points shared by the CLI and by users' scripts.

`train(run)` runs a resolved training job (`lowbit.build.load_run`); `load_model(path)` rebuilds
the model saved in a checkpoint (quantized layers included); `evaluate_checkpoint(path)`
measures it on its dataset's full test set.
"""

from __future__ import annotations

import logging
import math
import os
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lowbit.artifacts import load_model, model_from_config
from lowbit.build import Run, build_model, load_run, resolve
from lowbit.config import RunConfig
from lowbit.data import ENV_DATA_DIR, DatasetSplits, load_dataset
from lowbit.data.user import user_splits
from lowbit.engine import checkpoint as ckpt
from lowbit.engine.device import bf16_native, resolve_device
from lowbit.engine.distributed import DistInfo, cleanup, finish_together, init_distributed
from lowbit.engine.evaluate import evaluate
from lowbit.engine.rundir import RunDir, RunDirError
from lowbit.engine.trainer import Trainer
from lowbit.errors import LowbitError

log = logging.getLogger(__name__)


def default_run_name(cfg: RunConfig) -> str:
    """`model-dataset-method-YYYYmmdd-HHMMSS`."""
    tag = cfg.quant["method"] if cfg.quant else "float"
    return f"{cfg.model.name}-{cfg.data.name}-{tag}-{time.strftime('%Y%m%d-%H%M%S')}"


def train(
    run: Run | RunConfig, resume: str | Path | None = None, run_path: str | Path | None = None,
    *, data: DatasetSplits | None = None, model: nn.Module | None = None,
) -> dict[str, Any]:
    """Train per `run` in a run directory; `resume` continues from that run's last checkpoint.

    A plain `RunConfig` (from `lowbit.config.build_config`) is resolved first. `data` replaces
    the dataset the config names (your own data: `lowbit.data.user.user_splits`), and `model`
    the model it names (your float model, which the run's method then prepares).
    """
    return _run(run if isinstance(run, Run) else resolve(run), resume, run_path, data, model)[0]


def _run(run: Run, resume: str | Path | None, run_path: str | Path | None,
         data: DatasetSplits | None, model: nn.Module | None) -> tuple[dict[str, Any], nn.Module]:
    dist = init_distributed()
    try:
        result = _train(run, dist, resume, run_path, data, model)
        finish_together(dist)
        return result
    finally:
        cleanup(dist)


def fit(model: nn.Module, train_data: Any, test_data: Any = None, *, val_data: Any = None,
        quant: dict[str, Any] | None = None, config: dict[str, Any] | None = None,
        num_classes: int | None = None, run_dir: str | Path | None = None) -> dict[str, Any]:
    """Train your model on your data (`torch.utils.data` Datasets or DataLoaders), float or
    with a method (`quant={"method": "lbw", "weight": {"bits": 2}}`). `config` holds the other
    sections (optim, schedule, train, distill). Returns the result dict (test metrics, run
    directory) with the trained, converted model under "model"."""
    cls = type(model)
    base = {**(config or {}), "quant": quant,
            "model": {"name": f"{cls.__module__}:{cls.__qualname__}"},
            "data": {**(config or {}).get("data", {}), "name": "user"}}
    splits = user_splits(train_data, test_data, num_classes, val_data)
    result, trained = _run(load_run(base=base), None, run_dir, splits, model)
    return {**result, "model": trained}


def evaluate_model(model: nn.Module, test_data: Any, num_classes: int | None = None,
                   batch_size: int = 500) -> dict[str, float]:
    """Top-1/top-5 and loss of any model on your data (a Dataset or a DataLoader)."""
    splits = user_splits(test_data, num_classes=num_classes)
    return evaluate(model, splits.test, batch_size, bf16=False)


def _train(
    run: Run, dist: DistInfo, resume: str | Path | None, run_path: str | Path | None,
    user_data: DatasetSplits | None = None, user_model: nn.Module | None = None,
) -> tuple[dict[str, Any], nn.Module]:
    cfg = run.cfg
    _set_precision(cfg)
    torch.manual_seed(cfg.train.seed)
    data = user_data or load_dataset(cfg.data.name, cfg.data.data_dir, cfg.data.download,
                                     cfg.data.image_size)
    if cfg.data.val_fraction > 0:
        data = data.with_validation(cfg.data.val_fraction, cfg.train.seed)
    recipe = run.recipe
    if user_model is None:
        model = build_model(run, data.train.num_classes, data.train.in_channels)
    else:
        model = recipe.prepare(user_model) if recipe is not None else user_model
    path = Path(resume or run_path or _fresh_dir(Path(cfg.out_dir), cfg))
    run_dir = RunDir(path, resume=bool(resume)) if dist.is_main else None
    meta = {
        "model": cfg.model.name,
        "dataset": cfg.data.name,
        "num_classes": data.train.num_classes,
        "in_channels": data.train.in_channels,
    }
    trainer = Trainer(cfg, model, data, run.callbacks, run_dir, dist, meta, _teacher(cfg),
                      run.phases)
    if run_dir is not None:
        _open_run_dir(run_dir, cfg, resume)
    try:
        if resume:
            _resume(trainer, path)
        trainer.fit()
        if recipe is not None:
            trainer.model = recipe.convert(trainer.model)
        final = _final_metrics(trainer, data)
        if run_dir is not None:
            trainer.save(run_dir.final, full=False)
            log.info("final checkpoint: %s  top1=%.2f", run_dir.final, final["top1"])
        return {"run_dir": str(path), "epochs": trainer.epoch, **final}, trainer.model
    finally:
        if run_dir is not None:
            run_dir.close()


def _set_precision(cfg: RunConfig) -> None:
    """Threads, and bf16 only where the device computes it natively (a bad device fails here,
    before anything is built)."""
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    device = resolve_device(cfg.train.device)
    if cfg.train.bf16 and not bf16_native(device):
        log.warning(
            "train.bf16: this %s has no native bf16 (CPU: AVX512-BF16/AMX; GPU: Ampere or "
            "later) and emulated bf16 is many times slower than fp32, so this run trains in "
            "fp32 (set train.bf16=false to silence this)", device.type.upper())
        cfg.train.bf16 = False


def _open_run_dir(run_dir: RunDir, cfg: RunConfig, resume: str | Path | None) -> None:
    """A new run writes its config and run.json; every run logs to the directory."""
    if not resume:
        run_dir.write_config(cfg.to_dict())
    run_dir.attach_log()
    run_dir.add_sinks(list(cfg.train.metrics), _saved_epoch(run_dir.path) if resume else None)


def _saved_epoch(path: Path) -> int:
    """The epoch a resumed run continues from (0 before its first save)."""
    last = path / "last.safetensors"
    return int(ckpt.load_checkpoint(last)[1].get("epoch", 0)) if last.exists() else 0


def _resume(trainer: Trainer, path: Path) -> None:
    """Continue from `path/last.safetensors`; a run killed before its first save starts over
    (its config is in the directory; metrics written before the kill are dropped)."""
    if (path / "last.safetensors").exists():
        trainer.resume(path / "last.safetensors")
        if trainer.run_dir is not None:  # recorded once the checkpoint is accepted
            trainer.run_dir.note_resume(trainer.epoch)
        return
    log.info("%s has no checkpoint yet (killed before the first save): starting it over", path)
    if trainer.run_dir is not None:
        trainer.run_dir.truncate_metrics(0)


def _fresh_dir(out_dir: Path, cfg: RunConfig) -> Path:
    """`out_dir/<name>`, created here; a default name that exists gets a -2, -3, ... suffix
    (created exclusively, so two runs started in the same second never share a directory)."""
    base = cfg.name or default_run_name(cfg)
    out_dir.mkdir(parents=True, exist_ok=True)
    for i in range(1, 1000):
        path = out_dir / (base if i == 1 else f"{base}-{i}")
        try:
            path.mkdir()
            return path
        except FileExistsError:
            if cfg.name:  # a name the user chose: RunDir says whether it may be used
                return path
    raise RunDirError(f"no free run directory name under {out_dir} for {base}")


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


def evaluate_checkpoint(
    path: str | Path, data_dir: str | None = None, batch_size: int = 500
) -> dict[str, Any]:
    """Top-1/top-5 of a checkpoint on its dataset's full test set.

    Data location: `data_dir`, else `$LOWBIT_DATA`, else the folder the run trained from (a
    checkpoint made on another machine names a path that may not exist here).
    """
    model, meta = load_model(path)
    saved = load_run(base=meta["config"]).cfg.data
    data = load_dataset(meta["dataset"], data_dir or os.environ.get(ENV_DATA_DIR) or saved.data_dir,
                        image_size=saved.image_size)
    result = evaluate(model, data.test, batch_size, bf16=False)
    if not math.isfinite(result["loss"]):
        raise LowbitError(f"{path}: evaluation gave a {result['loss']} loss: the model's outputs "
                          "are not finite (its weights or activations overflow)")
    return {
        "checkpoint": str(path),
        "model": meta["model"],
        "dataset": meta["dataset"],
        "num_test": len(data.test),
        **result,
    }
