"""`lowbit demo`: the whole tool end to end on embedded data, in about a minute on 2 cores.

Trains a small float CNN on scikit-learn's 8x8 digits (shipped inside lowbit: no downloads), then
fine-tunes a copy with each available method through the same code path as `lowbit train`, and
prints one table: method, bits, test accuracy, size (accounted and packed on disk), codebook
compliance.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from lowbit.accounting import NARROW
from lowbit.api import load_model, train
from lowbit.build import load_run
from lowbit.console import make_console

log = logging.getLogger(__name__)

A4 = {"name": "uniform", "bits": 4, "signed": False, "clip": "learned", "clip_value": 4.0}
INQ2_PORTIONS = [0.2, 0.4, 0.6, 0.8, 0.9, 1.0]

# (label, weight bits, act bits, quant section, epochs: None where the method fixes its schedule)
DEMO_METHODS: list[tuple[str, str, str, dict[str, Any], int | None]] = [
    ("QAT uniform", "4", "4", {"method": "qat", "weight": {"name": "uniform", "bits": 4},
                               "act": A4}, 5),
    ("INQ pow2", "5", "32", {"method": "inq", "weight": {"bits": 5}, "epochs_per_step": 1}, None),
    ("INQ pow2 (ternary)*", "2", "32", {"method": "inq", "weight": {"bits": 2, "n1_rule": "mse"},
                                        "epochs_per_step": 2, "portions": INQ2_PORTIONS,
                                        "keep_float": "first_last"}, None),
    ("LBW pow2", "4", "32", {"method": "lbw", "weight": {"bits": 4}}, 5),
    ("LBW exact ternary", "2", "32", {"method": "lbw", "weight": {"bits": 2}}, 5),
    ("GDRQ scale-clip", "2", "4", {"method": "gdrq", "reshape_epochs": 1, "quant_epochs": 4},
     None),
    ("Group-Net v1, K=3", "1", "2", {"method": "groupnet", "bases": 3,
                                     "act": {"bits": 2, "clip_value": 4.0}}, 5),
]  # fmt: skip


def _base(out_dir: Path, epochs: int | None, seed: int) -> dict[str, Any]:
    return {
        "model": {"name": "small_cnn"},
        "data": {"name": "digits", "batch_size": 64, "eval_batch_size": 512},
        "optim": {"name": "sgd", "lr": 0.05, "weight_decay": 5e-4},
        "schedule": {"name": "cosine", "warmup_epochs": 1},
        "train": {"epochs": epochs, "seed": seed, "progress": False},
        "out_dir": str(out_dir),
    }


def _row(label: str, wbits: str, abits: str, result: dict[str, Any]) -> list[str]:
    from lowbit.accounting import check_compliance, cost_report
    from lowbit.artifacts import export_file

    ckpt = Path(result["run_dir"]) / "final.safetensors"
    model, _ = load_model(ckpt)
    cost = cost_report(model, (1, 1, 8, 8))
    packed = export_file(ckpt, ckpt.with_name("model.lowbit"), "packed")
    compliance = check_compliance(model)
    return [
        label,
        wbits,
        abits,
        f"{result['top1']:.2f}",
        f"{cost.bytes / 1024:.1f}",
        f"{packed.stat().st_size / 1024:.1f}",
        f"{cost.compression:.1f}x",
        "yes" if compliance.passed else "NO",
    ]


def run_demo(epochs: int = 15, seed: int = 0, out_dir: str | None = None) -> list[list[str]]:
    """Train float, then every available method; print and return the table rows.

    Run directories (checkpoints, metrics, packed files) are kept under `out_dir` (default: a
    fresh temporary folder, printed at the start).
    """
    root = Path(out_dir or tempfile.mkdtemp(prefix="lowbit-demo-"))
    console = make_console()
    quiet = logging.getLogger("lowbit")
    level = quiet.level
    quiet.setLevel(logging.WARNING)  # the table is the output; each run keeps its own log file
    try:
        return _run(root, console, epochs, seed)
    finally:
        quiet.setLevel(level)


def _run(root: Path, console: Console, epochs: int, seed: int) -> list[list[str]]:
    console.print(f"[bold]lowbit demo[/]: small_cnn on the embedded digits data; runs in {root}")
    float_res = train(load_run(base={**_base(root, epochs, seed), "name": "float"}))
    rows = [_row("float", "32", "32", float_res)]
    init = str(Path(float_res["run_dir"]) / "final.safetensors")
    for label, wbits, abits, quant, run_epochs in DEMO_METHODS:
        base = _base(root, run_epochs, seed)
        base.update(quant=quant, name=label.replace(" ", "_").replace("(", "").replace(")", ""))
        base["train"]["init"] = init
        base["optim"]["lr"] = 0.01
        console.print(f"fine-tuning: {label}")
        rows.append(_row(label, wbits, abits, train(load_run(base=base))))
    console.print(_table(rows, console.width))
    console.print("* first conv and last linear kept float (INQ quantizes every layer by default; "
                  "at 2 bits the 9-weight filters of the 1-channel input conv lose too much), and "
                  "n1 by least squares (n1_rule: mse): the paper's max rule zeroes most weights "
                  "at 2 bits.")
    return rows


HEADS = ("method", "W bits", "A bits", "top-1 %", "KiB accounted", "KiB file", "smaller",
         "in codebook")
NARROW_HEADS = ("method", "W bits", "A bits", "top-1 %", "KiB file", "in codebook")


def _table(rows: list[list[str]], width: int = 140) -> Table:
    """The results table; in a console under NARROW columns, the columns that fit 80."""
    heads = NARROW_HEADS if width < NARROW else HEADS
    table = Table(title="digits test set (449 images): accuracy, size and compliance")
    for head in heads:
        table.add_column(head, justify="left" if head == "method" else "right")
    for row in rows:
        cells = dict(zip(HEADS, row, strict=True))
        table.add_row(*(cells[h] for h in heads))
    return table
