"""Inference cost of what users keep in PyTorch: eval-mode forward of each quantized model vs
the float model, side by side in one process.

For each checkpoint three forms run against the committed float ResNet-20, interleaved, fp32,
same thread count, under `torch.inference_mode()`:
- "fake-quant": the checkpoint as loaded (`lowbit.load_model`), eval mode: frozen weights are
  quantized once (the eval-mode weight cache), activation quantizers stay fake-quant ops;
- "packed": the `.lowbit` file written from it and loaded back (`load_packed`: decoded weights);
- "integer": the integer reference path (`lowbit.export.integer.to_integer`): integer codes and
  one rescale per channel (XNOR + popcount for binary layers on 1-bit inputs).
Every form's logits are checked against the fake-quant model's first (top-1 identical on the
batch). The figure is median(form) / median(float): aim <= 1.05x for weight-only models, and the
integer path below 1x. The integer path (oneDNN int8 kernels where the activations have a grid,
int64 reference kernels on float inputs) is timed in a separate round of 3 against float.

    python benchmarks/bench_eval_forward.py                     # batch 128, 2 threads
    python benchmarks/bench_eval_forward.py --repeats 3 --out smoke.json   # smoke run
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as `python benchmarks/bench_eval_forward.py`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch
from torch import nn

from benchmarks.common import add_timing_args, interleaved, median, provenance, write_json
from lowbit.artifacts import load_model, load_packed, save_model
from lowbit.export.integer import to_integer

CHECKPOINTS = Path(__file__).resolve().parent / "checkpoints"
FLOAT = "resnet20_cifar10_float"
INTEGER_REPEATS = 3
DEFAULT = ["inq_w5_resnet20_cifar10", "lbw_w4_resnet20_cifar10", "lbw_w2_resnet20_cifar10",
           "gdrq_w2a4_resnet20_cifar10"]


def forms(name: str, tmp: Path) -> dict[str, nn.Module]:
    """The checkpoint's eval-mode forms: fake-quant, packed, integer."""
    model, meta = load_model(CHECKPOINTS / f"{name}.safetensors")
    packed = load_packed(save_model(model, meta, tmp / f"{name}.lowbit", "packed"))[0].eval()
    model.eval()
    return {"fake-quant": model, "packed": packed, "integer": to_integer(packed).eval()}


def measure(name: str, float_model: nn.Module, x: torch.Tensor, repeats: int, tmp: Path
            ) -> dict[str, Any]:
    """Ratios of each form's median forward time to the float model's."""
    models = {"float": float_model, **forms(name, tmp)}
    with torch.inference_mode():
        want = models["fake-quant"](x).argmax(1)
        for form, m in models.items():
            if form != "float" and not torch.equal(m(x).argmax(1), want):
                raise AssertionError(f"{name}: {form} disagrees with the fake-quant model")
        fns = {form: (lambda m=m: m(x)) for form, m in models.items()}
        # the integer reference is 10-200x slower: timed against float in its own, shorter round
        times = interleaved({f: fn for f, fn in fns.items() if f != "integer"}, repeats)
        slow = interleaved({f: fns[f] for f in ("float", "integer")}, INTEGER_REPEATS)
    med = {form: median(t) for form, t in times.items()}
    ratios = {f: med[f] / med["float"] for f in med if f != "float"}
    ratios["integer"] = median(slow["integer"]) / median(slow["float"])
    med["integer"] = median(slow["integer"])
    row = {"checkpoint": name, "median_s": med, "ratio_vs_float": ratios}
    print(name + ": " + ", ".join(f"{f} {r:.2f}x" for f, r in row["ratio_vs_float"].items()))
    return row


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("checkpoints", nargs="*", default=DEFAULT,
                   help="names under benchmarks/checkpoints/ (without .safetensors)")
    p.add_argument("--batch", type=int, default=128)
    add_timing_args(p, repeats=15, out_name="eval_forward.json")
    args = p.parse_args(argv)
    prov = provenance("bench_eval_forward.py", argv)
    torch.set_num_threads(args.threads)
    x = torch.randn(args.batch, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    float_model = load_model(CHECKPOINTS / f"{FLOAT}.safetensors")[0].eval()
    with tempfile.TemporaryDirectory() as tmp:
        rows = [measure(n, float_model, x, args.repeats, Path(tmp)) for n in args.checkpoints]
    result = {**prov, "batch": args.batch, "threads": args.threads, "repeats": args.repeats,
              "note": args.note, "rows": rows}
    write_json(args.out, result)
    return result


if __name__ == "__main__":
    main()
