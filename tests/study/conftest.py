"""A tiny study plan (small CNN, synthetic data, one epoch): seconds per run."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml


def tiny_plan(tmp: Path, **changes: Any) -> Path:
    """Write a tiny plan YAML under `tmp` (runs and results inside it) and return its path."""
    raw: dict[str, Any] = {
        "name": "tiny",
        "family": {"model": "small_cnn"},
        "bits": [1, 2, 4],
        "budgets": [{"name": "b2", "like": {"width": 0.5, "bits": 2}}],
        "seeds": [0],
        "baselines": {
            "greedy": {"tolerance": 5.0, "finetune_steps": 2, "batch_size": 32,
                       "eval_images": 64},
            "knapsack": {"anchor_bits": 4, "eval_images": 64},
        },
        "search_width": 0.5,
        "schedule": {
            "data": {"name": "synthetic", "batch_size": 32, "val_fraction": 0.25},
            "train": {"epochs": 1, "threads": 1, "progress": False},
            "optim": {"lr": 0.05},
        },
        "runs_dir": str(tmp / "runs"),
        "results_dir": str(tmp / "results"),
    }
    raw.update(changes)
    tmp.mkdir(parents=True, exist_ok=True)
    path = tmp / "plan.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


@pytest.fixture
def plan_path(tmp_path: Path) -> Path:
    return tiny_plan(tmp_path)
