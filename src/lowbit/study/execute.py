"""Run a study plan in three stages, each a batch of independent tasks for an executor:

1. the float reference runs and every uniform-bits run;
2. the mixed-precision searches on the float runs (greedy, sensitivity);
3. the mixed runs, whose bits tables and widths come from stage 2.

Executors: `local` (in this process, or `workers` > 1 spawned processes) and `ray` (each task
a Ray task on the cluster at `address`, or on a local instance). Each task trains with its own
seed and thread count, so results do not depend on the executor.
"""

from __future__ import annotations

import importlib
import json
import logging
import multiprocessing
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lowbit.study.configs import run_config
from lowbit.study.knapsack import monotone_in_bits, solve_knapsack
from lowbit.study.plan import Plan, Run, describe, expand
from lowbit.study.size import (
    build_meta,
    compute_layers,
    depthwise_names,
    full_table,
    layer_bits,
    table_size,
)
from lowbit.study.solver import solve_width
from lowbit.study.tasks import run_task, write_result

log = logging.getLogger(__name__)

Executor = Callable[[list[dict[str, Any]]], list[dict[str, Any]]]


def make_executor(kind: str = "local", workers: int = 1, address: str | None = None,
                  cpus_per_task: float = 1.0) -> Executor:
    """A function that runs a list of tasks and returns their results in order."""
    if kind == "local":
        return lambda tasks: _local(tasks, workers)
    if kind == "ray":
        ray_exec = importlib.import_module("lowbit.study.ray_executor")
        return ray_exec.RayExecutor(address, cpus_per_task)  # type: ignore[no-any-return]
    raise ValueError(f"unknown executor {kind!r}; choose local or ray")


def _local(tasks: list[dict[str, Any]], workers: int) -> list[dict[str, Any]]:
    if workers <= 1 or len(tasks) <= 1:
        return [run_task(t) for t in tasks]
    with multiprocessing.get_context("spawn").Pool(min(workers, len(tasks))) as pool:
        return pool.map(run_task, tasks, chunksize=1)


def run_plan(plan: Plan, executor: Executor) -> list[dict[str, Any]]:
    """Run (or resume) every run of `plan`; returns the result of each run, plan order."""
    runs = expand(plan)
    first = [r for r in runs if r.kind in ("float", "uniform")]
    results = dict(zip([r.id for r in first],
                       dispatch(executor, [train_task(plan, r) for r in first]), strict=True))
    mixed = [r for r in runs if r.kind in ("greedy", "knapsack")]
    searches = search_tasks(plan, mixed)
    found = dict(zip(searches, dispatch(executor, list(searches.values())), strict=True))
    for run in mixed:
        resolve_mixed(plan, run, found)
    results.update(zip([r.id for r in mixed],
                       dispatch(executor, [train_task(plan, r) for r in mixed]), strict=True))
    return [results[r.id] for r in runs]


