"""A minimal progress bar (rich), shown only on a terminal."""

from __future__ import annotations

import sys
from typing import Any


class _NoBar:
    def update(self, **fields: float) -> None:
        pass

    def close(self) -> None:
        pass


class _RichBar:
    def __init__(self, total: int, description: str) -> None:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
        )

        self._progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeRemainingColumn(),
            TextColumn("{task.fields[info]}"),
            transient=True,
        )
        self._progress.start()
        self._task = self._progress.add_task(description, total=total, info="")

    def update(self, **fields: float) -> None:
        info = " ".join(f"{k}={v:.4f}" for k, v in fields.items())
        self._progress.update(self._task, advance=1, info=info)

    def close(self) -> None:
        self._progress.stop()


def progress_bar(total: int, description: str, enabled: bool = True) -> Any:
    """A bar with `update(**fields)` and `close()`; a no-op off a terminal or when disabled."""
    if enabled and sys.stderr.isatty():
        return _RichBar(total, description)
    return _NoBar()
