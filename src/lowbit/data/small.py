"""Datasets that need no files: scikit-learn's digits (embedded copy) and synthetic images."""

from __future__ import annotations

import gzip
from importlib import resources

import numpy as np
import torch

from lowbit.data.base import DatasetSplits, ImageData, channel_stats


def load_digits(test_fraction: float = 0.25, seed: int = 0) -> DatasetSplits:
    """The 1,797 8x8 handwritten digits bundled with scikit-learn (BSD-3; UCI optdigits test set).

    The copy ships inside lowbit (`data/assets/digits.csv.gz`), so it works offline. Pixel values
    0..16 are scaled to 0..255; the split is a fixed seeded shuffle, stratified by nothing.
    Normalisation statistics come from the training part only, so no test pixel leaks into them.
    """
    asset = resources.files("lowbit.data").joinpath("assets/digits.csv.gz")
    with asset.open("rb") as fh, gzip.open(fh) as gz:
        table = np.loadtxt(gz, delimiter=",", dtype=np.float32)
    images = torch.from_numpy(np.round(table[:, :-1] * (255 / 16)).astype(np.uint8))
    images = images.view(-1, 1, 8, 8)
    labels = torch.from_numpy(table[:, -1].astype(np.int64))
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))
    n_test = int(len(labels) * test_fraction)
    mean, std = channel_stats(images[order[n_test:]])
    full = ImageData(images, labels, 10, mean, std, flip=False, pad=1)
    return DatasetSplits("digits", full.subset(order[n_test:]), full.subset(order[:n_test]))


def make_synthetic(num_train: int = 512, num_test: int = 128, num_classes: int = 4,
                   in_channels: int = 3, size: int = 16, seed: int = 0) -> DatasetSplits:
    """Learnable synthetic images: each class is a fixed random pattern plus noise."""
    gen = torch.Generator().manual_seed(seed)
    protos = torch.rand(num_classes, in_channels, size, size, generator=gen) * 255

    def split(n: int) -> ImageData:
        labels = torch.randint(0, num_classes, (n,), generator=gen)
        noise = torch.randn(n, in_channels, size, size, generator=gen) * 40
        images = (protos[labels] + noise).clamp(0, 255).round().to(torch.uint8)
        return ImageData(images, labels, num_classes, (0.5,) * in_channels, (0.29,) * in_channels,
                         flip=False, pad=2)

    return DatasetSplits("synthetic", split(num_train), split(num_test))
