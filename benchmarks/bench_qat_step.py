"""QAT training step vs float training step, ResNet-20, batch 128, side by side in one process.

Targets (issue 3): weight-only QAT <= 1.15x the float step, W2A4 <= 1.4x. Each configuration
runs `--steps` SGD steps per round on pre-made tensors, rounds interleaved; the ratio of medians
is reported, for fp32 and for bf16 autocast + channels_last (the engine's fast CPU mode).

    python benchmarks/bench_qat_step.py --steps 10 --repeats 5
"""

from __future__ import annotations

import argparse
import contextlib
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from benchmarks.common import interleaved, median, write_result
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


def make_step(
    spec: dict[str, Any] | None, bf16: bool, batch: int, steps: int
) -> Callable[[], None]:
    torch.manual_seed(0)
    model = create_model("resnet20")
    if spec is not None:
        model = quantize_model(model, **spec).model
    if bf16:
        model = model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x = torch.randn(batch, 3, 32, 32)
    x = x.contiguous(memory_format=torch.channels_last) if bf16 else x
    y = torch.randint(0, 10, (batch,))
    ctx = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if bf16 else contextlib.nullcontext

    def run() -> None:
        for _ in range(steps):
            with ctx():
                loss = F.cross_entropy(model(x).float(), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

    run()  # warm-up (allocations, oneDNN primitive caches)
    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    out: dict[str, Any] = {
        "batch": args.batch,
        "steps_per_round": args.steps,
        "repeats": args.repeats,
        "model": "resnet20",
        "modes": {},
    }
    for mode, bf16 in (("fp32", False), ("bf16_channels_last", True)):
        fns = {k: make_step(v, bf16, args.batch, args.steps) for k, v in CONFIGS.items()}
        times = interleaved(fns, args.repeats)
        base = median(times["float"])
        out["modes"][mode] = {
            k: {"median_s_per_step": median(t) / args.steps, "ratio_vs_float": median(t) / base}
            for k, t in times.items()
        }
        for k, v in out["modes"][mode].items():
            print(
                f"{mode:20s} {k:34s} {v['median_s_per_step'] * 1e3:8.1f} ms/step "
                f"{v['ratio_vs_float']:.3f}x"
            )
    out["targets"] = {"weight_only_max_ratio": 1.15, "w2a4_max_ratio": 1.4}
    print(write_result("qat_step", out))


if __name__ == "__main__":
    main()
