"""MNIST and Fashion-MNIST from the official IDX gz files, md5-checked."""

from __future__ import annotations

import gzip
import struct
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lowbit.data.base import DatasetSplits, ImageData
from lowbit.data.files import check_file, download
from lowbit.errors import DataError

SOURCES: dict[str, dict[str, Any]] = {
    "mnist": {
        "dir": "mnist", "url": "https://ossci-datasets.s3.amazonaws.com/mnist/",
        "mean": (0.1307,), "std": (0.3081,),
        "files": {"train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
                  "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
                  "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
                  "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c"}},
    "fashion_mnist": {
        "dir": "fashion-mnist",
        "url": "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
        "mean": (0.2860,), "std": (0.3530,),
        "files": {"train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
                  "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
                  "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
                  "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310"}},
}


def read_idx(path: Path) -> np.ndarray:
    """Read a gzip-compressed big-endian IDX file (magic 2049 labels, 2051 images).

    Raises:
        DataError: the file is not valid gzip, not IDX, or its body does not match its header.
    """
    try:
        with gzip.open(path, "rb") as fh:
            raw = fh.read()
    except (OSError, EOFError, zlib.error) as exc:
        raise DataError(f"corrupt data file {path}: {exc}; obtain the file again") from exc
    magic = struct.unpack(">I", raw[:4])[0] if len(raw) >= 4 else 0
    ndim = {2049: 1, 2051: 3}.get(magic)
    if ndim is None:
        raise DataError(f"corrupt data file {path}: not an IDX label/image file (magic {magic})")
    header = 4 + 4 * ndim
    if len(raw) < header:  # struct.unpack would raise a bare struct.error
        raise DataError(f"corrupt data file {path}: IDX header cut short; obtain the file again")
    dims = struct.unpack(f">{ndim}I", raw[4:header])
    body = np.frombuffer(raw, dtype=np.uint8, offset=header)
    if body.size != int(np.prod(dims)):
        raise DataError(f"corrupt data file {path}: {body.size} values for shape {dims}")
    return body.reshape(dims)


def load_mnist(name: str, root: Path, download_ok: bool = False) -> DatasetSplits:
    """Load `mnist` or `fashion_mnist` from `root/<dir>/`, md5-checking every file.

    Raises:
        DataError: a file is missing or corrupt, or images and labels do not pair up.
    """
    src = SOURCES[name]
    folder = root / src["dir"]
    arrays = {}
    for fname, md5 in src["files"].items():
        path = folder / fname
        if download_ok:  # download() keeps a good file and replaces a corrupt one
            download(src["url"] + fname, path, md5)
        check_file(path, md5, f"download it from {src['url']}{fname} "
                   "(or pass --set data.download=true)")
        arrays[fname.split("-")[0] + "-" + fname.split("-")[1]] = read_idx(path)
    splits = {}
    for split, prefix in (("train", "train"), ("test", "t10k")):
        images, labels = arrays[f"{prefix}-images"], arrays[f"{prefix}-labels"]
        if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
            raise DataError(f"{folder}: {prefix}-images {images.shape} and {prefix}-labels "
                            f"{labels.shape} do not pair up; obtain the files again")
        splits[split] = ImageData(torch.from_numpy(images.copy()).unsqueeze(1),
                                  torch.from_numpy(labels.astype(np.int64)), 10, src["mean"],
                                  src["std"], flip=False, pad=2)
    return DatasetSplits(name, splits["train"], splits["test"])
