"""`lowbit train --nproc N`: distributed training on this machine without torchrun's noise.

Starts N copies of the same `lowbit` command with the environment torchrun would give them
(RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT), lets rank 0 print, and keeps the
other ranks' output in memory. If any rank fails, the others are stopped and the failure ends
as one line: the failing rank's own `lowbit: error: ...` line, once.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from typing import IO

ERROR_PREFIX = "lowbit: error:"


def free_port() -> int:
    """A TCP port on the loopback interface that nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def launch(nproc: int, argv: list[str]) -> int:
    """Run `lowbit *argv` as `nproc` ranks; the exit code of the first failing rank, else 0."""
    port, logs, procs = free_port(), [], []
    for rank in range(nproc):
        env = {**os.environ, "RANK": str(rank), "LOCAL_RANK": str(rank),
               "WORLD_SIZE": str(nproc), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
        log = tempfile.TemporaryFile(mode="w+") if rank else None  # noqa: SIM115 - closed below
        logs.append(log)
        procs.append(subprocess.Popen([sys.executable, "-m", "lowbit.cli", *argv], env=env,
                                      stdout=log, stderr=log if rank else subprocess.PIPE,
                                      text=True))
    printed: list[str] = []  # rank 0's error lines, as it prints them
    relay = threading.Thread(target=_relay, args=(procs[0].stderr, printed), daemon=True)
    relay.start()
    code = _wait(procs)
    relay.join()
    if code and not printed:
        _report(logs)
    for log in logs:
        if log is not None:
            log.close()
    return code


def _wait(procs: list[subprocess.Popen]) -> int:
    """Wait for every rank; at the first failure stop the rest and return its code."""
    while True:
        codes = [p.poll() for p in procs]
        failed = next((c for c in codes if c not in (None, 0)), None)
        if failed is not None:
            for p in procs:
                if p.poll() is None:
                    p.terminate()
            for p in procs:
                p.wait()
            return failed
        if all(c == 0 for c in codes):
            return 0
        time.sleep(0.2)


def _relay(stream: IO[str], printed: list[str]) -> None:
    """Copy rank 0's stderr to ours as it comes, noting its error lines."""
    for line in stream:
        sys.stderr.write(line)
        sys.stderr.flush()
        if line.startswith(ERROR_PREFIX):
            printed.append(line)


def _report(logs: list) -> None:
    """Print the first other rank's error line (rank 0 printed none)."""
    for log in logs[1:]:
        log.seek(0)
        line = next((x.strip() for x in log if x.startswith(ERROR_PREFIX)), None)
        if line:
            print(line, file=sys.stderr)
            return
    print(f"{ERROR_PREFIX} a rank ended with an error; run with one process to see it",
          file=sys.stderr)
