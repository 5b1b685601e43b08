"""Binary convolution at every ResNet-20 layer shape: XNOR-popcount kernel vs float conv2d.

For each distinct conv shape of ResNet-20 on 32x32 inputs (3x3 convs of the three stages, the
two strided 3x3 convs and the two 1x1 shortcuts; the float stem is left out), the XNOR path
(`lowbit.kernels.xnor.XnorConv`: weights packed once, as a deployed layer holds them; per call
the input's signs are bit-packed, the popcount GEMM runs and the padding correction is applied)
runs against `torch.nn.functional.conv2d` on the same float input, interleaved, same thread
count (torch and numba). The figure is the ratio of medians float / xnor (> 1: XNOR faster).
Target: >= 4x.

Per shape: `xnor` packs the float input's signs inside the kernel (every figure of the target
includes this packing); `xnor_packed` runs on signs packed beforehand by `pack_activations`, and
`pack` is that packing alone, for the same input. A downsampling block reads one input with two
convs (3 x 3 stride 2 and the 1 x 1 shortcut), so it can pack once for both: `blocks` compares
the two float convs with one `pack` plus both `xnor_packed` (and with both `xnor`).

    python benchmarks/bench_xnor.py                       # batch 128, 2 threads, numba
    python benchmarks/bench_xnor.py --batch 8 --repeats 3 --out smoke.json   # smoke run
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as `python benchmarks/bench_xnor.py`: find the repo root
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch
import torch.nn.functional as F

from benchmarks.common import add_timing_args, interleaved, median, provenance, write_json
from lowbit.kernels.xnor import HAVE_NUMBA, XnorConv, pack_activations, set_threads

# (in channels, out channels, input size, stride, padding, kernel) of ResNet-20's binary convs
SHAPES = [(16, 16, 32, 1, 1, 3), (16, 32, 32, 2, 1, 3), (32, 32, 16, 1, 1, 3),
          (32, 64, 16, 2, 1, 3), (64, 64, 8, 1, 1, 3), (16, 32, 32, 2, 0, 1),
          (32, 64, 16, 2, 0, 1)]
BLOCKS = [(1, 5), (3, 6)]  # (3x3 stride-2 conv, 1x1 shortcut) reading the same input


def measure(batch: int, repeats: int, backend: str) -> list[dict[str, Any]]:
    """Interleaved timings per shape; every XNOR result is checked against the float conv."""
    rows = []
    for c, o, hw, stride, pad, k in SHAPES:
        gen = torch.Generator().manual_seed(c * o + hw)
        x, w = torch.randn(batch, c, hw, hw, generator=gen), torch.randn(o, c, k, k, generator=gen)
        ws, conv = torch.where(w >= 0, 1.0, -1.0), XnorConv(w, stride, pad, backend)
        packed = pack_activations(x, backend)
        fns = {"float": lambda x=x, ws=ws, s=stride, p=pad: F.conv2d(x, ws, stride=s, padding=p),
               "xnor": lambda x=x, f=conv: f(x),
               "xnor_packed": lambda p=packed, f=conv: f.packed(p),
               "pack": lambda x=x: pack_activations(x, backend)}
        want = F.conv2d(torch.where(x >= 0, 1.0, -1.0), ws, stride=stride, padding=pad)
        for name in ("xnor", "xnor_packed"):  # also the warm-up / JIT
            if not torch.equal(fns[name]().double(), want.double()):
                raise AssertionError(f"{name} differs from the float conv at shape {c, o, hw}")
        times = {name: median(t) for name, t in interleaved(fns, repeats).items()}
        rows.append({"cin": c, "cout": o, "size": hw, "stride": stride, "padding": pad,
                     "kernel": k, "batch": batch, "float_median_s": times["float"],
                     "xnor_median_s": times["xnor"], "xnor_packed_median_s": times["xnor_packed"],
                     "pack_median_s": times["pack"],
                     "speedup_float_over_xnor": times["float"] / times["xnor"],
                     "speedup_float_over_xnor_packed": times["float"] / times["xnor_packed"]})
        print(f"{c}->{o} {hw}x{hw} k{k} s{stride}: float {times['float'] * 1e3:.2f} ms, xnor "
              f"{times['xnor'] * 1e3:.2f} ms ({rows[-1]['speedup_float_over_xnor']:.2f}x), on "
              f"packed input {times['xnor_packed'] * 1e3:.2f} ms "
              f"({rows[-1]['speedup_float_over_xnor_packed']:.2f}x), pack "
              f"{times['pack'] * 1e3:.2f} ms")
    return rows


def blocks(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per downsampling block: float / XNOR with each conv packing for itself, and with one
    packing shared by both convs (sums of the per-shape medians of one run)."""
    out = []
    for a, b in BLOCKS:
        conv, short = rows[a], rows[b]
        fl = conv["float_median_s"] + short["float_median_s"]
        own = conv["xnor_median_s"] + short["xnor_median_s"]
        shared = conv["pack_median_s"] + conv["xnor_packed_median_s"] + short[
            "xnor_packed_median_s"]
        out.append({"cin": conv["cin"], "cout": conv["cout"], "size": conv["size"],
                    "float_s": fl, "xnor_s": own, "xnor_shared_pack_s": shared,
                    "speedup_float_over_xnor": fl / own,
                    "speedup_float_over_xnor_shared_pack": fl / shared})
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--backend", choices=["numba", "torch"],
                   default="numba" if HAVE_NUMBA else "torch")
    add_timing_args(p, repeats=11, out_name="xnor_speed.json")
    args = p.parse_args(argv)
    prov = provenance("bench_xnor.py", argv)
    torch.set_num_threads(args.threads)
    set_threads(args.threads)
    rows = measure(args.batch, args.repeats, args.backend)
    result = {**prov, "backend": args.backend, "threads": args.threads, "note": args.note,
              "rows": rows, "blocks": blocks(rows)}
    write_json(args.out, result)
    return result


if __name__ == "__main__":
    main()
