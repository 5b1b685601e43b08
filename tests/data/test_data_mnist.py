"""lowbit.data.mnist: IDX parsing, corrupt files, md5 checks, and the real shared files."""

from __future__ import annotations

import copy
import gzip
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from lowbit.data import load_dataset, mnist
from lowbit.data.files import md5sum
from lowbit.errors import DataError

FILES = ["train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", "t10k-images-idx3-ubyte.gz",
         "t10k-labels-idx1-ubyte.gz"]


def make_mnist(write_idx, folder: Path, n_train: int = 6, n_test: int = 3) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    arrays = {"train-images": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
              "train-labels": rng.integers(0, 10, n_train, dtype=np.uint8),
              "t10k-images": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
              "t10k-labels": rng.integers(0, 10, n_test, dtype=np.uint8)}
    for fname in FILES:
        write_idx(folder / fname, arrays[fname.rsplit("-", 2)[0]])
    return arrays


def patch_md5s(monkeypatch: pytest.MonkeyPatch, name: str, folder: Path) -> None:
    sources = copy.deepcopy(mnist.SOURCES)
    sources[name]["files"] = {f: md5sum(folder / f) for f in FILES}
    monkeypatch.setattr(mnist, "SOURCES", sources)


def test_read_idx_images_and_labels(tmp_path, write_idx) -> None:
    images = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    assert np.array_equal(mnist.read_idx(write_idx(tmp_path / "i.gz", images)), images)
    labels = np.array([7, 0, 9], np.uint8)
    assert np.array_equal(mnist.read_idx(write_idx(tmp_path / "l.gz", labels)), labels)


def test_load_mnist_from_idx_files(tmp_path, monkeypatch, write_idx) -> None:
    arrays = make_mnist(write_idx, tmp_path / "mnist")
    patch_md5s(monkeypatch, "mnist", tmp_path / "mnist")
    data = load_dataset("mnist", tmp_path)
    assert data.train.images.shape == (6, 1, 28, 28) and data.test.images.shape == (3, 1, 28, 28)
    assert torch.equal(data.train.images[:, 0], torch.from_numpy(arrays["train-images"]))
    assert data.test.labels.tolist() == arrays["t10k-labels"].tolist()
    assert data.train.labels.dtype == torch.int64 and not data.train.flip


def test_production_md5s_reject_forged_files(tmp_path, write_idx) -> None:
    make_mnist(write_idx, tmp_path / "fashion-mnist")
    with pytest.raises(DataError, match="train-images-idx3-ubyte.gz: md5 .*, expected "
                                        "8d4fb7e6c68d591d4c3dfef9ec88bf0d"):
        load_dataset("fashion_mnist", tmp_path)


def test_missing_file_names_where_to_get_it(tmp_path) -> None:
    with pytest.raises(DataError, match="missing data file .*train-images-idx3-ubyte.gz; "
                                        "download it from https://"):
        load_dataset("mnist", tmp_path)


def test_images_and_labels_must_pair_up(tmp_path, monkeypatch, write_idx) -> None:
    make_mnist(write_idx, tmp_path / "mnist")
    write_idx(tmp_path / "mnist" / "t10k-labels-idx1-ubyte.gz", np.zeros(5, np.uint8))
    patch_md5s(monkeypatch, "mnist", tmp_path / "mnist")
    with pytest.raises(DataError, match=r"t10k-images \(3, 28, 28\) and t10k-labels \(5,\)"):
        load_dataset("mnist", tmp_path)


def test_corrupt_gzip(tmp_path, write_idx) -> None:
    path = write_idx(tmp_path / "x.gz", np.zeros((4, 5, 5), np.uint8))
    blob = bytearray(path.read_bytes())
    blob[-8:-4] = b"\x00" * 4  # the CRC-32 in the gzip trailer
    path.write_bytes(bytes(blob))
    with pytest.raises(DataError, match=r"corrupt data file .*x\.gz: CRC check failed"):
        mnist.read_idx(path)


