"""onnxruntime vs PyTorch on a full test set: top-1 of both, per-sample agreement, logit gaps.

For each checkpoint: the fake-quantized PyTorch model, its float ONNX graph, its integer (QDQ)
ONNX graph and its "int-exact" graph (the same codes, no conv fused) run through onnxruntime with
graph optimizations (integer kernels where convs fuse) and, for the integer graph, without them
(the file's exact ONNX semantics). Reports top-1 of each, how many
test images get a different top-1 class, the largest |logit difference| and the largest
activation step of the model's quantized layers.

    python benchmarks/onnx_equality.py benchmarks/checkpoints/gdrq_w2a4_resnet20_cifar10.safetensors
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as `python benchmarks/onnx_equality.py`: find the repo root
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch
from torch import nn

from benchmarks.common import RESULTS, provenance, write_json
from lowbit.api import load_model
from lowbit.data import ENV_DATA_DIR, load_dataset
from lowbit.data.loader import BatchLoader
from lowbit.export.onnx import OnnxModule, read_metadata, session, to_onnx


def logits(model: nn.Module, data: Any, batch: int) -> torch.Tensor:
    """Logits of the whole split, in order."""
    with torch.no_grad():
        return torch.cat([model(x) for x, _ in BatchLoader(data, batch, train=False)])


def compare(ref: torch.Tensor, got: torch.Tensor, labels: torch.Tensor) -> dict[str, Any]:
    """Top-1 of `got`, disagreements with `ref` and the largest logit gap."""
    return {"top1": float((got.argmax(1) == labels).float().mean() * 100),
            "top1_disagreements": int((got.argmax(1) != ref.argmax(1)).sum()),
            "max_abs_logit_diff": float((got - ref).abs().max()),
            "samples_over_1e-4": int(((got - ref).abs().amax(1) > 1e-4).sum())}


def max_step(meta: dict[str, Any]) -> float | None:
    steps = [v.get("act", {}).get("step") or v.get("act_step") for v in meta["layers"].values()]
    steps = [s for s in steps if s]
    return max(steps) if steps else None


def check(path: Path, data_dir: str | None, batch: int) -> dict[str, Any]:
    """Every comparison for one checkpoint."""
    model, meta = load_model(path)
    data = load_dataset(meta["dataset"], data_dir).test
    labels = torch.cat([y for _, y in BatchLoader(data, batch, train=False)])
    ref = logits(model, data, batch)
    out: dict[str, Any] = {"checkpoint": str(path), "num_test": len(labels),
                           "pytorch_top1": float((ref.argmax(1) == labels).float().mean() * 100)}
    for flavour in ("float", "int", "int-exact"):
        proto = to_onnx(model, flavour, meta)
        out[f"{flavour}_max_act_step"] = max_step(read_metadata(proto))
        for optimize in ((True, False) if flavour == "int" else (True,)):
            runner = OnnxModule(session(proto.SerializeToString(), optimize=optimize))
            key = f"{flavour}{'' if optimize else '_unoptimized'}"
            out[key] = compare(ref, logits(runner, data, batch), labels)
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("checkpoints", type=Path, nargs="+")
    p.add_argument("--data-dir", default=os.environ.get(ENV_DATA_DIR))
    p.add_argument("--batch", type=int, default=500)
    p.add_argument("--out", type=Path, default=RESULTS / "onnx_equality.json")
    args = p.parse_args(argv)
    prov = provenance("onnx_equality.py", argv)
    rows = [check(c, args.data_dir, args.batch) for c in args.checkpoints]
    for r in rows:
        print(r)
    result = {**prov, "rows": rows}
    write_json(args.out, result)
    return result


if __name__ == "__main__":
    main()
