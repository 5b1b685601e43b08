"""lowbit.data.cifar: binary and python versions, md5 checks, the restricted unpickler, download.

Parsing is tested on tiny files written here in the official layouts; the md5 table is patched
per test (monkeypatch), never edited, so the production sums stay as published.
"""

from __future__ import annotations

import copy
import io
import os
import pickle
import subprocess
import tarfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from lowbit.data import cifar, load_dataset
from lowbit.data.files import md5sum
from lowbit.errors import DataError

BIN10 = "cifar-10-batches-bin"
TRAIN10 = [f"data_batch_{i}.bin" for i in range(1, 6)]


def patch_md5s(monkeypatch: pytest.MonkeyPatch, name: str, index: int, files_root: Path,
               archive_md5: str | None = None) -> None:
    """Point one layout's md5 table at the files under `files_root/<dir>/` (a patched copy)."""
    layouts = copy.deepcopy(cifar.LAYOUTS[name])
    lay = layouts[index]
    for split in ("train", "test"):
        lay[split] = [(f, md5sum(files_root / lay["dir"] / f)) for f, _ in lay[split]]
    if archive_md5 is not None:
        lay["archive"] = (lay["archive"][0], archive_md5)
    monkeypatch.setitem(cifar.LAYOUTS, name, layouts)


def make_cifar10_bin(write: Callable[..., Any], folder: Path) -> dict[str, np.ndarray]:
    train = [write(folder / f, 3 + i, seed=i) for i, f in enumerate(TRAIN10)]
    test = write(folder / "test_batch.bin", 4, seed=99)
    return {"train_x": np.concatenate([t[0] for t in train]),
            "train_y": np.concatenate([t[1] for t in train]), "test_x": test[0], "test_y": test[1]}


def test_binary_version_parses_official_layout(tmp_path, monkeypatch, write_cifar_bin) -> None:
    want = make_cifar10_bin(write_cifar_bin, tmp_path / BIN10)
    patch_md5s(monkeypatch, "cifar10", 0, tmp_path)
    data = load_dataset("cifar10", tmp_path)
    assert data.train.images.shape == (25, 3, 32, 32) and data.train.images.dtype == torch.uint8
    assert torch.equal(data.train.images, torch.from_numpy(want["train_x"]))
    assert data.train.labels.tolist() == want["train_y"].tolist()
    assert torch.equal(data.test.images, torch.from_numpy(want["test_x"]))
    assert data.test.labels.tolist() == want["test_y"].tolist()
    assert data.train.classes[:3] == ["airplane", "automobile", "bird"]
    assert data.train.num_classes == 10 and data.train.flip and data.train.pad == 4


def test_production_md5_table_rejects_a_forged_file(tmp_path, write_cifar_bin) -> None:
    make_cifar10_bin(write_cifar_bin, tmp_path / BIN10)
    with pytest.raises(DataError) as err:
        load_dataset("cifar10", tmp_path)
    msg = str(err.value)
    assert "\n" not in msg and "data_batch_1.bin" in msg
    assert "expected 5dd7e06a14cb22eb9f671a540d1b7c25" in msg


def test_missing_file_names_the_archive_to_get(tmp_path, monkeypatch, write_cifar_bin) -> None:
    make_cifar10_bin(write_cifar_bin, tmp_path / BIN10)
    patch_md5s(monkeypatch, "cifar10", 0, tmp_path)
    (tmp_path / BIN10 / "data_batch_3.bin").unlink()
    with pytest.raises(DataError, match=r"missing data file .*data_batch_3\.bin; it is part of "
                                        r"https://www\.cs\.toronto\.edu/~kriz/cifar-10-binary"):
        load_dataset("cifar10", tmp_path)


def test_absent_dataset_says_where_it_looked(tmp_path) -> None:
    with pytest.raises(DataError, match="cifar-10-batches-bin/ or .*-py/.*LOWBIT_DATA"):
        load_dataset("cifar10", tmp_path)


