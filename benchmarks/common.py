"""Shared benchmark plumbing: provenance of a result file, atomic writes and interleaved timing.

Every result file in `benchmarks/results/` records how it was made: the command line, the git
commit (`lowbit.engine.rundir.git_commit`, '+dirty' when the tree has changes), the date and
the machine (`lowbit.engine.rundir.machine_info` plus the load average), next to the figures.

The scripts run either way from the repository root:

    python benchmarks/bench_x.py ...        # the shim at the top of each script finds the repo
    python -m benchmarks.bench_x ...
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shlex
import statistics
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from lowbit.engine.checkpoint import atomic_write_bytes
from lowbit.engine.rundir import git_commit, machine_info

RESULTS = Path(__file__).resolve().parent / "results"


def command_line(script: str, argv: Sequence[str] | None = None) -> str:
    """How the benchmark was invoked: `python benchmarks/<script> ARGS` (shell-quoted).

    `argv` is what `main(argv)` was given; None means the process's own `sys.argv[1:]`.
    """
    args = list(sys.argv[1:] if argv is None else argv)
    return shlex.join(["python", f"benchmarks/{script}", *args])


def provenance(script: str | None = None, argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Command, commit, date and machine: what every result file records.

    Args:
        script: the benchmark's file name (e.g. "bench_qat_step.py"); None: `sys.argv[0]`'s.
        argv: the arguments `main` was given; None: `sys.argv[1:]`.
    """
    name = script or Path(sys.argv[0]).name
    machine = machine_info()
    try:
        machine["load_average"] = [round(x, 2) for x in os.getloadavg()]
    except OSError:  # not available on every platform
        machine["load_average"] = None
    return {
        "command": command_line(name, argv),
        "commit": git_commit(),
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": machine,
    }


def result_path(name: str, out_dir: str | Path | None = None) -> Path:
    """Where `write_result(name, ..., out_dir)` writes: `<out_dir or results>/<name>.json`."""
    return Path(out_dir if out_dir is not None else RESULTS) / f"{name}.json"


def write_json(path: str | Path, payload: dict[str, Any]) -> Path:
    """Write `payload` as indented JSON to `path`, atomically (temp file + rename)."""
    path = Path(path)
    atomic_write_bytes(path, (json.dumps(payload, indent=2) + "\n").encode())
    return path


def write_result(name: str, payload: dict[str, Any], out_dir: str | Path | None = None,
                 prov: dict[str, Any] | None = None) -> Path:
    """Write `{provenance, payload}` to `<out_dir or benchmarks/results>/<name>.json`.

    Args:
        name: the result's file stem (e.g. "qat_step").
        payload: the figures and configuration; its keys win over the provenance's.
        out_dir: folder to write to (default: benchmarks/results).
        prov: provenance captured earlier (e.g. at start-up); None: `provenance()` now.

    Returns:
        The path written.
    """
    return write_json(result_path(name, out_dir), {**(prov or provenance()), **payload})


def add_timing_args(p: argparse.ArgumentParser, repeats: int, out_name: str) -> None:
    """--threads (2), --repeats, --note and --out (RESULTS / out_name) of a timing benchmark."""
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=repeats)
    p.add_argument("--note", default="", help="e.g. 'smoke run on a shared, contended CPU'")
    p.add_argument("--out", type=Path, default=RESULTS / out_name)


def interleaved(fns: Mapping[str, Callable[[], object]], repeats: int) -> dict[str, list[float]]:
    """Time each function `repeats` times, round-robin, so machine noise hits all alike.

    The order alternates every round (forward, then reversed) so no function always runs
    right after the same neighbour. Returns seconds per call, keyed like `fns`.
    """
    times: dict[str, list[float]] = {k: [] for k in fns}
    keys = list(fns)
    for r in range(repeats):
        for key in keys if r % 2 == 0 else reversed(keys):
            start = time.perf_counter()
            fns[key]()
            times[key].append(time.perf_counter() - start)
    return times


def median(xs: Sequence[float]) -> float:
    """The median of a non-empty sequence."""
    return float(statistics.median(xs))


Step = Callable[[], None]


def make_step(model: nn.Module, bf16: bool, batch: int, steps: int,
              device: str = "cpu") -> Step:
    """A warmed-up closure running `steps` SGD steps on fixed random data on `device` (on a
    GPU it waits for the queued work at the end, so a timer around it sees all of it)."""
    model = model.to(device)
    if bf16:
        model = model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(batch, 3, 32, 32, generator=gen)
    x = (x.contiguous(memory_format=torch.channels_last) if bf16 else x).to(device)
    y = torch.randint(0, 10, (batch,), generator=gen).to(device)
    kind = torch.device(device).type
    ctx = (lambda: torch.autocast(kind, dtype=torch.bfloat16)) if bf16 else contextlib.nullcontext

    def run() -> None:
        for _ in range(steps):
            with ctx():
                loss = F.cross_entropy(model(x).float(), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        if kind == "cuda":
            torch.cuda.synchronize()

    run()  # warm-up (allocations, oneDNN primitive caches)
    return run


