"""onnxruntime's integer conv vs its float conv, one op, at every ResNet-20 3x3 conv shape.

The ceiling of what an integer ONNX graph can gain over the float graph in onnxruntime on this
machine: a QLinearConv (uint8 activations x int8 ternary weights, per-channel weight scales,
uint8 output) against a float Conv of the same shape, each the only node of its graph (so each
time includes the layout conversions onnxruntime wraps around the op: NHWC transposes for
QLinearConv, NCHWc reorders for Conv), both sessions with the same intra-op thread count and no
thread spinning, timed interleaved. The figure is the ratio of medians float / int (> 1: the
integer conv is faster), per shape and over ResNet-20's 3x3 convs (each shape's medians
weighted by how many convs of ResNet-20 have it).

    python benchmarks/bench_ort_conv.py                 # batch 1 and 128, 2 threads
    python benchmarks/bench_ort_conv.py --repeats 5 --out smoke.json
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as `python benchmarks/bench_ort_conv.py`: find the repo root
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
from onnx import TensorProto, helper, numpy_helper

from benchmarks.common import add_timing_args, interleaved, median, provenance, write_json
from lowbit.export.onnx import session

# (in channels, out channels, input size, stride) of ResNet-20's 3x3 convs, and how many it has
SHAPES = [(16, 16, 32, 1), (16, 32, 32, 2), (32, 32, 16, 1), (32, 64, 16, 2), (64, 64, 8, 1)]
COUNTS = [6, 1, 5, 1, 5]


def _graph(node: Any, x_type: int, shape: list[int], inits: list[Any]) -> bytes:
    graph = helper.make_graph([node], "conv", [helper.make_tensor_value_info("x", x_type, shape)],
                              [helper.make_tensor_value_info("y", x_type, None)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    return model.SerializeToString()


def graphs(c: int, o: int, hw: int, stride: int, batch: int, rng: np.random.Generator
           ) -> dict[str, tuple[bytes, np.ndarray]]:
    """The float and the integer single-conv graph of one shape, with an input for each."""
    attrs = {"pads": [1, 1, 1, 1], "strides": [stride, stride]}
    shape = [batch, c, hw, hw]
    w = rng.integers(-1, 2, (o, c, 3, 3)).astype(np.int8)
    flt = _graph(helper.make_node("Conv", ["x", "w"], ["y"], **attrs), TensorProto.FLOAT, shape,
                 [numpy_helper.from_array(w.astype(np.float32) * 0.05, "w")])
    consts = {"xs": np.float32(0.1), "xz": np.uint8(0), "w": w,
              "ws": np.full(o, 0.05, np.float32), "wz": np.zeros(o, np.int8),
              "ys": np.float32(0.2), "yz": np.uint8(0)}
    node = helper.make_node("QLinearConv", ["x", "xs", "xz", "w", "ws", "wz", "ys", "yz"], ["y"],
                            **attrs)
    qnt = _graph(node, TensorProto.UINT8, shape,
                 [numpy_helper.from_array(np.asarray(v), k) for k, v in consts.items()])
    x = rng.standard_normal(shape).astype(np.float32)
    return {"float": (flt, x), "int": (qnt, rng.integers(0, 16, shape).astype(np.uint8))}


def measure(batches: list[int], threads: int, repeats: int) -> list[dict[str, Any]]:
    rows = []
    for batch in batches:
        for c, o, hw, stride in SHAPES:
            pairs = graphs(c, o, hw, stride, batch, np.random.default_rng(c * o + hw))
            sessions = {k: (session(g, threads, spinning=False), x) for k, (g, x) in pairs.items()}
            fns = {k: (lambda s=s, x=x: s.run(None, {"x": x})) for k, (s, x) in sessions.items()}
            for fn in fns.values():
                fn()  # warm-up
            times = interleaved(fns, repeats)
            ratio = median(times["float"]) / median(times["int"])
            rows.append({"batch": batch, "cin": c, "cout": o, "size": hw, "stride": stride,
                         "count_in_resnet20": COUNTS[SHAPES.index((c, o, hw, stride))],
                         "float_median_s": median(times["float"]),
                         "int_median_s": median(times["int"]), "speedup_float_over_int": ratio})
            print(f"batch {batch} {c}->{o} {hw}x{hw} s{stride}: float "
                  f"{rows[-1]['float_median_s'] * 1e3:.3f} ms, QLinearConv "
                  f"{rows[-1]['int_median_s'] * 1e3:.3f} ms, float/int {ratio:.2f}x")
    return rows


def resnet20_total(rows: list[dict[str, Any]]) -> float:
    """float / int time summed over ResNet-20's 3x3 convs (each shape counted as often as the
    network has it)."""
    def total(key: str) -> float:
        return sum(r[key] * r["count_in_resnet20"] for r in rows)
    return total("float_median_s") / total("int_median_s")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batches", type=int, nargs="+", default=[1, 128])
    add_timing_args(p, repeats=31, out_name="ort_conv_speed.json")
    args = p.parse_args(argv)
    prov = provenance("bench_ort_conv.py", argv)
    rows = measure(args.batches, args.threads, args.repeats)
    totals = {str(b): resnet20_total([r for r in rows if r["batch"] == b]) for b in args.batches}
    print("over ResNet-20's 3x3 convs, float/int: "
          + ", ".join(f"batch {b} {v:.2f}x" for b, v in totals.items()))
    result = {**prov, "threads": args.threads, "note": args.note, "rows": rows,
              "resnet20_speedup_float_over_int": totals}
    write_json(args.out, result)
    return result


if __name__ == "__main__":
    main()