def dispatch(executor: Executor, tasks: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Results of `tasks`: finished ones read here, the others sent to `executor`; every
    result is also written here, so a cluster without shared storage still skips them next
    time (resuming a killed run from its checkpoint needs the run folders shared, though)."""
    finished = [Path(t["result"]).is_file() for t in tasks]
    fresh = iter(executor([t for t, done in zip(tasks, finished, strict=True) if not done]))
    out = []
    for task, done in zip(tasks, finished, strict=True):
        result = run_task(task) if done else next(fresh)
        if not Path(task["result"]).is_file():
            write_result(task, result)
        out.append(result)
    return out


def train_task(plan: Plan, run: Run) -> dict[str, Any]:
    """The task that trains `run` (width and table resolved)."""
    assert run.width is not None
    depthwise = depthwise_names(build_meta(plan.factory, run.width))
    config = run_config(plan.raw["family"], plan.raw["schedule"], run.width, run.seed,
                        run.table, run.id, depthwise)
    info = {"id": run.id, "kind": run.kind, "budget": run.budget, "target_bytes": run.target,
            "bits": run.bits, "width": run.width, "seed": run.seed, "planned_bytes": run.size,
            "table": run.table, **run.extra}
    return {"kind": "train", "id": run.id, "config": config, "info": info,
            "run_dir": str(plan.runs_dir / run.id), "input_shape": list(plan.input_shape),
            "result": str(plan.results_dir / "runs" / f"{run.id}.json")}


def search_tasks(plan: Plan, mixed: list[Run]) -> dict[str, dict[str, Any]]:
    """One search task per (method, seed) the mixed runs need, keyed by its result name."""
    tasks = {}
    for run in mixed:
        method = "greedy" if run.kind == "greedy" else "sensitivity"
        key = f"{method}-s{run.seed}"
        float_run = Run(f"float-s{run.seed}", "float", run.seed,
                        width=float(plan.raw.get("search_width", 1.0)))
        model = build_meta(plan.factory, float_run.width or 1.0)
        table = full_table(model, 8, plan.first_last_bits)
        float_task = train_task(plan, float_run)
        tasks[key] = {"kind": "search", "id": key, "method": method,
                      "settings": plan.baseline(run.kind), "searched": _searched(model),
                      "table": table, "float_config": float_task["config"],
                      "float_run": float_task["run_dir"],
                      "result": str(plan.results_dir / f"search-{key}.json")}
    return tasks


def load_search(plan: Plan, run: Run) -> dict[str, Any] | None:
    """The finished search result a mixed run needs, or None if it has not run yet."""
    method = "greedy" if run.kind == "greedy" else "sensitivity"
    path = plan.results_dir / f"search-{method}-s{run.seed}.json"
    return json.loads(path.read_text()) if path.is_file() else None


def resolve_mixed(plan: Plan, run: Run, found: dict[str, dict[str, Any]]) -> Run:
    """Fill a mixed run's table, width and size from its search result."""
    key = f"{'greedy' if run.kind == 'greedy' else 'sensitivity'}-s{run.seed}"
    result, target = found[key], float(run.target or 0)
    if run.kind == "greedy":
        bits = {k: int(v) for k, v in result["bits"].items()}
        solved = solve_width(plan.factory, bits, target, plan.first_last_bits)
        run.width, run.extra = solved.width, {"solver_step": solved.step}
        return describe(plan, run, bits)
    anchor = int((plan.baseline("knapsack") or {}).get("anchor_bits", 4))
    run.width = solve_width(plan.factory, anchor, target, plan.first_last_bits).width
    model = build_meta(plan.factory, run.width)
    sens = monotone_in_bits({name: {int(b): float(v) for b, v in per.items()}
                             for name, per in result["sensitivity"].items()})
    layers = [c for c in compute_layers(model) if c.name in sens]
    costs = {c.name: {b: layer_bits(c, b) for b in sens[c.name]} for c in layers}
    table = full_table(model, anchor, plan.first_last_bits)
    fixed = table_size(model, table).total * 8 - sum(layer_bits(c, anchor) for c in layers)
    picked = solve_knapsack(costs, sens, int(target * 8 - fixed))
    run.extra = {"anchor_bits": anchor, "knapsack_exact": picked.exact,
                 "knapsack_cost": picked.cost}
    return describe(plan, run, {**table, **picked.bits})


def _searched(model: Any) -> list[str]:
    """The layers the mixed searches choose bits for: all but the first and the last."""
    return [c.name for c in compute_layers(model)][1:-1]


def resolve_pending(plan: Plan, runs: list[Run]) -> list[Run]:
    """Runs with every mixed run whose search has finished resolved (for --dry-run)."""
    for run in runs:
        if run.kind in ("greedy", "knapsack") and (found := load_search(plan, run)):
            key = f"{'greedy' if run.kind == 'greedy' else 'sensitivity'}-s{run.seed}"
            resolve_mixed(plan, run, {key: found})
    return runs


def result_files(plan: Plan) -> list[Path]:
    """The finished run results of a plan."""
    return sorted((plan.results_dir / "runs").glob("*.json"))
