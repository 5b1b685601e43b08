"""Two CPU processes under torchrun (gloo) match one process with the same global batch."""

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lowbit.engine.checkpoint import load_checkpoint
from support import tiny_run_args

ARGS = tiny_run_args(
    **{
        "model.kwargs": "{norm: none}",
        "data.batch_size": 32,
        "train.epochs": 2,
        "train.seed": 3,
        "optim.lr": 0.05,
        "optim.weight_decay": 0,
    }
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _torchrun(args: list[str], run: Path, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
         "--master_addr=127.0.0.1", f"--master_port={free_port()}", "-m", "lowbit.cli", "train",
         *args, "--run-dir", str(run)],
        env=env, capture_output=True, text=True, timeout=300,
    )


@pytest.mark.slow
def test_two_processes_match_one_with_batchnorm(tmp_path: Path) -> None:
    """BatchNorm statistics are reduced over both ranks: the global batch, as in one process."""
    i = ARGS.index("model.kwargs={norm: none}")
    args = ARGS[:i - 1] + ARGS[i + 1:]  # drop the --set pair: the default small_cnn has BN
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    one, two = tmp_path / "one", tmp_path / "two"
    subprocess.run([sys.executable, "-m", "lowbit.cli", "train", *args, "--run-dir", str(one)],
                   env=env, check=True, capture_output=True, timeout=300)
    result = _torchrun(args, two, env)
    assert result.returncode == 0, result.stderr[-2000:]
    a, _ = load_checkpoint(one / "final.safetensors")
    b, _ = load_checkpoint(two / "final.safetensors")
    assert any("running_var" in k for k in a)
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=1e-5, msg=key)


@pytest.mark.slow
def test_two_processes_match_one(tmp_path: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    one, two = tmp_path / "one", tmp_path / "two"
    subprocess.run(
        [sys.executable, "-m", "lowbit.cli", "train", *ARGS, "--run-dir", str(one)],
        env=env,
        check=True,
        capture_output=True,
        timeout=300,
    )
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node=2",
            "--master_addr=127.0.0.1",
            f"--master_port={free_port()}",
            "-m",
            "lowbit.cli",
            "train",
            *ARGS,
            "--run-dir",
            str(two),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    a, meta_a = load_checkpoint(one / "final.safetensors")
    b, meta_b = load_checkpoint(two / "final.safetensors")
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=1e-5, msg=key)
    assert abs(meta_a["final_test"]["top1"] - meta_b["final_test"]["top1"]) <= 1.0
    # Only rank 0 wrote the run directory: one metrics row per epoch.
    assert len((two / "metrics.jsonl").read_text().splitlines()) == 2
