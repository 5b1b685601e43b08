"""Run every experiment row that has no recorded result yet, resuming interrupted runs.

    python benchmarks/run_experiments.py experiments/inq experiments/lbw --data-dir ../shared/data

On a GPU, the whole table at the papers' longer budgets, as parallel processes on one GPU,
recorded apart from the CPU rows (`benchmarks/results/gpu/`, `benchmarks/checkpoints/gpu/`; each
result names the GPU in its `machine`):

    python benchmarks/run_experiments.py experiments --data-dir DATA --gpu --parallel 8

For each `experiments/**/*.yaml` given (files or folders): skip it when
`benchmarks/results/<name>.json` exists and the YAML still describes the run that made its
checkpoint (a row whose YAML changed since is stale: it runs again); resume it when its run
directory holds a `last.safetensors` from an interrupted session; otherwise start it. Runs go
one after another (or `--parallel N` at once), each through `lowbit reproduce`, so results and
checkpoints land where `make_table.py` finds them.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from lowbit.tools.reproduce import describes_checkpoint  # noqa: E402

# --gpu: the papers' longer budgets, by method (the experiment's name starts with it)
GPU_BUDGETS = {
    "inq": ["quant.epochs_per_step=10"],           # INQ trains 30+ epochs per step; 10 here
    "lbw": ["train.epochs=60"],
    "gdrq": ["quant.reshape_epochs=2", "quant.quant_epochs=28"],   # GDRQ's default schedule
    "qat": ["train.epochs=30"],
    "groupnet": ["train.epochs=40"],
}


def gpu_settings(name: str, parallel: int) -> list[str]:
    """KEY=VALUE overrides of a GPU row: the device, quiet progress, a share of the CPU cores
    for its data pipeline, and its method's longer budget."""
    method = name.split("_")[0]
    budget = [] if name.endswith("_float") else GPU_BUDGETS.get(method, [])
    threads = f"train.threads={max(1, (os.cpu_count() or 1) // parallel)}"
    return ["train.device=cuda", "train.progress=false", threads, *budget]


def gpu_overrides(name: str, parallel: int) -> list[str]:
    """`gpu_settings` as `--set` arguments."""
    return [a for kv in gpu_settings(name, parallel) for a in ("--set", kv)]


def experiments(paths: list[str]) -> list[Path]:
    found: list[Path] = []
    for p in map(Path, paths):
        found += sorted(p.rglob("*.yaml")) if p.is_dir() else [p]
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("paths", nargs="+", help="experiment YAML files or folders")
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--runs", help="folder for run directories (default: runs/experiments)")
    parser.add_argument("--gpu", action="store_true",
                        help="train on CUDA at the longer budgets; record under results/gpu/")
    parser.add_argument("--parallel", type=int, default=1, help="runs at once (GPU: 4-8)")
    parser.add_argument("--dry-run", action="store_true", help="only say what would run")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="one more override for every run (repeatable)")
    parser.add_argument("--results-dir", help="record results here (default: benchmarks/results"
                        "[/gpu])")
    parser.add_argument("--checkpoints-dir", help="record checkpoints here (default: "
                        "benchmarks/checkpoints[/gpu])")
    parser.add_argument("--logs", help="write each run's output to LOGS/<name>.log")
    parser.add_argument("--deadline", type=float, help="seconds: then stop the runs in flight "
                        "(they resume next time) and start no more")
    args = parser.parse_args(argv)
    if args.parallel < 1:
        parser.error("--parallel must be >= 1")
    for key in ("runs", "results_dir", "checkpoints_dir", "logs"):  # given: from here, not ROOT
        if getattr(args, key) is not None:
            setattr(args, key, str(Path(getattr(args, key)).resolve()))
    commands = [c for exp in experiments(args.paths) if (c := command(exp, args)) is not None]
    if args.dry_run:
        return 0
    end = time.monotonic() + args.deadline if args.deadline is not None else float("inf")
    running: Running = []
    for name, cmd in commands:
        while len(running) >= args.parallel and time.monotonic() < end:
            running = wait_one(running, end)
        if time.monotonic() >= end:
            break
        running.append((name, start(cmd, args.logs, name)))
    while running and time.monotonic() < end:
        running = wait_one(running, end)
    stop(reap(running), args.logs)
    return 0


STOPPED = "stopped at the deadline"


def start(cmd: list[str], logs: str | None, name: str) -> subprocess.Popen[bytes]:
    """Start one run from ROOT, its output to `<logs>/<name>.log` if asked."""
    if logs is None:
        return subprocess.Popen(cmd, cwd=ROOT)
    Path(logs).mkdir(parents=True, exist_ok=True)
    with (Path(logs) / f"{name}.log").open("wb") as log:  # the child keeps its own handle
        return subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)


def stop(running: Running, logs: str | None) -> None:
    """Past the deadline: end every run still going (SIGTERM, then SIGKILL after 10 s), and
    say so on stderr and at the end of its log."""
    for _, proc in running:
        proc.terminate()
    for name, proc in running:
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        print(f"{name}: {STOPPED}", file=sys.stderr)
        if logs:
            with (Path(logs) / f"{name}.log").open("a") as log:
                print(STOPPED, file=log)


def command(exp: Path, args: argparse.Namespace) -> tuple[str, list[str]] | None:
    """(name, the reproduce command) for one experiment, or None when it is recorded."""
    name = exp.stem
    sub = "gpu" if args.gpu else ""
    run_dir = Path(args.runs or "runs/experiments") / sub / name
    # relative to ROOT, where the runs start
    results = Path(args.results_dir or Path("benchmarks", "results", sub))
    checkpoints = Path(args.checkpoints_dir or Path("benchmarks", "checkpoints", sub))
    recorded = ROOT / results / f"{name}.json"
    checkpoint = ROOT / checkpoints / f"{name}.safetensors"
    if recorded.exists() and not (checkpoint.exists()
                                  and not describes_checkpoint(ROOT / exp, checkpoint)):
        print(f"skip   {name} (result recorded)")
        return None
    resume = (ROOT / run_dir / "last.safetensors").exists()
    action = "resume" if resume else "rerun " if recorded.exists() else "start "
    cmd = [sys.executable, "-m", "lowbit.cli", "reproduce", str(exp), "--record", "--data-dir",
           args.data_dir, "--run-dir", str(run_dir), *(["--resume"] if resume else []),
           "--results-dir", str(results), "--checkpoints-dir", str(checkpoints),
           *(gpu_overrides(name, args.parallel) if args.gpu else []),
           *(a for kv in args.set for a in ("--set", kv))]
    print(f"{action} {name}: {' '.join(cmd[2:])}", flush=True)
    return name, cmd


Running = list[tuple[str, "subprocess.Popen[bytes]"]]


def wait_one(running: Running, end: float = float("inf")) -> Running:
    """Wait until one run ends (report a failure) or `end` (monotonic) passes; return the
    others (all of them at `end`, less any that ended meanwhile)."""
    while time.monotonic() < end:
        if len(left := reap(running)) < len(running):
            return left
        time.sleep(1.0)
    return reap(running)


def reap(running: Running) -> Running:
    """The runs still going; each one that ended is reported if it failed."""
    left = []
    for name, proc in running:
        if proc.poll() is None:
            left.append((name, proc))
        elif proc.returncode:
            print(f"failed {name} (exit {proc.returncode})", file=sys.stderr)
    return left


if __name__ == "__main__":
    sys.exit(main())
