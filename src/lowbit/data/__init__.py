"""Datasets held in memory as uint8 tensors, and a fast batched loader.

`load_dataset(name, data_dir)` returns a `DatasetSplits` (train + test `ImageData`). Names:
cifar10, cifar100, mnist, fashion_mnist, digits (embedded, offline), synthetic, and
`folder:<path>` for an ImageNet-style directory of class folders.
"""

from __future__ import annotations

import os

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
    "folder:<path>": "ImageNet-style folder: <path>/train/<class>/*.png|jpg|bmp and "
                     "<path>/val/<class>/ (or test/), resized to image_size",
}


# name -> (channels, image size, classes): what a model for the dataset takes, without the files.
DATASET_INFO: dict[str, tuple[int, int, int]] = {
    "cifar10": (3, 32, 10), "cifar100": (3, 32, 100), "mnist": (1, 28, 10),
    "fashion_mnist": (1, 28, 10), "digits": (1, 8, 10), "synthetic": (3, 16, 4),
}


def input_shape_for(name: str, image_size: int = 32) -> tuple[int, int, int]:
    """(C, H, W) of one input image of dataset `name` (folders: RGB at `image_size`)."""
    channels, size, _ = DATASET_INFO.get(name, (3, image_size, 0))
    return channels, size, size


def list_datasets() -> dict[str, str]:
    """Dataset names (and the `folder:<path>` form) with a one-line description each."""
    return dict(DATASETS)


def load_dataset(name: str, data_dir: str | os.PathLike[str] | None = None,
                 download: bool = False, image_size: int = 32) -> DatasetSplits:
    """Load a dataset by name; files are looked for under `data_dir` (or `$LOWBIT_DATA`).

    Args:
        name: a key of `list_datasets()`, or `folder:<path>`.
        data_dir: data root; `None` means `$LOWBIT_DATA`, else `./data`.
        download: fetch missing files (md5-verified) where the dataset has a source URL.
        image_size: output size of `folder:` datasets (the others have a fixed size).

    Raises:
        DataError: unknown name, missing or corrupt files (the message says what to do).
    """
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
    if name in ("digits", "synthetic"):  # no files, so no root and no download
        from lowbit.data.small import load_digits, make_synthetic

        return load_digits() if name == "digits" else make_synthetic()
    if name == "user":
        raise DataError("this run trained on data passed through the Python API "
                        "(lowbit.api.fit); evaluate it the same way: "
                        "lowbit.api.evaluate_model(model, your_test_data)")
    raise DataError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")


__all__ = ["DATASET_INFO", "BatchLoader", "DatasetSplits", "ENV_DATA_DIR", "ImageData",
           "augment_batch", "input_shape_for", "list_datasets", "load_dataset"]
