"""QAT training step vs float training step, ResNet-20, batch 128, side by side in one process.

Targets (issue 3): weight-only QAT <= 1.15x the float step, W2A4 <= 1.4x. Each configuration
runs `--steps` SGD steps per round on pre-made tensors, rounds interleaved; the ratio of medians
is reported, for fp32 and for bf16 autocast + channels_last (the engine's fast CPU mode).

    python benchmarks/bench_qat_step.py --steps 10 --repeats 5
    python -m benchmarks.bench_qat_step --steps 1 --repeats 1 --no-write   # smoke run

Writes benchmarks/results/qat_step.json (command, commit, date, machine, figures).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as `python benchmarks/bench_qat_step.py`: find the repo root
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from benchmarks.common import interleaved, make_step, median, provenance, write_result
from lowbit import quantize_model
from lowbit.models import create_model

W2 = {"name": "ternary"}
A4 = {"name": "uniform", "bits": 4, "signed": False, "clip": "learned", "clip_value": 4.0}
CONFIGS: dict[str, dict[str, Any] | None] = {
    "float": None,
    "w2 (ternary exact) weight-only": {"weight": W2},
    "w4 (pow2) weight-only": {"weight": {"name": "pow2", "bits": 4}},
    "w4 (uniform) weight-only": {"weight": {"name": "uniform", "bits": 4}},
    "w2a4 (ternary + uniform act)": {"weight": W2, "act": A4},
    "w4a4 (uniform)": {"weight": {"name": "uniform", "bits": 4}, "act": A4},
}


def quantized_step(
    spec: dict[str, Any] | None, bf16: bool, batch: int, steps: int
) -> Callable[[], None]:
    """A warmed-up closure running `steps` SGD steps of ResNet-20 (quantized per `spec`)."""
    torch.manual_seed(0)
    model = create_model("resnet20")
    if spec is not None:
        model = quantize_model(model, **spec).model
    return make_step(model, bf16, batch, steps)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line (`argv`; None: sys.argv[1:])."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out-dir", type=Path, default=None,
                        help="folder for qat_step.json (default: benchmarks/results)")
    parser.add_argument("--no-write", action="store_true", help="print only (smoke runs)")
    return parser.parse_args(argv)


def measure_mode(bf16: bool, args: argparse.Namespace) -> dict[str, dict[str, float]]:
    """Median s/step and ratio vs float of every configuration, in one precision mode."""
    fns = {k: quantized_step(v, bf16, args.batch, args.steps) for k, v in CONFIGS.items()}
    times = interleaved(fns, args.repeats)
    base = median(times["float"])
    return {k: {"median_s_per_step": median(t) / args.steps, "ratio_vs_float": median(t) / base}
            for k, t in times.items()}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Measure fp32 and bf16 + channels_last; write qat_step.json unless --no-write."""
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    prov, start = provenance("bench_qat_step.py", argv), time.perf_counter()
    out: dict[str, Any] = {"benchmark": "qat_step", "batch": args.batch,
                           "steps_per_round": args.steps, "repeats": args.repeats,
                           "model": "resnet20", "modes": {}}
    for mode, bf16 in (("fp32", False), ("bf16_channels_last", True)):
        out["modes"][mode] = measure_mode(bf16, args)
        for k, v in out["modes"][mode].items():
            print(f"{mode:20s} {k:34s} {v['median_s_per_step'] * 1e3:8.1f} ms/step "
                  f"{v['ratio_vs_float']:.3f}x")
    out["targets"] = {"weight_only_max_ratio": 1.15, "w2a4_max_ratio": 1.4}
    out["wall_clock_s"] = round(time.perf_counter() - start, 1)
    if not args.no_write:
        print(f"wrote {write_result('qat_step', out, args.out_dir, prov)}")
    return out


if __name__ == "__main__":
    main()
