"""Hyper-parameter sweeps on a validation split: one run per value, the best value by val top-1.

    lowbit sweep --config experiments/lbw/lbw_w4_resnet20_cifar10.yaml --param quant.r \\
        --values 0.4 0.5 0.6 0.75 --set quant.solver=threshold --set train.epochs=5

Every run holds out `data.val_fraction` of the training images (default 0.1 when the config sets
none), so the choice never looks at the test set; test accuracy is recorded too, for reference.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import yaml

from lowbit.api import train
from lowbit.build import load_run
from lowbit.engine.checkpoint import atomic_write_bytes
from lowbit.engine.rundir import git_commit, machine_info
from lowbit.schema import ConfigError

log = logging.getLogger(__name__)


def run_sweep(
    config_file: str | None,
    param: str,
    values: list[str],
    overrides: list[str],
    out_dir: str | Path,
    val_fraction: float = 0.1,
) -> dict[str, Any]:
    """Train once per value of `param` (dotted key); returns and writes the summary JSON."""
    if not values:
        raise ConfigError("--values needs at least one value")
    out_dir = Path(out_dir)
    rows = []
    for raw in values:
        value = yaml.safe_load(raw)
        extra = [*overrides, f"{param}={raw}"]
        run = load_run(config_file=config_file, overrides=extra)
        if run.cfg.data.val_fraction == 0:
            run.cfg.data.val_fraction = val_fraction
        log.info("sweep %s=%s", param, raw)
        result = train(run, run_path=out_dir / f"{param}={raw}")
        rows.append(
            {
                "value": value,
                "val_top1": result["val_top1"],
                "test_top1": result["top1"],
                "epochs": result["epochs"],
                "run_dir": result["run_dir"],
            }
        )
    best = max(rows, key=lambda r: r["val_top1"])
    summary = {
        "config": config_file,
        "param": param,
        "overrides": overrides,
        "rows": rows,
        "best_value": best["value"],
        "selected_by": "val_top1",
        "commit": git_commit(),
        "machine": machine_info(),
    }
    atomic_write_bytes(out_dir / "sweep.json", (json.dumps(summary, indent=2) + "\n").encode())
    return summary