def test_cifar100_binary_reads_the_fine_label(tmp_path, write_cifar_bin) -> None:
    folder = tmp_path / "cifar-100-binary"
    x, y = write_cifar_bin(folder / "train.bin", 6, seed=1, label_bytes=2, num_classes=100)
    write_cifar_bin(folder / "test.bin", 2, seed=2, label_bytes=2, num_classes=100)
    raw = np.fromfile(folder / "train.bin", np.uint8).reshape(6, -1)
    assert not np.array_equal(raw[:, 0], raw[:, 1])  # coarse and fine differ: the test can tell
    data = load_dataset("cifar100", tmp_path)
    assert data.train.labels.tolist() == raw[:, 1].tolist() == y.tolist()
    assert torch.equal(data.train.images, torch.from_numpy(x)) and data.train.num_classes == 100


def test_truncated_binary_file(tmp_path, write_cifar_bin) -> None:
    folder = tmp_path / "cifar-100-binary"  # no published per-file md5: the layout check decides
    write_cifar_bin(folder / "train.bin", 3, seed=1, label_bytes=2)
    write_cifar_bin(folder / "test.bin", 2, seed=2, label_bytes=2)
    (folder / "train.bin").write_bytes((folder / "train.bin").read_bytes()[:-100])
    with pytest.raises(DataError, match=r"train\.bin: 9122 bytes is not a whole number of "
                                        r"3074-byte records"):
        load_dataset("cifar100", tmp_path)


def test_label_out_of_range_names_the_file(tmp_path, write_cifar_bin) -> None:
    folder = tmp_path / "cifar-100-binary"
    write_cifar_bin(folder / "train.bin", 3, seed=1, label_bytes=2)
    write_cifar_bin(folder / "test.bin", 2, seed=2, label_bytes=2)
    raw = bytearray((folder / "test.bin").read_bytes())
    (folder / "test.bin").write_bytes(bytes(raw[:1]) + b"\xc8" + raw[2:])  # fine label 200
    with pytest.raises(DataError, match=r"test\.bin: labels outside 0\.\.99"):
        load_dataset("cifar100", tmp_path)


# ---- python version ------------------------------------------------------------------------

def write_py_batches(folder: Path, protocol: int, names: list[str],
                     n: int = 3) -> tuple[np.ndarray, np.ndarray]:
    folder.mkdir(parents=True, exist_ok=True)
    xs, ys = [], []
    for i, name in enumerate(names):
        rng = np.random.default_rng(i)
        x = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        y = rng.integers(0, 10, n).tolist()
        entry = {"batch_label": f"batch {i}", "labels": y, "data": x,
                 "filenames": [f"img_{i}_{j}.png" for j in range(n)]}
        (folder / name).write_bytes(pickle.dumps(entry, protocol=protocol))
        xs.append(x)
        ys += y
    return np.concatenate(xs).reshape(-1, 3, 32, 32), np.array(ys)


PY10 = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]


@pytest.mark.parametrize("protocol", [2, 3, pickle.HIGHEST_PROTOCOL])
def test_python_version_parses(tmp_path, monkeypatch, protocol) -> None:
    x, y = write_py_batches(tmp_path / "cifar-10-batches-py", protocol, PY10)
    patch_md5s(monkeypatch, "cifar10", 1, tmp_path)
    data = load_dataset("cifar10", tmp_path)
    assert torch.equal(data.train.images, torch.from_numpy(x[:15]))
    assert data.train.labels.tolist() == y[:15].tolist()
    assert torch.equal(data.test.images, torch.from_numpy(x[15:]))


def test_python2_style_pickle_naming_numpy_core_loads(tmp_path) -> None:
    # The official pickles come from Python 2 / numpy 1 and name numpy.core.multiarray.
    x = np.arange(2 * 3072, dtype=np.uint8).reshape(2, 3072) % 251
    blob = pickle.dumps({"data": x, "labels": [1, 2]}, protocol=2)
    blob = blob.replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
    assert b"numpy.core.multiarray" in blob
    (tmp_path / "batch").write_bytes(blob)
    images, labels = cifar._read_py(tmp_path / "batch", "labels")
    assert np.array_equal(images.reshape(2, -1), x) and labels.tolist() == [1, 2]


