"""Run every experiment row that has no recorded result yet, resuming interrupted runs.

    python benchmarks/run_experiments.py experiments/inq experiments/lbw --data-dir ../shared/data

For each `experiments/**/*.yaml` given (files or folders): skip it when
`benchmarks/results/<name>.json` exists; resume it when its run directory holds a
`last.safetensors` from an interrupted session; otherwise start it. Runs go one after another
(the machine has 2 cores), each through `lowbit reproduce`, so results and checkpoints land where
`make_table.py` finds them.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def experiments(paths: list[str]) -> list[Path]:
    found: list[Path] = []
    for p in map(Path, paths):
        found += sorted(p.rglob("*.yaml")) if p.is_dir() else [p]
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("paths", nargs="+", help="experiment YAML files or folders")
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--runs", default="runs/experiments", help="folder for run directories")
    parser.add_argument("--dry-run", action="store_true", help="only say what would run")
    args = parser.parse_args(argv)
    for exp in experiments(args.paths):
        name = exp.stem
        run_dir = Path(args.runs) / name
        if (ROOT / "benchmarks" / "results" / f"{name}.json").exists():
            print(f"skip   {name} (result recorded)")
            continue
        resume = (run_dir / "last.safetensors").exists()
        cmd = [sys.executable, "-m", "lowbit.cli", "reproduce", str(exp), "--record", "--data-dir",
               args.data_dir, "--run-dir", str(run_dir), *(["--resume"] if resume else [])]
        print(f"{'resume' if resume else 'start '} {name}: {' '.join(cmd[2:])}", flush=True)
        if not args.dry_run and subprocess.run(cmd, cwd=ROOT).returncode != 0:
            print(f"failed {name}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
