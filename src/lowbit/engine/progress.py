"""Progress on long work: a bar (rich) on a terminal; off a terminal (logs, CI, `| tee`) a
periodic line through logging, so a long epoch is never silent until it ends."""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

log = logging.getLogger(__name__)
LINE_SECONDS = 30.0  # off a terminal: one progress line at most this often (and at 25/50/75 %)


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


class _Lines:
    """Off a terminal: `description: i/total (p %), fields, rate, time left` every
    LINE_SECONDS or at each quarter, whichever comes first."""

    def __init__(self, total: int, description: str, interval: float) -> None:
        self.total, self.description, self.interval = max(total, 1), description, interval
        self.done, self.start = 0, time.perf_counter()
        self.last, self.quarter = self.start, 0

    def update(self, **fields: float) -> None:
        self.done += 1
        now = time.perf_counter()
        quarter = 4 * self.done // self.total
        if now - self.last < self.interval and quarter == self.quarter:
            return
        self.last, self.quarter = now, quarter
        if self.done >= self.total:
            return  # the caller reports the end itself
        rate = self.done / max(now - self.start, 1e-9)
        info = " ".join(f"{k}={v:.4g}" for k, v in fields.items())
        log.info("%s: %d/%d (%d %%) %s %.1f it/s, %.0f s left", self.description, self.done,
                 self.total, 100 * self.done // self.total, info, rate,
                 (self.total - self.done) / rate)

    def close(self) -> None:
        pass


def progress_bar(total: int, description: str, enabled: bool = True,
                 interval: float = LINE_SECONDS) -> Any:
    """A bar with `update(**fields)` and `close()`: rich on a terminal, periodic log lines off
    one, nothing when disabled (e.g. on a non-zero distributed rank)."""
    if not enabled:
        return _NoBar()
    if sys.stderr.isatty():
        return _RichBar(total, description)
    return _Lines(total, description, interval)
