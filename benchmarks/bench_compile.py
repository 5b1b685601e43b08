"""torch.compile vs eager: a ResNet-20 training step, float and W2A4, side by side.

    python benchmarks/bench_compile.py --steps 5 --repeats 5
    python benchmarks/bench_compile.py --steps 1 --repeats 1 --no-write   # smoke run

For each configuration two models with the same weights are built: one run eagerly, one
through `torch.compile` (default mode; compilation happens in the warm-up, outside the timing).
Rounds are interleaved and the ratio of medians (compiled / eager) is reported per precision
mode (fp32; bf16 autocast + channels_last). Also records the graph breaks dynamo reports for
the quantized model (`torch._dynamo.explain`). Writes benchmarks/results/compile_step.json.
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as `python benchmarks/bench_compile.py`: find the repo root
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from benchmarks.common import interleaved, make_step, median, provenance, write_result
from lowbit import quantize_model
from lowbit.models import create_model

A4 = {"name": "uniform", "bits": 4, "signed": False, "clip": "learned", "clip_value": 4.0}
CONFIGS: dict[str, dict[str, Any] | None] = {
    "float": None,
    "w2a4 (ternary + uniform act)": {"weight": {"name": "ternary"}, "act": A4},
}


def build(spec: dict[str, Any] | None) -> torch.nn.Module:
    torch.manual_seed(0)
    model = create_model("resnet20")
    return quantize_model(model, **spec).model if spec is not None else model


def graph_breaks(model: torch.nn.Module) -> int:
    """Graph breaks dynamo finds in one forward of `model` (eval mode, one batch)."""
    torch._dynamo.reset()
    explained = torch._dynamo.explain(copy.deepcopy(model).eval())(torch.randn(2, 3, 32, 32))
    return int(explained.graph_break_count)


def measure(spec: dict[str, Any] | None, bf16: bool, args: argparse.Namespace) -> dict[str, Any]:
    eager = build(spec)
    compiled = torch.compile(copy.deepcopy(eager))
    fns = {"eager": make_step(eager, bf16, args.batch, args.steps),
           "compiled": make_step(compiled, bf16, args.batch, args.steps)}
    times = interleaved(fns, args.repeats)
    e, c = median(times["eager"]), median(times["compiled"])
    return {"eager_s_per_step": e / args.steps, "compiled_s_per_step": c / args.steps,
            "compiled_over_eager": c / e}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-write", action="store_true", help="print only (smoke runs)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    prov, start = provenance("bench_compile.py", argv), time.perf_counter()
    out: dict[str, Any] = {"benchmark": "compile_step", "batch": args.batch, "model": "resnet20",
                           "graph_breaks": {k: graph_breaks(build(v)) for k, v in CONFIGS.items()},
                           "modes": {}}
    for mode, bf16 in (("fp32", False), ("bf16_channels_last", True)):
        out["modes"][mode] = {}
        for name, spec in CONFIGS.items():
            try:
                row = measure(spec, bf16, args)
            except Exception as exc:  # noqa: BLE001 - a compile failure is a result to record
                row = {"error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"}
            out["modes"][mode][name] = row
            print(f"{mode:20s} {name:30s} {row}")
    out["wall_clock_s"] = round(time.perf_counter() - start, 1)
    if not args.no_write:
        print(f"wrote {write_result('compile_step', out, None, prov)}")
    return out


if __name__ == "__main__":
    main()
