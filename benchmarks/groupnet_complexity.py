"""Group-Net complexity per structure, K and activation bits (Eq. 4), ResNet-20 on 32x32.

Counts, not timings: `lowbit.accounting.cost_report` on each expanded network. `ops` = float
MACs (first/last layer, aggregation) + BOPs / 64; `speedup` = float ResNet-20 MACs / ops; `bytes`
= 1 bit per binary weight plus 32-bit scales, BN, lambdas and float layers.

    python benchmarks/groupnet_complexity.py

Writes benchmarks/results/groupnet_complexity.json (command, commit, date, machine, figures).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as `python benchmarks/groupnet_complexity.py`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from benchmarks.common import provenance, write_result
from lowbit.accounting import cost_report
from lowbit.groupnet import GroupNetSpec, expand
from lowbit.models import create_model

ROWS = [(s, k, a) for s in ("v1", "v2", "v3", "layerwise") for k in (1, 3, 5)
        for a in (1, 2, 4, 32)]


def row(structure: str, k: int, act_bits: int) -> dict[str, Any]:
    torch.manual_seed(0)
    spec = GroupNetSpec(structure=structure, bases=k, act_bits=act_bits)  # type: ignore[arg-type]
    r = cost_report(expand(create_model("resnet20"), spec), (1, 3, 32, 32))
    binary = [x for x in r.layers if x.weight_bits == 1]
    flops = sum(x.macs for x in r.layers if x not in binary)
    return {"structure": structure, "K": k, "act_bits": act_bits, "flops": flops,
            "bops": sum(x.bops for x in binary), "ops": r.ops, "float_ops": r.float_ops,
            "speedup": r.speedup, "bytes": r.bytes, "params": r.params}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out-dir", type=Path, default=None)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args(argv)
    prov = provenance("groupnet_complexity.py", argv)
    float_report = cost_report(create_model("resnet20"), (1, 3, 32, 32))
    rows = [row(*r) for r in ROWS]
    for r in rows:
        print(f"{r['structure']:9s} K={r['K']} A{r['act_bits']:<2d} ops {r['ops']:14,.0f} "
              f"speed-up {r['speedup']:6.2f}x  bytes {r['bytes']:12,.0f}")
    out = {"benchmark": "groupnet_complexity", "model": "resnet20", "input": [1, 3, 32, 32],
           "float": {"macs": float_report.macs, "bytes": float_report.bytes}, "rows": rows}
    if not args.no_write:
        print(f"wrote {write_result('groupnet_complexity', out, args.out_dir, prov)}")
    return out


if __name__ == "__main__":
    main()
