"""Weight quantization error of the lowbit quantizers on a trained model's conv/linear weights.

Error measure: relative squared error ||W - Q(W)||^2 / ||W||^2 (what spec/algorithms.md calls
"relative L2 error", e.g. 0.191 for optimal ternary on Gaussian weights), reported pooled over
all layers (sum of squared errors / sum of squared weights) and as the mean over layers.
Methods, at b = 2..6: INQ pow2 (one-shot, n1 from max|W|), LBW alternating and threshold
(r = 0.5), exact ternary vs TWN (b = 2 only), symmetric uniform with the max clip, and GDRQ
scale-clip (k = 2). The float latent weights are used (`module.weight`).

    python benchmarks/bench_quant_error.py --checkpoint runs/resnet20/final.safetensors
    python benchmarks/bench_quant_error.py --random          # Gaussian stand-in, prints only

With --random the weights are Gaussian N(0, 2/fan_in) in ResNet-20 shapes, NOT a trained
model: the table is printed and written only where --out says (use a name that says random).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as `python benchmarks/bench_quant_error.py`: find the repo
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch
from torch import nn

from benchmarks.common import RESULTS, provenance, write_json
from lowbit.quant import get_quantizer

# (label, quantizer config without bits, bit-widths it applies to)
METHODS: list[tuple[str, dict[str, Any], tuple[int, ...]]] = [
    ("pow2 (INQ)", {"name": "pow2"}, (2, 3, 4, 5, 6)),
    ("lbw alternating", {"name": "lbw", "method": "alternating"}, (3, 4, 5, 6)),
    ("lbw threshold r=0.5", {"name": "lbw", "method": "threshold"}, (3, 4, 5, 6)),
    ("ternary exact", {"name": "ternary"}, (2,)),
    ("twn", {"name": "twn"}, (2,)),
    ("uniform max", {"name": "uniform", "clip": "max"}, (2, 3, 4, 5, 6)),
    ("scaleclip k=2", {"name": "scaleclip", "k": 2.0}, (2, 3, 4, 5, 6)),
]


def resnet20_shapes() -> list[tuple[int, ...]]:
    """Conv/linear weight shapes of a CIFAR ResNet-20 (16-32-64 channels, 3 stages x 3 blocks)."""
    shapes: list[tuple[int, ...]] = [(16, 3, 3, 3)]
    c_in = 16
    for c in (16, 32, 64):
        for _ in range(3):
            shapes += [(c, c_in, 3, 3), (c, c, 3, 3)]
            c_in = c
    return [*shapes, (10, 64)]


def random_weights(seed: int) -> dict[str, torch.Tensor]:
    """Gaussian N(0, 2/fan_in) weights in ResNet-20's conv/linear shapes."""
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for i, shape in enumerate(resnet20_shapes()):
        fan_in = int(torch.tensor(shape[1:]).prod())
        out[f"layer{i}"] = torch.randn(*shape, generator=gen) * (2 / fan_in) ** 0.5
    return out


def checkpoint_weights(path: str) -> dict[str, torch.Tensor]:
    """The float latent conv/linear weights of a lowbit checkpoint, by module name."""
    from lowbit.api import load_model  # only needed for real checkpoints

    model, _ = load_model(path)
    return {name: m.weight.detach().float() for name, m in model.named_modules()
            if isinstance(m, (nn.Conv2d, nn.Linear))}


def error_table(weights: dict[str, torch.Tensor], bits: list[int]) -> list[dict[str, Any]]:
    """One row per (method, bits): pooled and mean-over-layers relative squared error."""
    rows = []
    for label, cfg, allowed in METHODS:
        for b in (b for b in bits if b in allowed):
            q = get_quantizer({**cfg, "bits": b}).eval()
            errs, norms = [], []
            with torch.no_grad():
                for w in weights.values():
                    errs.append(float(((w - q(w)) ** 2).sum()))
                    norms.append(float((w**2).sum()))
            per_layer = [e / n for e, n in zip(errs, norms, strict=True)]
            rows.append({"method": label, "bits": b, "config": q.to_config(),
                         "rel_sq_err_pooled": sum(errs) / sum(norms),
                         "rel_sq_err_layer_mean": sum(per_layer) / len(per_layer)})
    return rows


def print_table(rows: list[dict[str, Any]], bits: list[int]) -> None:
    """Print pooled errors, one line per method, one column per bit-width."""
    print(f"{'method':<22}" + "".join(f"{'b=' + str(b):>10}" for b in bits))
    for label in dict.fromkeys(r["method"] for r in rows):
        cells = {r["bits"]: r["rel_sq_err_pooled"] for r in rows if r["method"] == label}
        print(f"{label:<22}" + "".join(f"{cells[b]:>10.4f}" if b in cells else f"{'-':>10}"
                                       for b in bits))


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line (`argv`; None: sys.argv[1:])."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint", help="a lowbit checkpoint (load_model)")
    src.add_argument("--random", action="store_true", help="Gaussian weights, ResNet-20 shapes")
    p.add_argument("--bits", type=int, nargs="+", default=[2, 3, 4, 5, 6])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1,
                   help="errors do not depend on it; 1 avoids thread stalls on a busy machine")
    p.add_argument("--out", type=Path, help="result JSON (default for checkpoints: "
                   "benchmarks/results/quant_error_<checkpoint name>.json; --random: none)")
    return p.parse_args(argv)


def default_out(args: argparse.Namespace) -> Path | None:
    """`--out`, else benchmarks/results/quant_error_<run>_<stem>.json (none for --random)."""
    if args.out is not None or args.random:
        return args.out
    ckpt = Path(args.checkpoint)
    return RESULTS / f"quant_error_{ckpt.parent.name}_{ckpt.stem}.json"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Print the error table and write it where `--out` (or the default) says."""
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    weights = random_weights(args.seed) if args.random else checkpoint_weights(args.checkpoint)
    rows = error_table(weights, args.bits)
    print_table(rows, args.bits)
    source = (f"random Gaussian N(0, 2/fan_in), ResNet-20 shapes, seed {args.seed}"
              if args.random else str(args.checkpoint))
    result = {"benchmark": "weight quantization error", "source": source,
              "layers": len(weights), "weights": sum(w.numel() for w in weights.values()),
              **provenance("bench_quant_error.py", argv),
              "wall_clock_s": time.perf_counter() - start, "figures": rows}
    out = default_out(args)
    if out is not None:
        write_json(out, result)
        print(f"wrote {out}")
    return result


if __name__ == "__main__":
    main()
