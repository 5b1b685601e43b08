"""Is the data pipeline the bottleneck? ResNet-20 steps fed by BatchLoader vs. pre-made batches.

Both arms run the same training step as the engine (SGD, bf16 autocast, channels_last) on
CIFAR-10 in one process, interleaved step by step in ABBA order, so bursts of load from other
processes hit both arms alike. The "pre-made" arm replays batches that were augmented,
normalised and held in memory beforehand, so the gap between the arms is the loader's cost.
Target: ratio of the loader arm's time to the pre-made arm's <= 1.10. The time spent inside
the loader alone (fetch) is reported too: it is the least noisy measure of the same thing.

    python benchmarks/bench_loader.py --data-dir ../shared/data --steps 100

Writes benchmarks/results/loader_overhead.json (command, commit, date, machine, figures).
"""

from __future__ import annotations

import argparse
import itertools
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as `python benchmarks/bench_loader.py`: find the repo root
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch
import torch.nn.functional as F

from benchmarks.common import median, provenance, write_json
from lowbit.data import BatchLoader, load_dataset
from lowbit.errors import LowbitError
from lowbit.models import create_model

REPO = Path(__file__).resolve().parents[1]
TARGET_RATIO = 1.10
Batch = tuple[torch.Tensor, torch.Tensor]
Step = Callable[[torch.Tensor, torch.Tensor], None]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line (`argv`; None: sys.argv[1:])."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data-dir", default=None, help="folder holding cifar-10-batches-bin/ "
                   "(default: $LOWBIT_DATA)")
    p.add_argument("--steps", type=int, default=100, help="timed training steps per arm")
    p.add_argument("--warmup", type=int, default=5, help="untimed steps per arm before timing")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    p.add_argument("--note", default="", help="free text stored with the result (e.g. load)")
    p.add_argument("--out", type=Path, default=REPO / "benchmarks/results/loader_overhead.json")
    args = p.parse_args(argv)
    if args.steps < 1 or args.warmup < 0 or args.batch_size < 1 or args.threads < 1:
        p.error("--steps, --batch-size and --threads must be >= 1, --warmup >= 0")
    return args


def make_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> Step:
    """One training step exactly as `lowbit.engine.trainer.Trainer.train_step` runs it."""

    def step(x: torch.Tensor, y: torch.Tensor) -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = F.cross_entropy(model(x).float(), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def endless(loader: BatchLoader, first_epoch: int) -> Iterator[Batch]:
    """Batches across epoch boundaries, as a long run would see them."""
    for epoch in itertools.count(first_epoch):
        loader.set_epoch(epoch)
        yield from loader


def timed_step(source: Iterator[Batch], step: Step) -> tuple[float, float]:
    """(seconds to fetch the next batch, seconds to fetch it and train on it)."""
    start = time.perf_counter()
    x, y = next(source)
    fetched = time.perf_counter()
    step(x, y)
    return fetched - start, time.perf_counter() - start


def run_interleaved(loader: BatchLoader, premade: list[Batch], step: Step,
                    steps: int) -> dict[str, list[float]]:
    """Alternate single steps of the two arms (ABBA), timing each step on its own."""
    sources = {"loader": endless(loader, 0), "premade": iter(premade)}
    times: dict[str, list[float]] = {k: [] for k in
                                     ("loader_step", "loader_fetch", "premade_step")}
    for i in range(steps):
        for arm in ("loader", "premade") if i % 2 == 0 else ("premade", "loader"):
            fetch, total = timed_step(sources[arm], step)
            times[f"{arm}_step"].append(total)
            if arm == "loader":
                times["loader_fetch"].append(fetch)
        if (i + 1) % max(1, steps // 10) == 0:
            print(f"step {i + 1}/{steps}: loader {sum(times['loader_step']):.1f} s, pre-made "
                  f"{sum(times['premade_step']):.1f} s", flush=True)
    return times


def figures(times: dict[str, list[float]], args: argparse.Namespace) -> dict[str, Any]:
    """Totals, medians, the loader/pre-made ratio and throughput of both arms."""
    lo, pre = sum(times["loader_step"]), sum(times["premade_step"])
    fetch = sum(times["loader_fetch"])
    med = {k: median(v) for k, v in times.items()}
    n_images = args.steps * args.batch_size
    return {"loader_total_s": round(lo, 3), "premade_total_s": round(pre, 3),
            "ratio": round(lo / pre, 4), "target_ratio": TARGET_RATIO,
            "meets_target": lo / pre <= TARGET_RATIO,
            "ratio_of_median_steps": round(med["loader_step"] / med["premade_step"], 4),
            "loader_step_ms_median": round(1000 * med["loader_step"], 2),
            "premade_step_ms_median": round(1000 * med["premade_step"], 2),
            "loader_fetch_ms_median": round(1000 * med["loader_fetch"], 3),
            "loader_fetch_ms_mean": round(1000 * fetch / args.steps, 3),
            "loader_fetch_share_of_loader_arm": round(fetch / lo, 5),
            "images_per_s_loader_arm": round(n_images / lo, 1),
            "images_per_s_premade_arm": round(n_images / pre, 1)}


def record(args: argparse.Namespace, prov: dict[str, Any], times: dict[str, list[float]],
           epoch_steps: int, wall_s: float) -> dict[str, Any]:
    """The result file's content: how it was run, where, on what, and the figures."""
    return {"benchmark": "loader_overhead", **prov,
            "config": {"model": "resnet20", "dataset": "cifar10 (train split)",
                       "batch_size": args.batch_size, "steps": args.steps,
                       "interleaving": "per step, ABBA", "warmup_steps": args.warmup,
                       "bf16_autocast": True, "channels_last": True,
                       "optimizer": "SGD(lr=0.05, momentum=0.9, weight_decay=5e-4)",
                       "epochs": round(args.steps / epoch_steps, 3)},
            "figures": figures(times, args), "wall_clock_s": round(wall_s, 1), "note": args.note}


def main(argv: list[str] | None = None) -> int:
    """Run both arms, write the result file; returns the exit status (2: no data)."""
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    prov, started = provenance("bench_loader.py", argv), time.perf_counter()
    try:
        train = load_dataset("cifar10", args.data_dir).train
    except LowbitError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    torch.manual_seed(0)
    model = create_model("resnet20").to(memory_format=torch.channels_last).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    step = make_step(model, optimizer)
    loader = BatchLoader(train, args.batch_size, train=True, seed=0, channels_last=True)
    premade = list(itertools.islice(endless(loader, 1000), args.steps))  # materialised up front
    for source in (iter(premade), endless(loader, 3000)):  # kernel choice, allocator warm-up
        for x, y in itertools.islice(source, args.warmup):
            step(x, y)
    times = run_interleaved(loader, premade, step, args.steps)
    result = record(args, prov, times, len(loader), time.perf_counter() - started)
    write_json(args.out, result)
    f = result["figures"]
    print(f"loader {f['loader_total_s']} s, pre-made {f['premade_total_s']} s, ratio "
          f"{f['ratio']} (target <= {TARGET_RATIO}), fetch {f['loader_fetch_ms_median']} ms/batch; "
          f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
