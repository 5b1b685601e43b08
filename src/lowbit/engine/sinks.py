"""Where a run's metrics go besides `metrics.jsonl` (always written): CSV and TensorBoard.

`train.metrics: [csv, tensorboard]` in a config turns them on. `metrics.csv` is rewritten from
the JSONL after every epoch (its columns are the union of the rows' keys, so rows that evaluate
and rows that do not fit one table, and a resumed run stays consistent). TensorBoard event files
go to `<run>/tensorboard/`; a resumed run purges the events after its checkpoint's epoch. The
TensorBoard writer needs the optional extra (`pip install "lowbit[tensorboard]"`).
"""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any, Protocol

from lowbit.engine.checkpoint import atomic_write_bytes
from lowbit.errors import LowbitError

SINKS = ("csv", "tensorboard")


class Sink(Protocol):
    def write(self, row: dict[str, Any], rows: list[dict[str, Any]]) -> None: ...

    def close(self) -> None: ...


class CsvSink:
    def __init__(self, path: Path) -> None:
        self.path = path

    def write(self, row: dict[str, Any], rows: list[dict[str, Any]]) -> None:
        keys = list(dict.fromkeys(k for r in rows for k in r))
        out = io.StringIO()
        writer = csv.DictWriter(out, fieldnames=keys, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        atomic_write_bytes(self.path, out.getvalue().encode())

    def close(self) -> None:
        pass


class TensorBoardSink:
    def __init__(self, folder: Path, purge_step: int | None) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:  # the optional extra is missing
            raise LowbitError("train.metrics: tensorboard needs the optional extra: "
                              'pip install "lowbit[tensorboard]"') from None
        self.writer = SummaryWriter(log_dir=str(folder), purge_step=purge_step)

    def write(self, row: dict[str, Any], rows: list[dict[str, Any]]) -> None:
        step = int(row.get("epoch", len(rows) - 1))
        for key, value in row.items():
            if isinstance(value, float | int) and not isinstance(value, bool) and key != "epoch":
                self.writer.add_scalar(key, value, step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


def make_sinks(names: list[str], run: Path, resume_epoch: int | None) -> list[Sink]:
    """The sinks `names` asks for, writing into run directory `run`."""
    table: dict[str, Any] = {
        "csv": lambda: CsvSink(run / "metrics.csv"),
        "tensorboard": lambda: TensorBoardSink(run / "tensorboard", resume_epoch),
    }
    return [table[n]() for n in names]
