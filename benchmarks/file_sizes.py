"""Bytes on disk per committed checkpoint: the checkpoint itself (fp32 safetensors), the packed
`.lowbit` file and the two ONNX files (float and integer flavour), in one table.

Sizes are not timings: this runs anywhere and its numbers are exact.

    python benchmarks/file_sizes.py            # every checkpoint in benchmarks/checkpoints/

Rows committed only as their packed file (AlexNet Group-Net: the training checkpoint, with float
shadow weights for every base, is 38 MB) have no checkpoint size.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as `python benchmarks/file_sizes.py`: find the repo root
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import RESULTS, provenance, write_json
from lowbit.api import load_model
from lowbit.artifacts import export_file
from lowbit.errors import LowbitError
from lowbit.export.onnx import export_onnx

CHECKPOINTS = Path(__file__).resolve().parent / "checkpoints"


def sizes(checkpoint: Path, tmp: Path) -> dict[str, Any]:
    """File sizes (bytes) of one checkpoint's artifacts; None where an export is refused, and
    no checkpoint size for a row committed as its packed file (its training checkpoint is not)."""
    packed = checkpoint.suffix == ".lowbit"
    row: dict[str, Any] = {"checkpoint": checkpoint.name,
                           "checkpoint_bytes": None if packed else checkpoint.stat().st_size}
    model, meta = load_model(checkpoint)
    try:
        row["lowbit_bytes"] = (checkpoint if packed else export_file(
            checkpoint, tmp / "m.lowbit")).stat().st_size
    except LowbitError:  # e.g. a float checkpoint: nothing to pack
        row["lowbit_bytes"] = None
    for flavour in ("float", "int"):
        try:
            path = export_onnx(model, tmp / f"m_{flavour}.onnx", flavour, meta)
            row[f"onnx_{flavour}_bytes"] = path.stat().st_size
        except LowbitError as exc:  # a layer without an ONNX lowering
            row[f"onnx_{flavour}_bytes"] = None
            print(f"{checkpoint.name}: no ONNX {flavour} file: {exc}")
    return row


def table(rows: list[dict[str, Any]]) -> str:
    """Markdown table of the rows, sizes in KB (1000 bytes)."""
    keys = ["checkpoint_bytes", "lowbit_bytes", "onnx_float_bytes", "onnx_int_bytes"]
    lines = ["| checkpoint | fp32 checkpoint KB | .lowbit KB | ONNX float KB | ONNX int KB |",
             "|---|---|---|---|---|"]
    for r in rows:
        cells = ["-" if r[k] is None else f"{r[k] / 1000:.1f}" for k in keys]
        name = r["checkpoint"].removesuffix(".safetensors").replace(".lowbit", " (.lowbit only)")
        lines.append(f"| {name} | {' | '.join(cells)} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("checkpoints", type=Path, nargs="*")
    p.add_argument("--out", type=Path, default=RESULTS / "file_sizes.json")
    args = p.parse_args(argv)
    prov = provenance("file_sizes.py", argv)
    paths = args.checkpoints or sorted([*CHECKPOINTS.glob("*.safetensors"),
                                        *CHECKPOINTS.glob("*.lowbit")])
    with tempfile.TemporaryDirectory() as tmp:
        rows = [sizes(c, Path(tmp)) for c in paths]
    print(table(rows))
    result = {**prov, "rows": rows, "table": table(rows)}
    write_json(args.out, result)
    return result


if __name__ == "__main__":
    main()
