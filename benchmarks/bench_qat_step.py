"""Each recipe's training step vs the float step, ResNet-20, batch 128, side by side in one process.

Covers every shipped recipe's per-step work (issue 13: aim <= 1.2x float in both precisions):
plain QAT W2A4 and W4A4 (uniform weights, PACT 4-bit activations), INQ 5-bit (half the weights
frozen, the recipe's after-step restore included), LBW 4-bit with the library's default
("alternating") solver and with the threshold rule the shipped 4- and 6-bit recipes use, 2-bit
exact ternary, and GDRQ's QAT stage W2A4 and W4A4 (Scale-Clip weights in groups
of 8, EMA Scale-Clip activations). Each configuration runs `--steps` SGD steps per round on
pre-made tensors, rounds interleaved; the ratio of medians is reported, for fp32 and for bf16
autocast + channels_last (the engine's fast CPU mode).

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
from torch import nn

from benchmarks.common import interleaved, make_step, median, provenance, write_result
from lowbit import quantize_model
from lowbit.models import create_model
from lowbit.quant import INQWeight

A4 = {"name": "uniform", "bits": 4, "signed": False, "clip": "learned", "clip_value": 4.0}


def gdrq(bits: int, k_w: float) -> dict[str, Any]:
    """GDRQ's QAT stage as the shipped W2A4/W4A4 rows configure it (k_a = 14, groups of 8)."""
    return {"weight": {"name": "scaleclip", "bits": bits, "k": k_w, "group_size": 8},
            "act": {"name": "scaleclip", "bits": 4, "signed": False, "k": 14.0}}


CONFIGS: dict[str, dict[str, Any] | None] = {
    "float": None,
    "qat w2a4 (uniform + PACT)": {"weight": {"name": "uniform", "bits": 2}, "act": A4},
    "qat w4a4 (uniform + PACT)": {"weight": {"name": "uniform", "bits": 4}, "act": A4},
    "inq w5 (half frozen)": {"weight": {"name": "inq", "bits": 5}},
    "lbw w4 (alternating)": {"weight": {"name": "lbw", "bits": 4, "r": 1.0}},
    "lbw w4 (threshold, as shipped)": {"weight": {"name": "lbw", "bits": 4, "method": "threshold",
                                                  "r": 1.0}},
    "lbw w2 (exact ternary)": {"weight": {"name": "ternary"}},
    "gdrq w2a4 (QAT stage)": gdrq(2, 2.0),
    "gdrq w4a4 (QAT stage)": gdrq(4, 4.0),
}


def _inq_half_frozen(model: nn.Module) -> list[tuple[nn.Parameter, INQWeight]]:
    """Freeze the largest half of every INQ layer (the recipe's first partition step)."""
    pairs = [(m.weight, m.weight_quant) for m in model.modules()
             if isinstance(getattr(m, "weight_quant", None), INQWeight)]
    for weight, q in pairs:
        q.partition(weight, 0.5)
        q.restore(weight)
    return pairs


def quantized_step(
    spec: dict[str, Any] | None, bf16: bool, batch: int, steps: int, device: str = "cpu"
) -> Callable[[], None]:
    """A warmed-up closure running `steps` SGD steps of ResNet-20 (quantized per `spec`)."""
    torch.manual_seed(0)
    model = create_model("resnet20")
    if spec is None:
        return make_step(model, bf16, batch, steps, device)
    model = quantize_model(model, **spec).model.to(device)
    pairs = _inq_half_frozen(model)
    step = make_step(model, bf16, batch, 1, device)

    def run() -> None:
        for _ in range(steps):
            step()
            for weight, q in pairs:  # INQ's after-step hook
                q.restore(weight)

    return run


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line (`argv`; None: sys.argv[1:])."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    parser.add_argument("--name", default="qat_step",
                        help="result file name (default qat_step; e.g. qat_step_gpu)")
    parser.add_argument("--configs", nargs="+", choices=list(CONFIGS), default=list(CONFIGS),
                        help="subset of configurations to time (float is always included)")
    parser.add_argument("--out-dir", type=Path, default=None,
                        help="folder for qat_step.json (default: benchmarks/results)")
    parser.add_argument("--no-write", action="store_true", help="print only (smoke runs)")
    return parser.parse_args(argv)


def measure_mode(bf16: bool, args: argparse.Namespace) -> dict[str, dict[str, float]]:
    """Median s/step and ratio vs float of every configuration, in one precision mode."""
    names = ["float", *(k for k in args.configs if k != "float")]
    fns = {k: quantized_step(CONFIGS[k], bf16, args.batch, args.steps, args.device)
           for k in names}
    times = interleaved(fns, args.repeats)
    base = median(times["float"])
    return {k: {"median_s_per_step": median(t) / args.steps, "ratio_vs_float": median(t) / base}
            for k, t in times.items()}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Measure fp32 and bf16 + channels_last; write qat_step.json unless --no-write."""
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    prov, start = provenance("bench_qat_step.py", argv), time.perf_counter()
    out: dict[str, Any] = {"benchmark": "qat_step", "device": args.device, "batch": args.batch,
                           "threads": args.threads,
                           "steps_per_round": args.steps, "repeats": args.repeats,
                           "model": "resnet20", "modes": {}}
    for mode, bf16 in (("fp32", False), ("bf16_channels_last", True)):
        out["modes"][mode] = measure_mode(bf16, args)
        for k, v in out["modes"][mode].items():
            print(f"{mode:20s} {k:28s} {v['median_s_per_step'] * 1e3:8.1f} ms/step "
                  f"{v['ratio_vs_float']:.3f}x")
    out["targets"] = {"every_recipe_max_ratio": 1.2}
    out["wall_clock_s"] = round(time.perf_counter() - start, 1)
    if not args.no_write:
        print(f"wrote {write_result(args.name, out, args.out_dir, prov)}")
    return out


if __name__ == "__main__":
    main()
