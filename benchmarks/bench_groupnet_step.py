"""Group-Net training step vs the float step, ResNet-20, batch 128, side by side in one process.

K bases cost about K float steps; this measures how close, to size the CPU budgets of
`experiments/groupnet/`. Configurations run `--steps` SGD steps per round on pre-made tensors,
rounds interleaved; ratio of medians, in bf16 autocast + channels_last (the engine's fast CPU
mode; use --fp32 for float32).

    python benchmarks/bench_groupnet_step.py --threads 1 --steps 2 --repeats 3

Writes benchmarks/results/groupnet_step.json (command, commit, date, machine, figures).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as `python benchmarks/bench_groupnet_step.py`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from benchmarks.common import interleaved, make_step, median, provenance, write_result
from lowbit.groupnet import GroupNetSpec, expand
from lowbit.models import create_model

CONFIGS: dict[str, GroupNetSpec | None] = {
    "float": None,
    "v1 K=1 W1A4": GroupNetSpec(structure="v1", bases=1, act_bits=4),
    "v1 K=3 W1A4": GroupNetSpec(structure="v1", bases=3, act_bits=4),
    "v1 K=5 W1A4": GroupNetSpec(structure="v1", bases=5, act_bits=4),
    "v1 K=5 W1A1": GroupNetSpec(structure="v1", bases=5, act_bits=1),
    "layerwise K=5 W1A4": GroupNetSpec(structure="layerwise", bases=5, act_bits=4),
}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    parser.add_argument("--name", default="groupnet_step", help="result file name")
    parser.add_argument("--fp32", action="store_true", help="float32 instead of bf16")
    parser.add_argument("--only", nargs="*", default=None, help="configuration names to run")
    parser.add_argument("--out-dir", type=Path, default=None)
    parser.add_argument("--no-write", action="store_true", help="print only (smoke runs)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Measure every configuration against float; write groupnet_step.json unless --no-write."""
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    prov, start = provenance("bench_groupnet_step.py", argv), time.perf_counter()
    names = ["float", *[n for n in CONFIGS if n != "float" and (not args.only or n in args.only)]]
    fns = {}
    for name in names:
        torch.manual_seed(0)
        model = create_model("resnet20")
        spec = CONFIGS[name]
        fns[name] = make_step(model if spec is None else expand(model, spec), not args.fp32,
                              args.batch, args.steps, args.device)
    times = interleaved(fns, args.repeats)
    base = median(times["float"])
    figures = {k: {"median_s_per_step": median(t) / args.steps, "ratio_vs_float": median(t) / base}
               for k, t in times.items()}
    for k, v in figures.items():
        print(f"{k:22s} {v['median_s_per_step'] * 1e3:9.1f} ms/step {v['ratio_vs_float']:6.2f}x")
    out = {"benchmark": "groupnet_step", "device": args.device, "model": "resnet20",
           "batch": args.batch,
           "precision": "fp32" if args.fp32 else "bf16_channels_last", "threads": args.threads,
           "steps_per_round": args.steps, "repeats": args.repeats, "figures": figures,
           "wall_clock_s": round(time.perf_counter() - start, 1)}
    if not args.no_write:
        print(f"wrote {write_result(args.name, out, args.out_dir, prov)}")
    return out


if __name__ == "__main__":
    main()