class _Payload:
    """Pickles to a call of `func(*args)`: what a malicious data file would carry."""

    def __init__(self, func: Any, args: tuple[Any, ...]) -> None:
        self.func, self.args = func, args

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        return self.func, self.args


@pytest.mark.parametrize("kind", ["os.system", "eval", "subprocess"])
def test_restricted_unpickler_refuses_code(tmp_path, monkeypatch, kind) -> None:
    marker = tmp_path / "pwned"
    payload = {"os.system": _Payload(os.system, (f"touch {marker}",)),
               "eval": _Payload(eval, (f"open({str(marker)!r}, 'w')",)),
               "subprocess": _Payload(subprocess.call, (["touch", str(marker)],))}[kind]
    folder = tmp_path / "cifar-10-batches-py"
    write_py_batches(folder, 2, PY10)
    blob = pickle.dumps({"data": payload, "labels": [0]}, protocol=2)
    (folder / "data_batch_1").write_bytes(blob)
    patch_md5s(monkeypatch, "cifar10", 1, tmp_path)  # the md5 table cannot be what saves us
    with pytest.raises(DataError, match=r"data_batch_1: refusing to load \w+\.\w+"):
        load_dataset("cifar10", tmp_path)
    assert not marker.exists()


@pytest.mark.parametrize("cut", [1, 40, 1000, -5])
def test_truncated_pickle(tmp_path, cut) -> None:
    x = np.zeros((4, 3072), np.uint8)
    blob = pickle.dumps({"data": x, "labels": [0, 1, 2, 3]}, protocol=2)
    (tmp_path / "batch").write_bytes(blob[:cut])
    with pytest.raises(DataError, match="corrupt data file .*batch"):
        cifar._read_py(tmp_path / "batch", "labels")


@pytest.mark.parametrize("entry, message", [
    ({"data": np.zeros((2, 3072), np.float32), "labels": [0, 1]}, "not a uint8 array"),
    ({"data": np.zeros((2, 3000), np.uint8), "labels": [0, 1]}, "not a uint8 array"),
    ({"data": np.zeros((2, 3072), np.uint8)}, "'labels'"),
    (["not", "a", "dict"], "corrupt data file"),
])
def test_malformed_pickle_content(tmp_path, entry, message) -> None:
    (tmp_path / "batch").write_bytes(pickle.dumps(entry, protocol=4))
    with pytest.raises(DataError, match=message):
        cifar._read_py(tmp_path / "batch", "labels")


def test_label_count_mismatch_names_the_file(tmp_path, monkeypatch) -> None:
    folder = tmp_path / "cifar-10-batches-py"
    write_py_batches(folder, 4, PY10)
    bad = {"data": np.zeros((3, 3072), np.uint8), "labels": [0, 1]}
    (folder / "test_batch").write_bytes(pickle.dumps(bad))
    patch_md5s(monkeypatch, "cifar10", 1, tmp_path)
    with pytest.raises(DataError, match="test_batch: 2 labels for 3 images"):
        load_dataset("cifar10", tmp_path)


# ---- download --------------------------------------------------------------------------------

def make_archive(path: Path, members: dict[str, bytes]) -> str:
    with tarfile.open(path, "w:gz") as tar:
        for name, blob in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))
    return md5sum(path)


def serve_cifar10(server: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                  write: Callable[..., Any]) -> dict[str, np.ndarray]:
    staging = tmp_path / "staging"
    want = make_cifar10_bin(write, staging / BIN10)
    members = {f"{BIN10}/{p.name}": p.read_bytes() for p in sorted((staging / BIN10).iterdir())}
    archive_md5 = make_archive(server.root / "cifar-10-binary.tar.gz", members)
    monkeypatch.setattr(cifar, "URL", server.url)
    patch_md5s(monkeypatch, "cifar10", 0, staging, archive_md5)
    return want