def test_truncated_gzip(tmp_path, write_idx) -> None:
    path = write_idx(tmp_path / "x.gz", np.arange(4000, dtype=np.uint32).astype(np.uint8))
    path.write_bytes(path.read_bytes()[:-12])
    with pytest.raises(DataError, match=r"corrupt data file .*x\.gz: .*ended before"):
        mnist.read_idx(path)


def test_not_gzip_at_all(tmp_path) -> None:
    path = tmp_path / "x.gz"
    path.write_bytes(b"<html>404 not found</html>")
    with pytest.raises(DataError, match=r"corrupt data file .*x\.gz: Not a gzipped file"):
        mnist.read_idx(path)


def test_wrong_magic(tmp_path, write_idx) -> None:
    path = write_idx(tmp_path / "x.gz", np.zeros((2, 2, 2), np.uint8), magic=2052)
    with pytest.raises(DataError, match="not an IDX label/image file \\(magic 2052\\)"):
        mnist.read_idx(path)


@pytest.mark.parametrize("raw", [b"\x00\x00\x08\x03\x00\x00", b"\x00\x00\x08\x01", b"\x00"])
def test_header_cut_short(tmp_path, raw) -> None:
    path = tmp_path / "x.gz"
    with gzip.open(path, "wb") as fh:
        fh.write(raw)
    with pytest.raises(DataError, match=r"corrupt data file .*x\.gz"):
        mnist.read_idx(path)


def test_body_size_mismatch(tmp_path, write_idx) -> None:
    path = tmp_path / "x.gz"
    with gzip.open(path, "wb") as fh:
        fh.write(b"\x00\x00\x08\x03" + b"\x00\x00\x00\x02" * 3 + b"\x01" * 7)
    with pytest.raises(DataError, match=r"7 values for shape \(2, 2, 2\)"):
        mnist.read_idx(path)


@pytest.mark.real_data
@pytest.mark.parametrize("name, folder", [("mnist", "mnist"), ("fashion_mnist", "fashion-mnist")])
def test_real_mnist_shapes(real_dir, name, folder) -> None:
    data = load_dataset(name, real_dir(folder).parent)
    assert data.train.images.shape == (60000, 1, 28, 28)
    assert data.test.images.shape == (10000, 1, 28, 28)
    assert data.train.images.dtype == torch.uint8 and data.train.num_classes == 10
    assert set(data.test.labels.unique().tolist()) == set(range(10))
    if name == "fashion_mnist":  # balanced by construction
        assert data.test.labels.bincount().tolist() == [1000] * 10


@pytest.mark.real_data
def test_real_small_file_corrupt_copy(real_dir, tmp_path) -> None:
    folder = tmp_path / "mnist"
    shutil.copytree(real_dir("mnist"), folder)
    for p in folder.iterdir():
        p.chmod(0o644)
    target = folder / "t10k-labels-idx1-ubyte.gz"
    blob = bytearray(target.read_bytes())
    blob[-10] ^= 0xFF
    target.write_bytes(bytes(blob))
    with pytest.raises(DataError) as err:
        load_dataset("mnist", tmp_path)
    assert "\n" not in str(err.value) and str(target) in str(err.value)
    assert "expected ec29112dd5afa0611ce80d1b7f02629c" in str(err.value)


def test_download_fetches_only_missing_or_bad_files(http_server, tmp_path, monkeypatch,
                                                    write_idx) -> None:
    make_mnist(write_idx, http_server.root)
    patch_md5s(monkeypatch, "mnist", http_server.root)
    monkeypatch.setitem(mnist.SOURCES["mnist"], "url", http_server.url)
    folder = tmp_path / "mnist"
    folder.mkdir()
    shutil.copy(http_server.root / FILES[0], folder / FILES[0])  # already here and good
    (folder / FILES[1]).write_bytes(b"partial")  # here but corrupt
    data = load_dataset("mnist", tmp_path, download=True)
    assert sorted(http_server.requests) == sorted("/" + f for f in FILES[1:])
    assert len(data.train) == 6 and len(data.test) == 3
