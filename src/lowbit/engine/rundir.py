"""A run directory: resolved config, git commit, metrics.jsonl, log file and checkpoints."""

from __future__ import annotations

import fcntl
import json
import logging
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import IO, Any

import torch
import yaml

from lowbit.engine.checkpoint import atomic_write_bytes
from lowbit.engine.sinks import Sink, make_sinks
from lowbit.errors import LowbitError

log = logging.getLogger(__name__)


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
    return {
        "cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_model": cpu_model(),
        "cpu_bf16": cpu_bf16_native(),
        **({"gpu": torch.cuda.get_device_name(0), "gpus": torch.cuda.device_count()}
           if torch.cuda.is_available() else {}),
    }


def _invocation() -> dict[str, str]:
    """How this process was started: the command line and the code's commit."""
    return {"command": " ".join(["lowbit", *sys.argv[1:]]), "commit": git_commit()}


RUN_FILES = ("metrics.jsonl", "last.safetensors", "final.safetensors")


class RunDirError(LowbitError):
    """A run directory is in use, holds another run, or is not a run directory."""


class RunDir:
    """Owns the files of one run, for one process at a time. Only rank 0 creates one.

    Opening takes an exclusive lock on `<run>/.lock` (released when the process ends, however it
    ends): a second process gets a one-line error instead of interleaving files. A new run
    (`resume=False`) refuses a directory that already holds a run's files, so it never appends to
    an old run's metrics; temp files left by a save that was killed are removed.
    """

    def __init__(self, path: str | Path, resume: bool = False) -> None:
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        self.metrics_path = self.path / "metrics.jsonl"
        self._handler: logging.Handler | None = None
        self.sinks: list[Sink] = []
        self._lock = _lock(self.path)
        for stale in self.path.glob(".*.tmp"):
            stale.unlink(missing_ok=True)
        held = [n for n in RUN_FILES if (self.path / n).exists()]
        if held and not resume:
            raise RunDirError(f"run directory {self.path} already holds a run ({', '.join(held)})"
                              f": continue it with --resume {self.path}, or choose another "
                              "--run-dir")

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
        info = {**_invocation(), "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
                "machine": machine_info()}
        atomic_write_bytes(self.path / "run.json", json.dumps(info, indent=2).encode())

    def note_resume(self, epoch: int) -> None:
        """Append this resume (command, commit, time, the epoch it continues from) to run.json:
        a run finished at a later commit than it started says so."""
        if not (self.path / "run.json").exists():
            return  # a folder from before run.json existed: nothing to append to
        info = json.loads((self.path / "run.json").read_text())
        info.setdefault("resumes", []).append({
            **_invocation(), "at": time.strftime("%Y-%m-%dT%H:%M:%S"), "epoch": epoch,
            "machine": machine_info()})
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

    def close(self) -> None:
        """Release the lock (also released when the process ends)."""
        self.detach_log()
        for sink in self.sinks:
            sink.close()
        self._lock.close()

    def add_sinks(self, names: list[str], resume_epoch: int | None = None) -> None:
        """Also write metrics to these sinks (`lowbit.engine.sinks`: csv, tensorboard)."""
        self.sinks = make_sinks(names, self.path, resume_epoch)

    def log_metrics(self, row: dict[str, Any]) -> None:
        with open(self.metrics_path, "a") as fh:
            fh.write(json.dumps(row) + "\n")
        if self.sinks:
            rows = self.read_metrics()
            for sink in self.sinks:
                sink.write(row, rows)

    def truncate_metrics(self, before_epoch: int) -> None:
        """Drop rows of epochs >= `before_epoch` (written after the checkpoint we resume from).

        A last line cut short by a kill is one of them (metrics are written before the
        checkpoint); a malformed line elsewhere is an error naming the file and line."""
        if not self.metrics_path.exists():
            return
        lines = [x for x in self.metrics_path.read_text().splitlines() if x.strip()]
        if lines and not _parses(lines[-1]):
            log.info("%s: dropping a last line cut short by a kill", self.metrics_path)
            lines = lines[:-1]
        rows = [line for i, line in enumerate(lines, 1)
                if _row(line, self.metrics_path, i).get("epoch", -1) < before_epoch]
        atomic_write_bytes(self.metrics_path, "".join(r + "\n" for r in rows).encode())

    def read_metrics(self) -> list[dict[str, Any]]:
        if not self.metrics_path.exists():
            return []
        return [_row(x, self.metrics_path, i)
                for i, x in enumerate(self.metrics_path.read_text().splitlines(), 1) if x.strip()]


def _parses(line: str) -> bool:
    try:
        return isinstance(json.loads(line), dict)
    except json.JSONDecodeError:
        return False


def _row(line: str, path: Path, number: int) -> dict[str, Any]:
    try:
        row = json.loads(line)
    except json.JSONDecodeError:
        row = None
    if not isinstance(row, dict):
        raise RunDirError(f"{path} line {number} is not a JSON object (truncated by a kill?): "
                          f"{line[:60]!r}; delete that line to resume")
    return row


def _lock(path: Path) -> IO[str]:
    """An exclusive, non-blocking lock on `path/.lock`; one line naming the holder if taken."""
    fh = open(path / ".lock", "a+")  # noqa: SIM115 - held open for the run's lifetime
    try:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        fh.seek(0)
        holder = fh.read().strip() or "another process"
        fh.close()
        raise RunDirError(f"run directory {path} is in use by {holder}; wait for it to finish "
                          "or choose another --run-dir") from None
    fh.seek(0)
    fh.truncate()
    fh.write(f"pid {os.getpid()}")
    fh.flush()
    return fh
