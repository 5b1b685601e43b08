"""Studies over many runs: validation sweeps (`sweep`) and the equal-size bit-width study
(`size`, `solver`, `mixed`, `knapsack`, `plan`, `configs`, `tasks`, `execute`, `report`, `cli`).
Applications on top of the library: nothing in `lowbit` outside this package imports it."""

from lowbit.study.sweep import run_sweep

__all__ = ["run_sweep"]
