"""ImageNet-style image folders: `<root>/train/<class>/*.png` and `<root>/val/<class>/...`.

Every image is decoded with Pillow, converted to RGB, resized so its shorter side is
`image_size` and center-cropped to a square, then held in memory as uint8 like the other
datasets. Class indices follow the sorted folder names of `train/`. This suits small and
medium datasets (tens of thousands of images at 32..64 px); it is not a streaming loader.
"""

from __future__ import annotations

import logging
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from lowbit.data.base import DatasetSplits, ImageData, channel_stats
from lowbit.errors import DataError

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")
TEST_DIRS = ("val", "test")  # the first one present is the evaluation split


def _class_dirs(split_dir: Path) -> list[str]:
    if not split_dir.is_dir():
        raise DataError(f"image folder split {split_dir}/ not found; expected "
                        f"{split_dir}/<class>/<image>.png|jpg|jpeg|bmp")
    names = sorted(p.name for p in split_dir.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not names:
        raise DataError(f"no class folders in {split_dir}/; expected {split_dir}/<class>/<image>")
    return names


def _list_images(split_dir: Path, classes: list[str],
                 every_class: bool) -> tuple[list[Path], list[int]]:
    """All image files of one split in (class, file name) order, with their class indices."""
    files: list[Path] = []
    labels: list[int] = []
    for index, name in enumerate(classes):
        found = sorted(p for p in (split_dir / name).iterdir()
                       if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        if every_class and not found:
            raise DataError(f"no images in {split_dir / name}/ (looked for "
                            f"{', '.join(IMAGE_SUFFIXES)}); add images or remove the folder")
        files += found
        labels += [index] * len(found)
    if not files:
        raise DataError(f"no images under {split_dir}/ (looked for {', '.join(IMAGE_SUFFIXES)})")
    return files, labels


def _read_image(path: Path, size: int) -> np.ndarray:
    """Decode, convert to RGB, resize the shorter side to `size`, center-crop: (3, size, size)."""
    try:
        with Image.open(path) as img:
            rgb = img.convert("RGB")  # forces the full decode, so truncation shows up here
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise DataError(f"unreadable image {path}: {exc}; fix or remove the file") from exc
    w, h = rgb.size
    scale = size / min(w, h)
    new_w, new_h = max(size, round(w * scale)), max(size, round(h * scale))
    rgb = rgb.resize((new_w, new_h), Image.Resampling.BILINEAR)
    left, top = (new_w - size) // 2, (new_h - size) // 2
    rgb = rgb.crop((left, top, left + size, top + size))
    return np.array(rgb, dtype=np.uint8).transpose(2, 0, 1)  # a copy: torch wants it writable


def _read_split(files: list[Path], size: int) -> torch.Tensor:
    """Decode `files` into one preallocated uint8 tensor (N, 3, size, size)."""
    out = torch.empty(len(files), 3, size, size, dtype=torch.uint8)
    # Pillow releases the GIL while decoding and resizing, so threads give a real speed-up.
    workers = min(8, os.cpu_count() or 1)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        try:
            for i, array in enumerate(pool.map(lambda p: _read_image(p, size), files)):
                out[i] = torch.from_numpy(array)
        except DataError:  # stop at the first bad file instead of decoding all the rest
            pool.shutdown(wait=False, cancel_futures=True)
            raise
    return out


def _check_same_classes(train: list[str], test: list[str], test_dir: Path) -> None:
    if train != test:
        only_train = sorted(set(train) - set(test))
        only_test = sorted(set(test) - set(train))
        raise DataError(f"class folders differ between train/ and {test_dir.name}/: only in "
                        f"train: {only_train or 'none'}, only in {test_dir.name}: "
                        f"{only_test or 'none'}; give both splits the same class folders")


def _split_dirs(root: Path) -> tuple[Path, Path]:
    """The dataset root and its evaluation folder (`val/`, else `test/`)."""
    if not root.is_dir():
        raise DataError(f"image folder {root} not found; pass folder:<path> with <path>/train/ "
                        f"and <path>/val/ inside")
    test_dir = next((root / d for d in TEST_DIRS if (root / d).is_dir()), None)
    if test_dir is None:
        raise DataError(f"no val/ or test/ folder in {root}; add {root}/val/<class>/<image>")
    return root, test_dir


def load_folder(path: str | os.PathLike[str], image_size: int = 32) -> DatasetSplits:
    """Load `<path>/train/<class>/*` and `<path>/val/<class>/*` (or `test/`) into memory.

    Args:
        path: the dataset root holding `train/` and `val/` (or `test/`).
        image_size: side of the square images after resizing and center-cropping.

    Returns:
        Train and test splits with mean/std computed on the training images.

    Raises:
        DataError: a missing folder, a class folder without images, an unreadable image (named),
            or class folders that differ between the splits.
    """
    if image_size < 1:
        raise DataError(f"image_size must be positive, got {image_size}")
    root, test_dir = _split_dirs(Path(path).expanduser())
    classes = _class_dirs(root / "train")
    _check_same_classes(classes, _class_dirs(test_dir), test_dir)
    splits = []
    for split_dir, every_class in ((root / "train", True), (test_dir, False)):
        files, labels = _list_images(split_dir, classes, every_class)
        log.info("reading %d images from %s", len(files), split_dir)
        splits.append((_read_split(files, image_size), torch.tensor(labels, dtype=torch.int64)))
    mean, std = channel_stats(splits[0][0])
    data = [ImageData(x, y, len(classes), mean, std, flip=True, pad=max(1, image_size // 8),
                      classes=classes) for x, y in splits]
    return DatasetSplits(f"folder:{root}", data[0], data[1])
