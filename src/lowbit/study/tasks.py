"""The unit of work an executor runs: a plain-data task dict in, a result dict out.

Two kinds: `train` (one run through `lowbit.api.train`, resumed from its own last checkpoint if
one exists) and `search` (a mixed-precision search on a trained float model). Every task writes
its result JSON atomically when done, and returns it at once if that file already exists, so a
re-run skips finished work and a killed plan resumes. Tasks are picklable dicts, so the same
function runs in this process, in a worker process or as a Ray task.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

from lowbit.accounting import cost_report
from lowbit.api import load_model, train
from lowbit.config import RunConfig, build_config
from lowbit.data import load_dataset
from lowbit.engine.checkpoint import atomic_write_bytes
from lowbit.engine.rundir import cpu_bf16_native, git_commit, machine_info
from lowbit.schema import ConfigError
from lowbit.study.mixed import GreedySettings, greedy_bits, sensitivity

log = logging.getLogger(__name__)


def run_task(task: dict[str, Any]) -> dict[str, Any]:
    """Run one task (or read its finished result); returns the result dict."""
    out = Path(task["result"])
    if out.is_file():
        done = dict(json.loads(out.read_text()))
        _check_same(task, done, out)
        return done
    start = time.time()
    if task["kind"] == "train":
        result = _train(task)
    elif task["kind"] == "search":
        result = _search(task)
    else:
        raise ValueError(f"unknown task kind {task['kind']!r}")
    result.update(wall_s=round(time.time() - start, 1), commit=git_commit(),
                  machine=machine_info())
    write_result(task, result)
    return result


def write_result(task: dict[str, Any], result: dict[str, Any]) -> None:
    """Write a task's result JSON atomically where the task says."""
    atomic_write_bytes(Path(task["result"]), (json.dumps(result, indent=1) + "\n").encode())


def _check_same(task: dict[str, Any], done: dict[str, Any], path: Path) -> None:
    """A finished result counts only for the settings it was made with."""
    if task["kind"] == "train":  # both through today's schema: a new option at its default
        same = _normalized(done.get("config")) == build_config(base=task["config"]).to_dict()
    else:
        same = done.get("settings") == task["settings"]
    if not same:
        raise ValueError(f"{path} was made with other settings than the plan now asks for; "
                         "delete it (and its run folder) to redo it, or rename the plan")


def _normalized(config: Any) -> dict[str, Any] | None:
    """A stored run config as today's schema reads it (None if it no longer parses)."""
    try:
        return build_config(base=config).to_dict()
    except (ConfigError, TypeError, ValueError):
        return None


def _train(task: dict[str, Any]) -> dict[str, Any]:
    cfg = build_config(base=task["config"])
    asked = cfg.to_dict()  # before train() adapts it to the machine (bf16 off without AVX512-BF16)
    run_dir = Path(task["run_dir"])
    if (run_dir / "last.safetensors").is_file():
        out = train(cfg, resume=run_dir)
    else:
        (run_dir / "metrics.jsonl").unlink(missing_ok=True)  # rows of a run killed in epoch 1
        out = train(cfg, run_path=run_dir)
    model, _ = load_model(run_dir / "final.safetensors")
    cost = cost_report(model, task["input_shape"])
    return {
        **task["info"],
        "top1": out["top1"],
        "top5": out["top5"],
        "val_top1": out.get("val_top1"),
        "epochs": out["epochs"],
        "bytes": cost.bytes,
        "params": cost.params,
        "macs": cost.macs,
        "bops": cost.bops,
        "run_dir": str(run_dir),
        "config": asked,
        "trained_config": cfg.to_dict(),
    }


def _search(task: dict[str, Any]) -> dict[str, Any]:
    cfg = build_config(base=task["float_config"])
    model, _ = load_model(Path(task["float_run"]) / "final.safetensors")
    data = _held_out(cfg)
    assert data.val is not None
    settings = dict(task["settings"])
    searched, table = list(task["searched"]), dict(task["table"])
    if task["method"] == "greedy":
        greedy = GreedySettings(**settings)
        greedy.bf16 = greedy.bf16 and cpu_bf16_native()  # emulated bf16 is slower than fp32
        bits, steps = greedy_bits(model, table, searched, data.train, data.val, greedy,
                                  cfg.train.seed)
        return {"method": "greedy", "bits": bits, "steps": steps, "settings": settings}
    sens = sensitivity(model, searched, data.val, int(settings.get("eval_images", 2000)),
                       bf16=bool(settings.get("bf16", False)) and cpu_bf16_native())
    return {"method": "sensitivity", "sensitivity": sens, "settings": settings}


def _held_out(cfg: RunConfig) -> Any:
    """The float run's own train/validation split (same fraction and seed)."""
    data = load_dataset(cfg.data.name, cfg.data.data_dir, cfg.data.download)
    return data.with_validation(cfg.data.val_fraction, cfg.train.seed)
