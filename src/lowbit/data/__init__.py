"""Datasets held in memory as uint8 tensors, and a fast batched loader.

`load_dataset(name, data_dir)` returns a `DatasetSplits` (train + test `ImageData`). Names:
cifar10, cifar100, mnist, fashion_mnist, digits (embedded, offline), synthetic, and
`folder:<path>` for an ImageNet-style directory of class folders.
"""

from __future__ import annotations

import os
from collections.abc import Callable

from lowbit.data.base import DatasetSplits, ImageData
from lowbit.data.files import ENV_DATA_DIR, resolve_data_dir
from lowbit.data.loader import BatchLoader, augment_batch
from lowbit.errors import DataError

DATASETS: dict[str, str] = {
    "cifar10": "CIFAR-10 (binary or python version), 32x32 RGB, 10 classes",
    "cifar100": "CIFAR-100 (python or binary version), 32x32 RGB, 100 classes",
    "mnist": "MNIST, official IDX gz files, 28x28 grey, 10 classes",
    "fashion_mnist": "Fashion-MNIST, official IDX gz files, 28x28 grey, 10 classes",
    "digits": "scikit-learn digits, 8x8 grey, 10 classes (embedded: no files needed)",
    "synthetic": "random class patterns + noise, 16x16 RGB, 4 classes (for tests)",
    "folder:<path>": "ImageNet-style folder: <path>/train/<class>/*.png|jpg, <path>/val/<class>/...",
}


def list_datasets() -> dict[str, str]:
    return dict(DATASETS)


def load_dataset(name: str, data_dir: str | os.PathLike[str] | None = None,
                 download: bool = False, image_size: int = 32) -> DatasetSplits:
    """Load a dataset by name; files are looked for under `data_dir` (or `$LOWBIT_DATA`)."""
    root = resolve_data_dir(data_dir)
    if name in ("cifar10", "cifar100"):
        from lowbit.data.cifar import load_cifar

        return load_cifar(name, root, download)
    if name in ("mnist", "fashion_mnist"):
        from lowbit.data.mnist import load_mnist

        return load_mnist(name, root, download)
    if name.startswith("folder:"):
        from lowbit.data.folder import load_folder

        return load_folder(name.split(":", 1)[1], image_size)
    simple: dict[str, Callable[[], DatasetSplits]] = {}
    from lowbit.data.small import load_digits, make_synthetic

    simple = {"digits": load_digits, "synthetic": make_synthetic}
    if name in simple:
        return simple[name]()
    raise DataError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")


__all__ = ["BatchLoader", "DatasetSplits", "ENV_DATA_DIR", "ImageData", "augment_batch",
           "list_datasets", "load_dataset"]
