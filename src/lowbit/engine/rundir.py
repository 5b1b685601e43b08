"""A run directory: resolved config, git commit, metrics.jsonl, log file and checkpoints."""

from __future__ import annotations

import json
import logging
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch
import yaml

from lowbit.engine.checkpoint import atomic_write_bytes


def git_commit() -> str:
    """The current git commit (with '+dirty' when tracked files changed), or 'unknown'.

    Recorded results and checkpoints (benchmarks/results, benchmarks/checkpoints) are outputs,
    not code: a row recorded while the one before it is still uncommitted is not "dirty".
    """
    try:
        here = Path(__file__).resolve().parent
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=10
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no", "--",
             ":(top,exclude)benchmarks/results", ":(top,exclude)benchmarks/checkpoints"],
            cwd=here,
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
        return (sha + ("+dirty" if dirty else "")) if sha else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def cpu_model() -> str:
    """The CPU's model name (from /proc/cpuinfo on Linux), else the platform's processor."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_bf16_native() -> bool:
    """True when this CPU computes bf16 natively (AVX512-BF16 or AMX, as oneDNN reports).

    Without it, CPU bf16 autocast is emulated and runs many times slower than fp32 (measured
    13x on a 2-core AMD EPYC without AVX-512 for a ResNet-20 training step).
    """
    probe = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)
    try:
        return bool(probe()) if probe is not None else True
    except RuntimeError:
        return True


def machine_info() -> dict[str, Any]:
    import os

    return {
        "cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_model": cpu_model(),
        "cpu_bf16": cpu_bf16_native(),
    }


class RunDir:
    """Owns the files of one run. Only rank 0 creates one."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        self.metrics_path = self.path / "metrics.jsonl"
        self._handler: logging.Handler | None = None

    @property
    def last(self) -> Path:
        return self.path / "last.safetensors"

    @property
    def final(self) -> Path:
        return self.path / "final.safetensors"

    def write_config(self, config: dict[str, Any]) -> None:
        atomic_write_bytes(
            self.path / "config.yaml", yaml.safe_dump(config, sort_keys=False).encode()
        )
        info = {
            "command": " ".join(["lowbit", *sys.argv[1:]]),
            "commit": git_commit(),
            "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "machine": machine_info(),
        }
        atomic_write_bytes(self.path / "run.json", json.dumps(info, indent=2).encode())

    def attach_log(self) -> None:
        handler = logging.FileHandler(self.path / "train.log")
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        logging.getLogger("lowbit").addHandler(handler)
        self._handler = handler

    def detach_log(self) -> None:
        if self._handler is not None:
            logging.getLogger("lowbit").removeHandler(self._handler)
            self._handler.close()

    def log_metrics(self, row: dict[str, Any]) -> None:
        with open(self.metrics_path, "a") as fh:
            fh.write(json.dumps(row) + "\n")

    def truncate_metrics(self, before_epoch: int) -> None:
        """Drop rows of epochs >= `before_epoch` (written after the checkpoint we resume from)."""
        if not self.metrics_path.exists():
            return
        rows = [
            line
            for line in self.metrics_path.read_text().splitlines()
            if line.strip() and json.loads(line).get("epoch", -1) < before_epoch
        ]
        atomic_write_bytes(self.metrics_path, "".join(r + "\n" for r in rows).encode())

    def read_metrics(self) -> list[dict[str, Any]]:
        if not self.metrics_path.exists():
            return []
        return [json.loads(x) for x in self.metrics_path.read_text().splitlines() if x.strip()]
