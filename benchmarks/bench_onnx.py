"""ResNet-20 inference in onnxruntime: the integer (QDQ) graph vs the float graph of one checkpoint.

The graphs come from the same checkpoint (`lowbit.export.onnx`, flavours "float", "int" and
"int-exact", the last with no conv fused) and are loaded as `lowbit.export.onnx.session` loads
them (the weights of convs that cannot fuse dequantized at load); the int graph also runs as
plain onnxruntime loads the file ("int-unprepared"). They run in one process with
the same intra-op thread count, timed interleaved (the order alternates every round), at each
batch size; the figure is the ratio of medians float / int (> 1: the integer graph is faster).
Target: >= 2x. Thread spinning is off: with three sessions in one process, the idle sessions'
spinning threads took the cores from the one being timed (float / int read 1.0x with spinning,
1.4x without, and each graph alone gives 1.3x).

    python benchmarks/bench_onnx.py                       # GDRQ W2A4, batch 1 and 128, 2 threads
    python benchmarks/bench_onnx.py --repeats 5 --out smoke.json   # smoke run
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as `python benchmarks/bench_onnx.py`: find the repo root
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import onnxruntime as ort

from benchmarks.common import add_timing_args, interleaved, median, provenance, write_json
from lowbit.api import load_model
from lowbit.export.onnx import runtime_graph, session, session_options, to_onnx

CHECKPOINT = (Path(__file__).resolve().parent / "checkpoints"
              / "gdrq_w2a4_resnet20_cifar10.safetensors")


def op_times(graph: bytes, threads: int, x: np.ndarray, runs: int = 3) -> dict[str, Any]:
    """Kernel milliseconds per run by op type (onnxruntime's profiler, on the graph an optimized
    `session` runs), with how many nodes of each type the optimized graph runs: where the time
    goes."""
    opts = session_options(threads, spinning=False)
    opts.enable_profiling = True
    with tempfile.TemporaryDirectory() as tmp:
        opts.profile_file_prefix = str(Path(tmp) / "ort")
        sess = ort.InferenceSession(runtime_graph(graph), opts,
                                    providers=["CPUExecutionProvider"])
        for _ in range(runs + 1):  # the first run warms up
            sess.run(None, {"input": x})
        events = json.loads(Path(sess.end_profiling()).read_text())
    kernels = [e for e in events if e.get("cat") == "Node" and e["name"].endswith("_kernel_time")]
    total: Counter[str] = Counter()
    names: dict[str, set[str]] = {}
    for e in kernels[len(kernels) // (runs + 1):]:  # drop the warm-up run
        op = e["args"]["op_name"]
        total[op] += e["dur"] / 1e3 / runs
        names.setdefault(op, set()).add(e["name"])
    return {op: {"ms": round(ms, 2), "nodes": len(names[op])} for op, ms in total.most_common()}


def _unprepared(graph: bytes, threads: int) -> ort.InferenceSession:
    """The int graph as plain onnxruntime loads the file: no load-time dequantization."""
    return ort.InferenceSession(graph, session_options(threads, spinning=False),
                                providers=["CPUExecutionProvider"])


def measure(checkpoint: Path, batches: list[int], threads: int, repeats: int
            ) -> list[dict[str, Any]]:
    """Interleaved timings of both graphs at every batch size."""
    model, meta = load_model(checkpoint)
    graphs = {f: to_onnx(model, f, meta).SerializeToString()
              for f in ("float", "int", "int-exact")}
    # no spinning: an idle session's spinning threads would slow the one being timed
    sessions = {f: session(g, threads, spinning=False) for f, g in graphs.items()}
    sessions["int-unprepared"] = _unprepared(graphs["int"], threads)
    rows = []
    for batch in batches:
        x = np.random.default_rng(batch).standard_normal((batch, 3, 32, 32), dtype=np.float32)
        fns = {f: (lambda s=s, x=x: s.run(None, {"input": x})) for f, s in sessions.items()}
        for fn in fns.values():
            fn()  # warm-up: allocations, kernel selection
        times = interleaved(fns, repeats)
        ops = {f: op_times(g, threads, x) for f, g in graphs.items()}
        rows.append({"batch": batch, "threads": threads, "repeats": repeats, "op_ms": ops,
                     "float_median_s": median(times["float"]), "int_median_s": median(times["int"]),
                     "speedup_float_over_int": median(times["float"]) / median(times["int"]),
                     "int_exact_median_s": median(times["int-exact"]),
                     "speedup_float_over_int_exact": median(times["float"])
                     / median(times["int-exact"]),
                     "int_unprepared_median_s": median(times["int-unprepared"]),
                     "speedup_float_over_int_unprepared": median(times["float"])
                     / median(times["int-unprepared"]),
                     "float_all_s": times["float"], "int_all_s": times["int"]})
        print(f"batch {batch}: float {rows[-1]['float_median_s'] * 1e3:.2f} ms, int "
              f"{rows[-1]['int_median_s'] * 1e3:.2f} ms, float/int "
              f"{rows[-1]['speedup_float_over_int']:.2f}x, float/int-exact "
              f"{rows[-1]['speedup_float_over_int_exact']:.2f}x, float/int without the "
              f"load-time step {rows[-1]['speedup_float_over_int_unprepared']:.2f}x")
    return rows


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", type=Path, default=CHECKPOINT)
    p.add_argument("--batches", type=int, nargs="+", default=[1, 128])
    add_timing_args(p, repeats=21, out_name="onnx_speed.json")
    args = p.parse_args(argv)
    prov = provenance("bench_onnx.py", argv)
    rows = measure(args.checkpoint, args.batches, args.threads, args.repeats)
    result = {**prov, "checkpoint": str(args.checkpoint.name), "note": args.note, "rows": rows}
    write_json(args.out, result)
    return result


if __name__ == "__main__":
    main()
