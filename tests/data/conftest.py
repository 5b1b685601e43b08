"""Shared fixtures for the data tests: tiny files in the official layouts, a local HTTP server,
and the location of the real shared datasets (from `--data-dir` or `$LOWBIT_DATA`)."""

from __future__ import annotations

import contextlib
import gzip
import os
import struct
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from lowbit.data.files import ENV_DATA_DIR


def pytest_addoption(parser: pytest.Parser) -> None:
    # Only seen when pytest is pointed at tests/data (a root conftest may declare it for all).
    with contextlib.suppress(ValueError):  # already declared by a conftest higher up
        parser.addoption("--data-dir", default=None, help="folder holding the shared datasets")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "real_data: needs the shared datasets (LOWBIT_DATA)")


@pytest.fixture(scope="session")
def real_data_root(pytestconfig: pytest.Config) -> Path:
    """The shared data folder, or skip: these tests need the real files."""
    value = pytestconfig.getoption("data_dir", None) or os.environ.get(ENV_DATA_DIR)
    if not value:
        pytest.skip(f"real datasets not configured: set {ENV_DATA_DIR} (or pass --data-dir) to "
                    f"the shared data folder, e.g. ../shared/data")
    return Path(value).expanduser().resolve()  # absolute: tests symlink into it from tmp dirs


def need(root: Path, folder: str) -> Path:
    """`root/folder`, or skip when that dataset is not in the shared folder."""
    if not (root / folder).is_dir():
        pytest.skip(f"{folder}/ not found in the data folder {root}")
    return root / folder


@pytest.fixture
def real_dir(real_data_root: Path) -> Callable[[str], Path]:
    return lambda folder: need(real_data_root, folder)


@pytest.fixture
def write_cifar_bin() -> Callable[..., tuple[np.ndarray, np.ndarray]]:
    """Write `n` random records in the official binary layout; returns (images, fine labels)."""

    def write(path: Path, n: int, seed: int, label_bytes: int = 1,
              num_classes: int = 10) -> tuple[np.ndarray, np.ndarray]:
        rng = np.random.default_rng(seed)
        images = rng.integers(0, 256, (n, 3, 32, 32), dtype=np.uint8)
        labels = rng.integers(0, num_classes, (n, label_bytes), dtype=np.uint8)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(np.concatenate([labels, images.reshape(n, -1)], axis=1).tobytes())
        return images, labels[:, -1].astype(np.int64)

    return write


@pytest.fixture
def write_idx() -> Callable[[Path, np.ndarray, int | None], Path]:
    """Write a gzip IDX file holding `array` (magic 2049 for 1-d, 2051 for 3-d unless given)."""

    def write(path: Path, array: np.ndarray, magic: int | None = None) -> Path:
        magic = magic if magic is not None else {1: 2049, 3: 2051}[array.ndim]
        header = struct.pack(f">I{array.ndim}I", magic, *array.shape)
        path.parent.mkdir(parents=True, exist_ok=True)
        with gzip.open(path, "wb") as fh:
            fh.write(header + array.astype(np.uint8).tobytes())
        return path

    return write


@dataclass
class Server:
    """A running local HTTP server: `url` serves the files under `root`."""

    url: str
    root: Path
    requests: list[str] = field(default_factory=list)


def _handler(root: Path, requests: list[str]) -> type[SimpleHTTPRequestHandler]:
    class Handler(SimpleHTTPRequestHandler):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, directory=str(root), **kwargs)

        def log_message(self, format: str, *args: Any) -> None:  # keep test output clean
            pass

        def do_GET(self) -> None:
            requests.append(self.path)
            if self.path.startswith("/short/"):  # promise 1000 bytes, send 10, hang up
                self.send_response(200)
                self.send_header("Content-Length", "1000")
                self.end_headers()
                self.wfile.write(b"0123456789")
                self.close_connection = True
                return
            super().do_GET()

    return Handler


@pytest.fixture
def http_server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Server]:
    """A real HTTP server on 127.0.0.1 (ephemeral port) in a thread, shut down after the test."""
    for var in ("no_proxy", "NO_PROXY"):  # a configured proxy must not intercept localhost
        monkeypatch.setenv(var, "127.0.0.1,localhost")
    root = tmp_path / "served"
    root.mkdir()
    requests: list[str] = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(root, requests))
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                              daemon=True)
    thread.start()
    try:
        yield Server(f"http://127.0.0.1:{server.server_port}/", root, requests)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
