"""CIFAR-10 and CIFAR-100 from the official files (binary or python version), md5-checked.

Either version is accepted under the data root: the binary version (`cifar-10-batches-bin/`,
`cifar-100-binary/`) or the python version (`cifar-10-batches-py/`, `cifar-100-python/`). The
python pickles are read with a restricted unpickler that only builds plain containers and numpy
arrays, so no code from the file runs.
"""

from __future__ import annotations

import pickle
import tarfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lowbit.data.base import DatasetSplits, ImageData
from lowbit.data.files import check_file, download
from lowbit.errors import DataError

URL = "https://www.cs.toronto.edu/~kriz/"
CIFAR10_MEAN, CIFAR10_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
CIFAR100_MEAN, CIFAR100_STD = (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)

# (folder, {split: [(file, md5)]}, label bytes per record (binary) or label key (python))
LAYOUTS: dict[str, list[dict[str, Any]]] = {
    "cifar10": [
        {"dir": "cifar-10-batches-bin", "kind": "bin", "label_bytes": 1, "label_at": 0,
         "archive": ("cifar-10-binary.tar.gz", "c32a1d4ab5d03f1284b67883e8d87530"),
         "train": [("data_batch_1.bin", "5dd7e06a14cb22eb9f671a540d1b7c25"),
                   ("data_batch_2.bin", "5ea93a67294ea407fff1d09f752e9692"),
                   ("data_batch_3.bin", "942cd6a4bcdd0dd3c604fbe906cb4421"),
                   ("data_batch_4.bin", "ae636b3ba5c66a11e91e8cb52e771fcb"),
                   ("data_batch_5.bin", "53f37980c15c3d472c316c40844f3f0d")],
         "test": [("test_batch.bin", "803d5f7f4d78ea53de84dbe85f74fb6d")]},
        {"dir": "cifar-10-batches-py", "kind": "py", "label_key": "labels",
         "archive": ("cifar-10-python.tar.gz", "c58f30108f718f92721af3b95e74349a"),
         "train": [("data_batch_1", "c99cafc152244af753f735de768cd75f"),
                   ("data_batch_2", "d4bba439e000b95fd0a9bffe97cbabec"),
                   ("data_batch_3", "54ebc095f3ab1f0389bbae665268c751"),
                   ("data_batch_4", "634d18415352ddfa80567beed471001a"),
                   ("data_batch_5", "482c414d41f54cd18b22e5b47cb7c3cb")],
         "test": [("test_batch", "40351d587109b95175f43aff81a1287e")]},
    ],
    "cifar100": [
        {"dir": "cifar-100-python", "kind": "py", "label_key": "fine_labels",
         "archive": ("cifar-100-python.tar.gz", "eb9058c3a382ffc7106e4002c42a8d85"),
         "train": [("train", "16019d7e3df5f24257cddd939b257f8d")],
         "test": [("test", "f0ef6b0ae62326f3e7ffdfab6717acfc")]},
        # Per-file sums of the binary CIFAR-100 release are not published; its archive sum is
        # checked on download, and the files are checked for their exact record layout.
        {"dir": "cifar-100-binary", "kind": "bin", "label_bytes": 2, "label_at": 1,
         "archive": ("cifar-100-binary.tar.gz", "03b5dce01913d631647c71ecec9e9cb8"),
         "train": [("train.bin", None)], "test": [("test.bin", None)]},
    ],
}


class _SafeUnpickler(pickle.Unpickler):
    """Only numpy arrays and builtins: the CIFAR pickles need nothing else."""

    ALLOWED = {("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "_reconstruct"),
               ("numpy._core.multiarray", "_reconstruct"), ("numpy.core.multiarray", "scalar")}

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a data file")


def _read_bin(path: Path, label_bytes: int, label_at: int) -> tuple[np.ndarray, np.ndarray]:
    raw = np.fromfile(path, dtype=np.uint8)
    rec = label_bytes + 3072
    if raw.size == 0 or raw.size % rec:
        raise DataError(f"corrupt data file {path}: {raw.size} bytes is not a whole number of "
                        f"{rec}-byte records; obtain the file again")
    raw = raw.reshape(-1, rec)
    return raw[:, label_bytes:].reshape(-1, 3, 32, 32), raw[:, label_at].astype(np.int64)


def _read_py(path: Path, label_key: str) -> tuple[np.ndarray, np.ndarray]:
    try:
        with open(path, "rb") as fh:
            entry = _SafeUnpickler(fh, encoding="latin1").load()
        data, labels = entry["data"], entry[label_key]
    except (pickle.UnpicklingError, KeyError, EOFError, TypeError) as exc:
        raise DataError(f"corrupt data file {path}: {exc}; obtain the file again") from exc
    return np.asarray(data, dtype=np.uint8).reshape(-1, 3, 32, 32), np.asarray(labels, np.int64)


def _find_layout(name: str, root: Path, download_ok: bool) -> dict[str, Any]:
    layouts = LAYOUTS[name]
    for layout in layouts:
        if (root / layout["dir"]).is_dir():
            return layout
    if download_ok:
        layout = layouts[0]
        archive, md5 = layout["archive"]
        path = download(URL + archive, root / archive, md5)
        with tarfile.open(path) as tar:
            tar.extractall(root, filter="data")
        return layout
    dirs = " or ".join(f"{root / lay['dir']}/" for lay in layouts)
    raise DataError(f"{name} not found: expected {dirs}; pass --data-dir (or set LOWBIT_DATA) to "
                    f"the folder holding it, or add --download")


def load_cifar(name: str, root: Path, download_ok: bool = False) -> DatasetSplits:
    """Load `cifar10` or `cifar100` from `root`, verifying every file's md5 where one is known."""
    layout = _find_layout(name, root, download_ok)
    hint = f"it is part of {URL}{layout['archive'][0]}"
    splits = {}
    for split in ("train", "test"):
        parts = []
        for fname, md5 in layout[split]:
            path = check_file(root / layout["dir"] / fname, md5, hint)
            if layout["kind"] == "bin":
                parts.append(_read_bin(path, layout["label_bytes"], layout["label_at"]))
            else:
                parts.append(_read_py(path, layout["label_key"]))
        images = torch.from_numpy(np.concatenate([p[0] for p in parts]))
        labels = torch.from_numpy(np.concatenate([p[1] for p in parts]))
        c10 = name == "cifar10"
        splits[split] = ImageData(images, labels, 10 if c10 else 100,
                                  CIFAR10_MEAN if c10 else CIFAR100_MEAN,
                                  CIFAR10_STD if c10 else CIFAR100_STD, flip=True, pad=4)
    return DatasetSplits(name, splits["train"], splits["test"])
