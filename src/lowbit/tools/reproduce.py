"""`lowbit reproduce EXPERIMENT.yaml`: run one paper-table row and record it honestly.

An experiment is a run config with an `expected:` section:

    expected: {metric: top1, value: 92.0, tolerance: 0.5}     # pass if top1 >= value - tolerance
    expected: {metric: top1, float_delta: -0.3}               # pass if top1 >= float top1 - 0.3

(`float_delta` compares with the float checkpoint the run starts from, `train.init`). The run
trains (or resumes), the final checkpoint is copied to `<checkpoints>/<name>.safetensors` and
re-evaluated from that copy on the full test set (what `lowbit eval` reproduces), and
`<results>/<name>.json` records command, commit, machine, epochs, wall-clock, throughput, the
figures and the verdict. A row that misses its target is recorded all the same. The record
also holds the row's storage: the weight bits of its quantized layers, the accounted bytes
against float, the size on disk of its packed `.lowbit` artifact (what a deployment stores),
MACs/BOPs and whether every quantized weight lies in its codebook, and the accuracy of that
packed artifact itself, evaluated from the file (`packed_top1`, `packed_top5`): what a
deployment gets, which must equal the checkpoint's.
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
from pathlib import Path
from typing import Any

from lowbit.api import evaluate_checkpoint, train
from lowbit.artifacts import export_file, model_meta
from lowbit.build import load_run
from lowbit.config import RunConfig
from lowbit.engine.checkpoint import atomic_write_bytes, load_checkpoint, save_checkpoint
from lowbit.engine.rundir import RunDir
from lowbit.schema import ConfigError
from lowbit.tools.inspection import inspect_target

# the config section each part of `_budget` comes from
_SECTION = {"model": "model", "init": "train", "quant": "quant", "distill": "distill",
            "epochs": "train", "optim": "optim", "schedule": "schedule", "seed": "train"}


def _budget(cfg: RunConfig) -> dict[str, Any]:
    """What makes a row's result: model, start, method, distillation, length and optimiser."""
    return {"model": (cfg.model.name, cfg.model.width), "init": cfg.train.init,
            "quant": cfg.quant, "distill": cfg.distill, "epochs": cfg.train.epochs,
            "optim": (cfg.optim.name, cfg.optim.lr, cfg.optim.weight_decay),
            "schedule": (cfg.schedule.name, cfg.schedule.min_lr), "seed": cfg.train.seed}


def describes_checkpoint(experiment: str | Path, checkpoint: str | Path) -> bool:
    """Whether the experiment YAML, as it reads now, is the run that made `checkpoint` (same
    model, start, method, distillation, length and optimiser): False marks a recorded row as
    stale, i.e. the YAML changed since and the row must be re-run. Only what the file records
    is compared: a packed `.lowbit` file keeps the config sections that rebuild its model, so for
    one the check covers model and method, not the training budget."""
    quiet = logging.getLogger("lowbit.recipes")  # old configs' migration notices: not news here
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        stored = model_meta(checkpoint)["config"]
        recorded, now = (_budget(load_run(base=stored).cfg),
                         _budget(load_run(config_file=experiment).cfg))
        return all(recorded[k] == now[k] for k in recorded if _SECTION[k] in stored)
    finally:
        quiet.setLevel(level)


def _reference(cfg: RunConfig, expected: dict[str, Any]) -> float:
    """The accuracy a row must reach: absolute, or relative to its float starting point."""
    if "float_delta" in expected:
        if not cfg.train.init:
            raise ConfigError("expected.float_delta needs train.init (the float checkpoint)")
        _, meta = load_checkpoint(cfg.train.init)
        return float(meta["final_test"][expected.get("metric", "top1")]) + expected["float_delta"]
    if "value" in expected:
        return float(expected["value"]) - float(expected.get("tolerance", 0.0))
    raise ConfigError("expected: needs 'value' (with optional 'tolerance') or 'float_delta'")


def _portable(command: str | None, data_dir: str | None) -> str | None:
    """`command` with this machine's data path replaced by `$LOWBIT_DATA`, for the record."""
    if command is None or not data_dir:
        return command
    return command.replace(data_dir, "$LOWBIT_DATA")


def _copy_portable(src: Path, dst: Path) -> None:
    """Copy a final checkpoint without the machine's data path in its stored config."""
    tensors, meta = load_checkpoint(src)
    data = meta.get("config", {}).get("data")
    if isinstance(data, dict):
        data["data_dir"] = None  # eval reads --data-dir / $LOWBIT_DATA on the user's machine
    save_checkpoint(dst, tensors, meta)


