"""The rich console the CLI prints tables with: wide enough for them off a terminal too."""

from __future__ import annotations

import os

from rich.console import Console


def make_console() -> Console:
    """A console at the terminal's width (or $COLUMNS when set), else 140 columns when output
    goes to a file or pipe (tables narrower than 120 columns drop their less essential ones)."""
    probe = Console()
    if probe.is_terminal:
        return probe
    columns = os.environ.get("COLUMNS", "")
    return Console(width=int(columns) if columns.isdigit() and int(columns) > 0 else 140)
