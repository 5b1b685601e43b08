"""Speed of the exact LBW ternary solver against the fastest sort it could use.

The exact solver is one sort of |W| plus a few linear passes, so its cost should stay close to
the sort's (target: ratio <= 1.5). The floor is numpy's values-only sort of the same rows
(`np.sort`, the sort the solver itself uses on CPU; `torch.sort` is several times slower as it
also computes indices). Both are timed in the same process, interleaved (the order alternates
every repeat), and compared by their medians, because the machine is shared.

    python benchmarks/bench_ternary.py --per-channel-rows 100   # 1e7 and 1e6, 2 then 1 thread
    python benchmarks/bench_ternary.py --sizes 1000000 --repeats 9 --out t.json
    python benchmarks/bench_ternary.py --sizes 1000000 --repeats 1 --threads 1 --no-write  # smoke
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as `python benchmarks/bench_ternary.py`: find the repo root
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import torch

from benchmarks.common import RESULTS, median, provenance, write_json
from lowbit.quant.functional import ternary_exact

DEFAULT_OUT = RESULTS / "ternary_speed.json"


def _time(fn: Callable[[], object]) -> float:
    """Seconds one call of `fn` takes."""
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def measure(n: int, repeats: int, per_channel_rows: int = 0) -> dict[str, Any]:
    """Interleaved timings of np.sort(w) and ternary_exact(w) on N(0,1) weights."""
    threads = torch.get_num_threads()
    w = torch.randn(n, generator=torch.Generator().manual_seed(n))
    if per_channel_rows:
        w = w.reshape(per_channel_rows, -1)
    w_np = w.numpy()
    sort = lambda: np.sort(w_np, axis=-1)  # noqa: E731
    tern = lambda: ternary_exact(w, per_channel=bool(per_channel_rows))  # noqa: E731
    sort(), tern()  # warm-up: allocator and thread pool
    t_sort, t_tern = [], []
    for r in range(repeats):
        pair = (sort, tern) if r % 2 == 0 else (tern, sort)
        first, second = _time(pair[0]), _time(pair[1])
        a, b = (first, second) if r % 2 == 0 else (second, first)
        t_sort.append(a)
        t_tern.append(b)
    med_sort, med_tern = median(t_sort), median(t_tern)
    return {"n": n, "rows": per_channel_rows or 1, "threads": threads, "repeats": repeats,
            "sort_median_s": med_sort, "ternary_median_s": med_tern,
            "ratio_of_medians": med_tern / med_sort,
            "median_of_ratios": median([b / a for a, b in zip(t_sort, t_tern, strict=True)]),
            "sort_all_s": t_sort, "ternary_all_s": t_tern}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line (`argv`; None: sys.argv[1:])."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[10**7, 10**6])
    p.add_argument("--repeats", type=int, default=9)
    p.add_argument("--threads", type=int, nargs="+", default=[2, 1],
                   help="torch thread counts to measure, in turn (the first is the headline)")
    p.add_argument("--per-channel-rows", type=int, default=0,
                   help="also time the per-channel solver with this many rows (0: skip)")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    p.add_argument("--no-write", action="store_true", help="print only (smoke runs)")
    args = p.parse_args(argv)
    if args.per_channel_rows and any(n % args.per_channel_rows for n in args.sizes):
        p.error("--per-channel-rows must divide every size")
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Time every (threads, size[, rows]) case, write `--out`; returns the result."""
    args = parse_args(argv)
    start = time.perf_counter()
    figures = []
    for threads in args.threads:
        torch.set_num_threads(threads)
        figures += [measure(n, args.repeats) for n in args.sizes]
        if args.per_channel_rows:
            figures += [measure(n, args.repeats, args.per_channel_rows) for n in args.sizes]
    torch.set_num_threads(args.threads[0])  # provenance() below reports the headline count
    result = {"benchmark": "ternary_exact vs np.sort (values only)", "target_ratio": 1.5,
              **provenance("bench_ternary.py", argv),
              "wall_clock_s": time.perf_counter() - start, "figures": figures}
    if not args.no_write:
        write_json(args.out, result)
        print(f"wrote {args.out}")
    for f in figures:
        print(f"threads={f['threads']} n={f['n']:>10} rows={f['rows']:>5}  "
              f"sort {f['sort_median_s']:.4f}s  ternary {f['ternary_median_s']:.4f}s  "
              f"ratio {f['ratio_of_medians']:.2f}")
    return result


if __name__ == "__main__":
    main()
