"""`lowbit train --resume` after `kill -9` ends with the same model as an uninterrupted run."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

from lowbit.engine.checkpoint import load_checkpoint
from support import tiny_run_args

ARGS = tiny_run_args(data__batch_size=64, train__epochs=25, train__seed=5, optim__lr=0.05)


def lowbit(*args: str) -> list[str]:
    return [sys.executable, "-m", "lowbit.cli", *args]


def env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1"}


def test_kill_dash_nine_then_resume(tmp_path: Path) -> None:
    killed, clean = tmp_path / "killed", tmp_path / "clean"
    proc = subprocess.Popen(
        lowbit("train", *ARGS, "--run-dir", str(killed)),
        env=env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    metrics = killed / "metrics.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if metrics.exists() and len(metrics.read_text().splitlines()) >= 3:
            break
        time.sleep(0.02)
    assert proc.poll() is None, "the run finished before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    _, meta = load_checkpoint(killed / "last.safetensors")
    assert 1 <= meta["epoch"] < 25
    subprocess.run(
        lowbit("train", "--resume", str(killed)), env=env(), check=True, capture_output=True
    )
    subprocess.run(
        lowbit("train", *ARGS, "--run-dir", str(clean)), env=env(), check=True, capture_output=True
    )
    a, meta_a = load_checkpoint(killed / "final.safetensors")
    b, meta_b = load_checkpoint(clean / "final.safetensors")
    assert meta_a["final_test"] == meta_b["final_test"]
    for key in b:
        assert torch.equal(a[key], b[key]), key
    assert len((killed / "metrics.jsonl").read_text().splitlines()) == 25
