"""Ray executor (optional extra `lowbit[ray]`): every study task is one Ray task.

`address=None` starts (or joins) a local Ray instance; `address="auto"` or `"ray://host:port"`
joins an existing cluster. Each task asks for `cpus_per_task` CPUs, so Ray runs as many at once
as the cluster has room for; results come back in task order. Workers need lowbit installed,
the dataset (`$LOWBIT_DATA`) and, for a killed run to resume from its checkpoint on another
node, the plan's `runs_dir` on shared storage; result files are also written by the driver
(`execute.dispatch`), so finished runs are skipped on a re-run either way.
"""

from __future__ import annotations

from typing import Any

import ray

from lowbit.study.tasks import run_task


class RayExecutor:
    """Callable: a list of tasks -> their results, each task run remotely."""

    def __init__(self, address: str | None = None, cpus_per_task: float = 1.0) -> None:
        self.address, self.cpus_per_task = address, cpus_per_task

    def __call__(self, tasks: list[dict[str, Any]]) -> list[dict[str, Any]]:
        if not tasks:
            return []
        if not ray.is_initialized():
            ray.init(address=self.address, include_dashboard=False, log_to_driver=False)
        remote = ray.remote(num_cpus=self.cpus_per_task)(run_task)
        return list(ray.get([remote.remote(t) for t in tasks]))