def _run_stats(run: RunDir, data_dir: str | None) -> dict[str, Any]:
    rows = run.read_metrics()
    info = json.loads((run.path / "run.json").read_text())
    speeds = sorted(r["images_per_s"] for r in rows) or [0.0]
    return {
        "train_command": _portable(info.get("command"), data_dir),
        "commit": info["commit"],
        "resumes": [{**r, "command": _portable(r.get("command"), data_dir)}
                    for r in info.get("resumes", [])],
        "machine": info["machine"],
        "started": info["started"],
        "epochs": len(rows),
        "train_seconds": round(sum(r["epoch_seconds"] for r in rows), 1),
        "median_images_per_s": round(speeds[len(speeds) // 2], 1),
        "best_epoch_top1": max((r.get("test_top1", 0.0) for r in rows), default=None),
    }


def size_summary(checkpoint: str | Path, data_dir: str | None = None) -> dict[str, Any]:
    """Storage and cost of a checkpoint: bits, accounted bytes, packed-file bytes, compliance,
    and the packed file's own top-1/top-5 on the full test set."""
    report = inspect_target(checkpoint)
    with tempfile.TemporaryDirectory() as tmp:
        path = export_file(checkpoint, Path(tmp) / "model.lowbit", "packed")
        packed = path.stat().st_size
        packed_eval = evaluate_checkpoint(path, data_dir)
    quantized = sorted({r.weight_bits for r in report.cost.layers if 0 < r.weight_bits < 32})
    return {
        "weight_bits": quantized,
        "quantized_layers": sum(0 < r.weight_bits < 32 for r in report.cost.layers),
        "accounted_bytes": round(report.cost.bytes),
        "float_bytes": round(report.cost.float_bytes),
        "compression": round(report.cost.compression, 2),
        "packed_file_bytes": packed,
        "macs": report.cost.macs,
        "bops": report.cost.bops,
        "compliance": report.compliance.passed,
        "packed_top1": packed_eval["top1"],
        "packed_top5": packed_eval["top5"],
    }


def reproduce(
    experiment: str | Path,
    run_dir: str | Path | None = None,
    data_dir: str | None = None,
    resume: bool = False,
    record_only: bool = False,
    results_dir: str | Path = "benchmarks/results",
    checkpoints_dir: str | Path = "benchmarks/checkpoints",
    overrides: list[str] | None = None,
) -> dict[str, Any]:
    """Run (or resume, or just record) an experiment; returns the recorded result.

    `overrides` ('a.b=c') change the experiment for this run; the result records them.
    """
    experiment = Path(experiment)
    name = experiment.stem
    user_overrides = list(overrides or [])
    overrides = [*user_overrides, *([f"data.data_dir={data_dir}"] if data_dir else [])]
    run = load_run(config_file=experiment, overrides=overrides)
    cfg = run.cfg
    expected = cfg.expected or {}
    threshold = _reference(cfg, expected) if expected else None
    run_path = Path(run_dir or Path(cfg.out_dir) / name)
    if not record_only:
        train(run, resume=run_path if resume else None, run_path=run_path)
    ckpt = Path(checkpoints_dir) / f"{name}.safetensors"
    ckpt.parent.mkdir(parents=True, exist_ok=True)
    _copy_portable(run_path / "final.safetensors", ckpt)
    final = evaluate_checkpoint(ckpt, data_dir)
    metric = expected.get("metric", "top1")
    result = {
        "experiment": str(experiment),
        "command": " ".join(["lowbit", "reproduce", str(experiment),
                             *(f"--set {o}" for o in user_overrides), "--record",
                             "--data-dir", "$LOWBIT_DATA"]),
        "recorded": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "checkpoint": str(ckpt),
        "eval_command": f"lowbit eval {ckpt} --json",
        **_run_stats(RunDir(run_path, resume=True), data_dir),
        "model": final["model"],
        "dataset": final["dataset"],
        "num_test": final["num_test"],
        "top1": final["top1"],
        "top5": final["top5"],
        "size": size_summary(ckpt, data_dir),
        "expected": expected,
        "threshold": threshold,
        "passed": None if threshold is None else final[metric] >= threshold,
    }
    out = Path(results_dir) / f"{name}.json"
    atomic_write_bytes(out, (json.dumps(result, indent=2) + "\n").encode())
    return result
