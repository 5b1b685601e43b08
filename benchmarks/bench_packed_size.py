"""Packed `.lowbit` size against its content, per committed checkpoint (no timing, exact bytes).

For every checkpoint in `benchmarks/checkpoints/`: the fp32 checkpoint's size, the content
(sum over quantized layers of weights x bits / 8, plus every float/int tensor stored: scales,
BN, float layers, activation-quantizer state), the `.lowbit` file's size (header included) and
their ratio (issue 16 asks <= 1.02), the fixed bits per weight, the code entropy (per layer,
pooled) and the bits per weight the optional entropy coding (`packed-entropy`) achieves. Each
packed file is reloaded and checked to give the checkpoint's logits on a random batch.

    python benchmarks/bench_packed_size.py            # writes results/packed_size.json
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as `python benchmarks/bench_packed_size.py`: find the repo
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch
from safetensors.torch import load_file
from torch import nn

from benchmarks.common import RESULTS, provenance, write_json
from lowbit.artifacts import export_file, load_model
from lowbit.export.frozen import Decoded

CHECKPOINTS = Path(__file__).resolve().parent / "checkpoints"


def code_stats(model: nn.Module) -> tuple[int, float, float]:
    """(quantized weights, their fixed bits, their per-layer code entropy), bits summed."""
    count, bits, entropy = 0, 0.0, 0.0
    for layer in model.modules():
        q = getattr(layer, "weight_quant", None)
        if isinstance(q, Decoded):
            codes = q.codes.reshape(-1).long()
            freq = torch.bincount(codes - codes.min()).double()
            p = freq[freq > 0] / codes.numel()
            count, bits = count + codes.numel(), bits + codes.numel() * q.bits
            entropy += float(-(p * p.log2()).sum()) * codes.numel()
    return count, bits, entropy


def row(ckpt: Path, tmp: Path) -> dict[str, Any]:
    """The figures of one checkpoint (see the module docstring)."""
    packed = export_file(ckpt, tmp / "m.lowbit", "packed")
    coded = export_file(packed, tmp / "e.lowbit", "packed-entropy")
    reference, packed_model = load_model(ckpt)[0], load_model(packed)[0]
    x = torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        exact = torch.equal(reference(x), packed_model(x))
        exact &= torch.equal(reference(x), load_model(coded)[0](x))
    count, bits, entropy = code_stats(packed_model)
    stored = load_file(packed)
    floats = sum(v.numel() * v.element_size() for k, v in stored.items()
                 if k.startswith("values."))
    content = bits / 8 + floats
    size = packed.stat().st_size
    return {"checkpoint": ckpt.stem, "checkpoint_bytes": ckpt.stat().st_size,
            "content_bytes": round(content), "packed_bytes": size,
            "file_over_content": round(size / content, 4),
            "quantized_weights": count,
            "fixed_bits_per_weight": round(bits / count, 3) if count else None,
            "entropy_bits_per_weight": round(entropy / count, 3) if count else None,
            "coded_bits_per_weight": (round(load_file(coded)["codes"].numel() * 8 / count, 3)
                                      if count else None),
            "entropy_coded_bytes": coded.stat().st_size, "same_logits": bool(exact)}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Print the table and write `results/packed_size.json`."""
    torch.set_num_threads(1)
    start = time.perf_counter()
    rows = []
    for ckpt in sorted(CHECKPOINTS.glob("*.safetensors")):
        with tempfile.TemporaryDirectory() as tmp:
            rows.append(row(ckpt, Path(tmp)))
    keys = ["checkpoint", "checkpoint_bytes", "content_bytes", "packed_bytes",
            "file_over_content", "fixed_bits_per_weight", "entropy_bits_per_weight",
            "coded_bits_per_weight", "entropy_coded_bytes", "same_logits"]
    print("| " + " | ".join(keys) + " |")
    for r in rows:
        print("| " + " | ".join(str(r[k]) for k in keys) + " |")
    result = {"benchmark": "packed file size vs content", **provenance("bench_packed_size.py",
                                                                       argv),
              "wall_clock_s": time.perf_counter() - start, "figures": rows}
    out = write_json(RESULTS / "packed_size.json", result)
    print(f"wrote {out}")
    return result


if __name__ == "__main__":
    main()
