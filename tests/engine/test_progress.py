"""Progress off a terminal: periodic lines for training, evaluation and calibration; only rank 0
prints under torchrun."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

from lowbit.engine.progress import progress_bar
from support import tiny_run_args


def test_lines_off_a_terminal(caplog) -> None:
    with caplog.at_level(logging.INFO, logger="lowbit.engine.progress"):
        bar = progress_bar(8, "epoch 1/3", interval=1e9)
        for i in range(8):
            bar.update(loss=1.0 / (i + 1))
        bar.close()
    lines = [r.getMessage() for r in caplog.records]
    assert [line.split(" (")[0] for line in lines] == ["epoch 1/3: 2/8", "epoch 1/3: 4/8",
                                                        "epoch 1/3: 6/8"]  # each quarter
    assert "loss=0.5" in lines[0] and "s left" in lines[0]
    assert progress_bar(8, "x", enabled=False).update() is None


def _cli(tmp_path: Path, rank: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "RANK": rank}
    args = tiny_run_args(train__epochs=1, train__progress="true")
    return subprocess.run([sys.executable, "-m", "lowbit.cli", "train", *args, "--run-dir",
                           str(tmp_path / f"r{rank}")], env=env, capture_output=True, text=True,
                          timeout=300)


def test_training_off_a_terminal_prints_progress_and_only_rank_0_prints(tmp_path: Path) -> None:
    main = _cli(tmp_path, "0")
    assert main.returncode == 0, main.stderr[-500:]
    assert "epoch 1/1: 1/4 (25 %)" in main.stderr
    assert main.stdout.startswith("run ")
    other = _cli(tmp_path, "1")
    assert other.returncode == 0 and other.stdout == "" and other.stderr == ""
