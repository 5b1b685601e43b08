"""W4A4 ResNet-20 QAT training step: lowbit vs Brevitas, side by side in one process.

Both models start from the same float ResNet-20 (same seed, weights copied). Every Conv2d but
the first is quantized, the final Linear stays float:

* lowbit: `quantize_model(model, weight=uniform 4-bit, act=uniform 4-bit unsigned with a
  learned PACT clip initialised at 4.0)`; per-tensor weight scale from max|W|, levels -7..7;
  each quantized conv's input quantized to {0..15} * clip/15.
* Brevitas: `brevitas.nn.QuantConv2d(..., weight_quant=Int8WeightPerTensorFloat,
  weight_bit_width=4, input_quant=Uint8ActPerTensorFloatMaxInit, input_bit_width=4,
  input_max_val=4.0)`: the same grids (narrow signed weights from max|W|; unsigned inputs
  with a learned per-tensor clip initialised at 4.0). `--brevitas-act stats` uses
  `Uint8ActPerTensorFloat` instead, whose scale comes from a running 99.999th percentile for
  its first 300 training steps (so short runs time that calibration phase, not steady state).

The float model's step is timed alongside for reference. Configurations run `--steps` SGD
steps per round, rounds interleaved; medians are compared (target: lowbit / Brevitas < 1.0).
Brevitas is not a lowbit dependency: run this from a separate benchmark venv,

    python3 -m venv .bench-venv && .bench-venv/bin/pip install torch==2.13.0 brevitas \\
        && .bench-venv/bin/pip install -e .
    .bench-venv/bin/python benchmarks/bench_brevitas.py --steps 10 --repeats 5 --bf16
    .bench-venv/bin/python -m benchmarks.bench_brevitas --steps 1 --repeats 1 --threads 1 \\
        --out-dir /tmp                                             # smoke run

Writes benchmarks/results/brevitas.json (command, commit, date, machine, versions, figures).
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import Any

if __package__ in (None, ""):  # run as `python benchmarks/bench_brevitas.py`: find the repo root
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch
from torch import nn

from benchmarks.common import interleaved, make_step, median, provenance, write_result
from lowbit import quantize_model
from lowbit.models import create_model

VENV_HINT = ("python3 -m venv .bench-venv && .bench-venv/bin/pip install torch==2.13.0 brevitas "
             "&& .bench-venv/bin/pip install -e .")
TARGET_RATIO = 1.0
CLIP_INIT = 4.0
LOWBIT_SPEC: dict[str, Any] = {
    "weight": {"name": "uniform", "bits": 4},
    "act": {"name": "uniform", "bits": 4, "signed": False, "clip": "learned",
            "clip_value": CLIP_INIT},
}


def import_brevitas() -> ModuleType:
    """The brevitas package; exits with a one-line hint when it is not installed."""
    try:
        import brevitas
        import brevitas.nn  # noqa: F401  (QuantConv2d)
        import brevitas.quant  # noqa: F401  (quantizer classes)
    except ImportError as exc:
        sys.exit(f"error: brevitas is not importable ({exc}); it is not a lowbit dependency, run "
                 f"this from the benchmark venv: {VENV_HINT}")
    return brevitas


def float_model() -> nn.Module:
    """The shared starting point: a float ResNet-20 with seed-0 weights."""
    torch.manual_seed(0)
    return create_model("resnet20")


def lowbit_model(base: nn.Module) -> nn.Module:
    """lowbit W4A4 (first conv and last linear float, the default rules)."""
    return quantize_model(base, **LOWBIT_SPEC).model


def brevitas_conv(conv: nn.Conv2d, act: str) -> nn.Module:
    """A brevitas QuantConv2d twin of `conv`: 4-bit per-tensor weights and unsigned 4-bit input."""
    from brevitas.nn import QuantConv2d
    from brevitas.quant import (
        Int8WeightPerTensorFloat,
        Uint8ActPerTensorFloat,
        Uint8ActPerTensorFloatMaxInit,
    )

    act_kwargs: dict[str, Any] = (
        {"input_quant": Uint8ActPerTensorFloatMaxInit, "input_max_val": CLIP_INIT}
        if act == "maxinit" else {"input_quant": Uint8ActPerTensorFloat})
    q = QuantConv2d(conv.in_channels, conv.out_channels, conv.kernel_size, stride=conv.stride,
                    padding=conv.padding, dilation=conv.dilation, groups=conv.groups,
                    bias=conv.bias is not None, weight_quant=Int8WeightPerTensorFloat,
                    weight_bit_width=4, input_bit_width=4, **act_kwargs)
    with torch.no_grad():
        q.weight.copy_(conv.weight)
        if conv.bias is not None:
            q.bias.copy_(conv.bias)
    return q


def brevitas_model(base: nn.Module, act: str) -> tuple[nn.Module, int]:
    """A copy of `base` with every Conv2d but the first swapped for brevitas; (model, count)."""
    model = copy.deepcopy(base)
    convs = [(name, m) for name, m in model.named_modules() if type(m) is nn.Conv2d]
    for name, conv in convs[1:]:
        parent_name, _, attr = name.rpartition(".")
        setattr(model.get_submodule(parent_name), attr, brevitas_conv(conv, act))
    return model, len(convs) - 1


def check_same_start(models: list[nn.Module]) -> None:
    """Raise unless every model holds the same conv/linear weights (in module order)."""
    def weights(m: nn.Module) -> list[torch.Tensor]:
        return [x.weight for x in m.modules() if isinstance(x, (nn.Conv2d, nn.Linear))]

    first = weights(models[0])
    for other in models[1:]:
        ws = weights(other)
        same = len(ws) == len(first) and all(
            torch.equal(a, b) for a, b in zip(first, ws, strict=True))
        if not same:
            raise RuntimeError("the models do not start from the same weights")


def measure_mode(bf16: bool, args: argparse.Namespace) -> dict[str, Any]:
    """Median ms/step of float, lowbit and brevitas in one precision mode, and the ratios."""
    base = float_model()
    models = {"float": copy.deepcopy(base), "lowbit": lowbit_model(base),
              "brevitas": brevitas_model(base, args.brevitas_act)[0]}
    check_same_start(list(models.values()))
    try:
        brev = make_step(models.pop("brevitas"), bf16, args.batch, args.steps)
    except Exception as exc:  # report e.g. missing bf16 support, don't crash
        return {"brevitas_error": f"{type(exc).__name__}: {exc}".splitlines()[0]}
    fns = {k: make_step(m, bf16, args.batch, args.steps) for k, m in models.items()}
    fns["brevitas"] = brev
    ms = {k: 1e3 * median(t) / args.steps for k, t in interleaved(fns, args.repeats).items()}
    return {"float_ms_per_step": ms["float"], "lowbit_ms_per_step": ms["lowbit"],
            "brevitas_ms_per_step": ms["brevitas"],
            "ratio_lowbit_over_brevitas": ms["lowbit"] / ms["brevitas"],
            "lowbit_over_float": ms["lowbit"] / ms["float"],
            "brevitas_over_float": ms["brevitas"] / ms["float"]}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line (`argv`; None: sys.argv[1:])."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=10, help="SGD steps per timed round")
    p.add_argument("--repeats", type=int, default=5, help="interleaved rounds")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    p.add_argument("--bf16", action="store_true", help="also time bf16 autocast + channels_last")
    p.add_argument("--brevitas-act", choices=("maxinit", "stats"), default="maxinit",
                   help="maxinit: Uint8ActPerTensorFloatMaxInit (learned clip from 4.0, like "
                        "lowbit's PACT); stats: Uint8ActPerTensorFloat (percentile calibration)")
    p.add_argument("--out-dir", type=Path, default=None,
                   help="folder for brevitas.json (default: benchmarks/results)")
    p.add_argument("--no-write", action="store_true", help="print only (smoke runs)")
    args = p.parse_args(argv)
    if min(args.steps, args.repeats, args.batch, args.threads) < 1:
        p.error("--steps, --repeats, --batch and --threads must be >= 1")
    return args


def report(mode: str, m: dict[str, Any]) -> None:
    """Print one mode's figures on one line."""
    if "brevitas_error" in m:
        print(f"{mode:20s} brevitas failed: {m['brevitas_error']}")
        return
    print(f"{mode:20s} float {m['float_ms_per_step']:7.1f}  lowbit {m['lowbit_ms_per_step']:7.1f}"
          f"  brevitas {m['brevitas_ms_per_step']:7.1f} ms/step   lowbit/brevitas "
          f"{m['ratio_lowbit_over_brevitas']:.3f}x (target < {TARGET_RATIO})")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Time the modes, print them, write brevitas.json unless --no-write; returns the result."""
    args = parse_args(argv)
    brevitas = import_brevitas()
    torch.set_num_threads(args.threads)
    prov, start = provenance("bench_brevitas.py", argv), time.perf_counter()
    _, n_quant = brevitas_model(float_model(), args.brevitas_act)
    out: dict[str, Any] = {
        "benchmark": "brevitas", "brevitas_version": brevitas.__version__,
        "target_ratio": TARGET_RATIO,
        "config": {"model": "resnet20", "batch": args.batch, "steps_per_round": args.steps,
                   "repeats": args.repeats, "quantized_convs": n_quant,
                   "lowbit": LOWBIT_SPEC, "brevitas_input_quant": args.brevitas_act},
        "modes": {}}
    for mode, bf16 in (("fp32", False), ("bf16_channels_last", True))[:1 + args.bf16]:
        out["modes"][mode] = measure_mode(bf16, args)
        report(mode, out["modes"][mode])
    out["wall_clock_s"] = round(time.perf_counter() - start, 1)
    if not args.no_write:
        print(f"wrote {write_result('brevitas', out, args.out_dir, prov)}")
    return out


if __name__ == "__main__":
    main()
