"""lowbit.data.folder: ImageNet-style class folders read with Pillow."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from lowbit.data import load_dataset
from lowbit.data.base import channel_stats
from lowbit.data.folder import load_folder
from lowbit.errors import DataError

COLOURS = {"cat": (200, 30, 30), "dog": (30, 200, 30), "emu": (30, 30, 200)}


def write_image(path: Path, colour: tuple[int, ...], size: tuple[int, int] = (20, 12),
                mode: str = "RGB") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).convert(mode).save(path)
    return path


def make_folder(root: Path, test_name: str = "val", per_class: int = 2) -> Path:
    for split, n in (("train", per_class), (test_name, 1)):
        for name, colour in COLOURS.items():
            for i in range(n):
                write_image(root / split / name / f"{i}.png", colour)
    return root


def test_loads_classes_sorted_and_resized(tmp_path) -> None:
    make_folder(tmp_path)
    write_image(tmp_path / "train" / "dog" / "x.JPG", (30, 200, 30), size=(9, 30))
    write_image(tmp_path / "train" / "emu" / "grey.bmp", (90, 90, 90), mode="L")
    (tmp_path / "train" / "dog" / "notes.txt").write_text("ignored")
    data = load_folder(tmp_path, image_size=8)
    assert data.train.classes == ["cat", "dog", "emu"] and data.train.num_classes == 3
    assert data.train.images.shape == (8, 3, 8, 8) and data.train.images.dtype == torch.uint8
    assert data.train.labels.tolist() == [0, 0, 1, 1, 1, 2, 2, 2]
    assert data.test.labels.tolist() == [0, 1, 2]
    # solid colours survive resizing exactly, and grey-scale files come out as RGB
    assert data.train.images[0, :, 4, 4].tolist() == [200, 30, 30]
    assert data.train.images[7].flatten().unique().tolist() == [90]
    mean, std = channel_stats(data.train.images)
    assert data.test.mean == pytest.approx(mean) and data.train.std == pytest.approx(std)


def test_resize_is_shorter_side_then_centre_crop(tmp_path) -> None:
    make_folder(tmp_path)
    stripes = np.zeros((10, 40, 3), np.uint8)  # 40 wide, 10 high: left, middle, right bands
    stripes[:, :15] = (255, 0, 0)
    stripes[:, 15:25] = (0, 255, 0)
    stripes[:, 25:] = (0, 0, 255)
    Image.fromarray(stripes).save(tmp_path / "val" / "cat" / "0.png")
    data = load_folder(tmp_path, image_size=10)
    crop = data.test.images[0]
    assert crop.shape == (3, 10, 10)
    # the 10x10 window is the middle of the 40-pixel width: columns 15..24, i.e. pure green
    assert crop[:, :, 2:8].permute(1, 2, 0).reshape(-1, 3).unique(dim=0).tolist() == [[0, 255, 0]]


def test_test_folder_is_accepted(tmp_path) -> None:
    make_folder(tmp_path, test_name="test")
    assert len(load_dataset(f"folder:{tmp_path}", image_size=4).test) == 3


def test_missing_root_and_missing_splits(tmp_path) -> None:
    with pytest.raises(DataError, match="image folder .*nope not found"):
        load_folder(tmp_path / "nope")
    (tmp_path / "val" / "cat").mkdir(parents=True)
    with pytest.raises(DataError, match=r"train/ not found"):
        load_folder(tmp_path)
    make_folder(tmp_path / "b")
    for p in (tmp_path / "b" / "val").rglob("*.png"):
        p.unlink()
    for d in (tmp_path / "b" / "val").iterdir():
        d.rmdir()
    (tmp_path / "b" / "val").rmdir()
    with pytest.raises(DataError, match="no val/ or test/ folder"):
        load_folder(tmp_path / "b")


def test_class_folder_without_images(tmp_path) -> None:
    make_folder(tmp_path)
    (tmp_path / "train" / "fox").mkdir()
    (tmp_path / "val" / "fox").mkdir()
    (tmp_path / "train" / "fox" / "readme.txt").write_text("no images here")
    with pytest.raises(DataError, match=r"no images in .*train/fox/"):
        load_folder(tmp_path)


def test_split_without_any_image(tmp_path) -> None:
    make_folder(tmp_path)
    for p in (tmp_path / "val").rglob("*.png"):
        p.unlink()
    with pytest.raises(DataError, match=r"no images under .*val/"):
        load_folder(tmp_path)


def test_unreadable_image_is_named(tmp_path) -> None:
    make_folder(tmp_path)
    bad = tmp_path / "train" / "dog" / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n this is not really a png")
    with pytest.raises(DataError, match=r"unreadable image .*train/dog/broken\.png"):
        load_folder(tmp_path)


def test_truncated_image_is_named(tmp_path) -> None:
    make_folder(tmp_path)
    path = tmp_path / "val" / "emu" / "0.png"
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(path)
    path.write_bytes(path.read_bytes()[:400])
    with pytest.raises(DataError, match=r"unreadable image .*val/emu/0\.png"):
        load_folder(tmp_path)


def test_classes_must_match_between_splits(tmp_path) -> None:
    make_folder(tmp_path)
    write_image(tmp_path / "val" / "fox" / "0.png", (1, 2, 3))
    (tmp_path / "val" / "cat" / "0.png").unlink()
    (tmp_path / "val" / "cat").rmdir()
    with pytest.raises(DataError, match=r"only in train: \['cat'\], only in val: \['fox'\]"):
        load_folder(tmp_path)


def test_image_size_must_be_positive(tmp_path) -> None:
    make_folder(tmp_path)
    with pytest.raises(DataError, match="image_size must be positive"):
        load_folder(tmp_path, image_size=0)
