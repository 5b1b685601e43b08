"""Shared test settings: one torch thread (CI has 2 cores), and the shared data location."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from support import CrashAt

torch.set_num_threads(1)


def shared_data_dir() -> Path | None:
    """The real datasets (`$LOWBIT_DATA`), or None when they are not on this machine."""
    env = os.environ.get("LOWBIT_DATA")
    return Path(env) if env and Path(env).is_dir() else None


@pytest.fixture
def data_dir() -> Path:
    path = shared_data_dir()
    if path is None:
        pytest.skip("real datasets not available: set LOWBIT_DATA to the shared data folder")
    return path


@pytest.fixture
def tiny_config():  # noqa: ANN201 - returns the factory below
    """Factory for a config dict of a seconds-long run on synthetic data."""
    return make_tiny_config


def make_tiny_config(tmp_path: Path, **train: object) -> dict:
    """A config dict for a seconds-long run on synthetic data."""
    return {
        "model": {"name": "small_cnn", "width": 0.25},
        "data": {"name": "synthetic", "batch_size": 64, "eval_batch_size": 64},
        "optim": {"lr": 0.05},
        "schedule": {"name": "cosine", "warmup_epochs": 0.5},
        "train": {"epochs": 3, "seed": 1, "progress": False, **train},
        "out_dir": str(tmp_path),
    }


@pytest.fixture
def crash_at() -> type[CrashAt]:
    return CrashAt
