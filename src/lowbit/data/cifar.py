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
CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship",
                   "truck"]
RECORD = 3 * 32 * 32

# Per version: folder, kind, archive (name, md5), {split: [(file, md5)]}, and where the label is:
# label bytes per record and the fine label's offset (binary) or the label key (python).
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
    """Only numpy arrays and builtins: the CIFAR pickles need nothing else.

    Every global a pickle names goes through `find_class`, so refusing all but these few means a
    crafted file cannot call anything (os.system, eval, ...) while it is read. `_codecs.encode`
    is how protocols 0-2 written by Python 3 store bytes, and `_frombuffer` how protocol 5 stores
    arrays; both only build data.
    """

    ALLOWED = {("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode")} | {
        (f"numpy.{core}.{mod}", fn) for core in ("core", "_core")
        for mod, fn in (("multiarray", "_reconstruct"), ("multiarray", "scalar"),
                        ("numeric", "_frombuffer"))}

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a data file")


def _read_bin(path: Path, label_bytes: int, label_at: int) -> tuple[np.ndarray, np.ndarray]:
    raw = np.fromfile(path, dtype=np.uint8)
    rec = label_bytes + RECORD
    if raw.size == 0 or raw.size % rec:
        raise DataError(f"corrupt data file {path}: {raw.size} bytes is not a whole number of "
                        f"{rec}-byte records; obtain the file again")
    raw = raw.reshape(-1, rec)
    return raw[:, label_bytes:].reshape(-1, 3, 32, 32), raw[:, label_at].astype(np.int64)


def _read_py(path: Path, label_key: str) -> tuple[np.ndarray, np.ndarray]:
    # Truncated or crafted pickles fail in many ways; each must become a one-line DataError.
    bad = (pickle.UnpicklingError, KeyError, EOFError, TypeError, ValueError, AttributeError,
           IndexError)
    try:
        with open(path, "rb") as fh:
            entry = _SafeUnpickler(fh, encoding="latin1").load()
        data, labels = entry["data"], np.asarray(entry[label_key], dtype=np.int64)
    except bad as exc:
        raise DataError(f"corrupt data file {path}: {exc}; obtain the file again") from exc
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.size % RECORD:
        raise DataError(f"corrupt data file {path}: 'data' is not a uint8 array of "
                        f"{RECORD}-value rows; obtain the file again")
    return data.reshape(-1, 3, 32, 32), labels.reshape(-1)


def _check_labels(path: Path, images: np.ndarray, labels: np.ndarray, num_classes: int) -> None:
    if len(labels) != len(images):
        raise DataError(f"corrupt data file {path}: {len(labels)} labels for {len(images)} "
                        f"images; obtain the file again")
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise DataError(f"corrupt data file {path}: labels outside 0..{num_classes - 1}; "
                        f"obtain the file again")


def _extract(archive: Path, root: Path) -> None:
    """Unpack a downloaded archive; the "data" filter refuses absolute paths, links out, devices."""
    if not hasattr(tarfile, "data_filter"):
        raise DataError(f"this Python cannot extract archives safely (needs 3.10.12+ or 3.11.4+); "
                        f"extract {archive} into {root} by hand")
    try:
        with tarfile.open(archive) as tar:
            tar.extractall(root, filter="data")
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise DataError(f"cannot extract {archive}: {exc}; delete it and try again") from exc


def _complete(root: Path, layout: dict[str, Any]) -> bool:
    folder = root / layout["dir"]
    return all((folder / f).is_file() for split in ("train", "test") for f, _ in layout[split])


def _find_layout(name: str, root: Path, download_ok: bool) -> dict[str, Any]:
    present = [lay for lay in LAYOUTS[name] if (root / lay["dir"]).is_dir()]
    complete = [lay for lay in present if _complete(root, lay)]
    if complete:
        return complete[0]
    if download_ok:  # nothing usable here: a half-extracted folder is completed by re-extracting
        layout = LAYOUTS[name][0]
        archive, md5 = layout["archive"]
        _extract(download(URL + archive, root / archive, md5), root)
        return layout
    if present:  # let check_file name the first missing file
        return present[0]
    dirs = " or ".join(f"{root / lay['dir']}/" for lay in LAYOUTS[name])
    raise DataError(f"{name} not found: expected {dirs}; pass --data-dir (or set LOWBIT_DATA) to "
                    f"the folder holding it, or pass --set data.download=true")


def _read_split(root: Path, layout: dict[str, Any], split: str,
                num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    hint = f"it is part of {URL}{layout['archive'][0]}; pass --set data.download=true to fetch it"
    images, labels = [], []
    for fname, md5 in layout[split]:
        path = check_file(root / layout["dir"] / fname, md5, hint)
        if layout["kind"] == "bin":
            x, y = _read_bin(path, layout["label_bytes"], layout["label_at"])
        else:
            x, y = _read_py(path, layout["label_key"])
        _check_labels(path, x, y, num_classes)
        images.append(x)
        labels.append(y)
    return torch.from_numpy(np.concatenate(images)), torch.from_numpy(np.concatenate(labels))


def load_cifar(name: str, root: Path, download_ok: bool = False) -> DatasetSplits:
    """Load `cifar10` or `cifar100` from `root`, verifying every file's md5 where one is known.

    Raises:
        DataError: the files are missing, corrupt or not in the official layout.
    """
    layout = _find_layout(name, root, download_ok)
    c10 = name == "cifar10"
    num_classes = 10 if c10 else 100
    mean, std = (CIFAR10_MEAN, CIFAR10_STD) if c10 else (CIFAR100_MEAN, CIFAR100_STD)
    splits = {}
    for split in ("train", "test"):
        images, labels = _read_split(root, layout, split, num_classes)
        splits[split] = ImageData(images, labels, num_classes, mean, std, flip=True, pad=4,
                                  classes=list(CIFAR10_CLASSES) if c10 else [])
    return DatasetSplits(name, splits["train"], splits["test"])
