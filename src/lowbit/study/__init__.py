"""Studies over many runs: validation sweeps (`sweep`)."""

from lowbit.study.sweep import run_sweep

__all__ = ["run_sweep"]
