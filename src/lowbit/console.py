"""The rich console the CLI prints tables with: wide enough for them off a terminal too."""

from __future__ import annotations

from rich.console import Console


def make_console() -> Console:
    """A console at the terminal's width, or 140 columns when output goes to a file or pipe."""
    probe = Console()
    return probe if probe.is_terminal else Console(width=140)