def test_download_end_to_end(http_server, tmp_path, monkeypatch, write_cifar_bin) -> None:
    want = serve_cifar10(http_server, tmp_path, monkeypatch, write_cifar_bin)
    root = tmp_path / "root"
    data = load_dataset("cifar10", root, download=True)
    assert http_server.requests == ["/cifar-10-binary.tar.gz"]
    assert torch.equal(data.train.images, torch.from_numpy(want["train_x"]))
    assert data.test.labels.tolist() == want["test_y"].tolist()
    load_dataset("cifar10", root, download=True)  # complete and verified: nothing fetched
    assert http_server.requests == ["/cifar-10-binary.tar.gz"]
    (root / BIN10 / "test_batch.bin").unlink()  # a half-extracted folder is completed
    (root / "cifar-10-binary.tar.gz").unlink()
    assert len(load_dataset("cifar10", root, download=True).test) == 4
    assert len(http_server.requests) == 2


def test_download_with_wrong_archive_md5(http_server, tmp_path, monkeypatch,
                                         write_cifar_bin) -> None:
    serve_cifar10(http_server, tmp_path, monkeypatch, write_cifar_bin)
    lay = cifar.LAYOUTS["cifar10"][0]
    lay["archive"] = (lay["archive"][0], "f" * 32)  # a patched copy: monkeypatch restores it
    root = tmp_path / "root"
    with pytest.raises(DataError, match="md5 .*expected f{32}"):
        load_dataset("cifar10", root, download=True)
    assert list(root.iterdir()) == []


def test_archive_escaping_the_data_folder_is_refused(http_server, tmp_path, monkeypatch) -> None:
    md5 = make_archive(http_server.root / "cifar-10-binary.tar.gz", {"../escaped.txt": b"x"})
    monkeypatch.setattr(cifar, "URL", http_server.url)
    lay = copy.deepcopy(cifar.LAYOUTS["cifar10"])
    lay[0]["archive"] = (lay[0]["archive"][0], md5)
    monkeypatch.setitem(cifar.LAYOUTS, "cifar10", lay)
    with pytest.raises(DataError, match="cannot extract"):
        load_dataset("cifar10", tmp_path / "root", download=True)
    assert not (tmp_path / "escaped.txt").exists()


# ---- the real shared data --------------------------------------------------------------------

@pytest.mark.real_data
def test_real_cifar10(real_dir) -> None:
    data = load_dataset("cifar10", real_dir(BIN10).parent)
    assert data.train.images.shape == (50000, 3, 32, 32)
    assert data.test.images.shape == (10000, 3, 32, 32)
    assert torch.bincount(data.train.labels).tolist() == [5000] * 10
    assert torch.bincount(data.test.labels).tolist() == [1000] * 10
    assert data.test.labels[:10].tolist() == [3, 8, 8, 0, 6, 6, 1, 6, 3, 1]
    assert data.train.labels[:10000].bincount().tolist()[:3] == [1005, 974, 1032]


@pytest.mark.real_data
def test_real_cifar10_corrupt_copy(real_dir, tmp_path) -> None:
    folder = tmp_path / BIN10
    folder.mkdir()
    for p in real_dir(BIN10).iterdir():
        (folder / p.name).symlink_to(p)
    (folder / "test_batch.bin").unlink()
    blob = bytearray((real_dir(BIN10) / "test_batch.bin").read_bytes())
    blob[12345] ^= 1
    (folder / "test_batch.bin").write_bytes(bytes(blob))
    with pytest.raises(DataError, match=r"test_batch\.bin: md5 \w+, expected "
                                        r"803d5f7f4d78ea53de84dbe85f74fb6d"):
        load_dataset("cifar10", tmp_path)
