"""In-memory image datasets: uint8 tensors, held whole, with their normalisation statistics."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Protocol

import torch

from lowbit.data.loader import BatchLoader
from lowbit.errors import DataError


@dataclass
class ImageData:
    """One split of an image-classification dataset, held in memory.

    Attributes:
        images: uint8 tensor (N, C, H, W).
        labels: int64 tensor (N,).
        num_classes: number of classes.
        mean, std: per-channel normalisation statistics on the 0..1 scale.
        flip: whether horizontal flips are a valid augmentation (not for digits).
        pad: padding for random-crop augmentation (0 disables cropping).
    """

    images: torch.Tensor
    labels: torch.Tensor
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    flip: bool = True
    pad: int = 4
    classes: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.dim() != 4:
            raise DataError(
                f"images must be a uint8 (N, C, H, W) tensor, got {self.images.dtype} "
                f"{tuple(self.images.shape)}"
            )
        if self.labels.shape != (self.images.shape[0],):
            raise DataError(f"{len(self.labels)} labels for {self.images.shape[0]} images")
        self.labels = self.labels.long()
        if len(self.labels) and (self.labels.min() < 0 or self.labels.max() >= self.num_classes):
            raise DataError(f"labels must lie in 0..{self.num_classes - 1}")
        if len(self.mean) != self.in_channels or len(self.std) != self.in_channels:
            raise DataError("mean/std must have one value per channel")

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def in_channels(self) -> int:
        """Number of image channels (C)."""
        return int(self.images.shape[1])

    @property
    def image_size(self) -> int:
        """Image width (W); the datasets here are square."""
        return int(self.images.shape[-1])

    def batches(self, batch_size: int, train: bool, seed: int = 0, rank: int = 0,
                world_size: int = 1, channels_last: bool = False, augment: bool = True) -> Any:
        """A BatchLoader over this split (`augment=False`: shuffled, but no crops or flips)."""
        data = self if augment else replace(self, flip=False, pad=0)
        return BatchLoader(data, batch_size, train, seed, rank, world_size, channels_last)

    def subset(self, index: torch.Tensor) -> ImageData:
        """The images at `index` (a tensor of indices or a mask), with the same metadata."""
        return ImageData(
            self.images[index],
            self.labels[index],
            self.num_classes,
            self.mean,
            self.std,
            self.flip,
            self.pad,
            self.classes,
        )


class Split(Protocol):
    """What training and evaluation need of a split: lowbit's ImageData, or a user's data."""

    num_classes: int

    @property
    def in_channels(self) -> int: ...

    def __len__(self) -> int: ...

    def batches(self, batch_size: int, train: bool, seed: int = 0, rank: int = 0,
                world_size: int = 1, channels_last: bool = False, augment: bool = True) -> Any:
        ...


@dataclass
class DatasetSplits:
    """The train and test split of one dataset, plus its registry name.

    `val` is a held-out part of the training split (see `with_validation`), or None.
    """

    name: str
    train: Split
    test: Split
    val: Split | None = None

    def with_validation(self, fraction: float, seed: int = 0) -> DatasetSplits:
        """Hold out a seeded random `fraction` of the training images as a validation split.

        Hyper-parameters chosen on `val` never see the test set (LBW's threshold sweep uses it).
        """
        if not 0 < fraction < 1:
            raise ValueError(f"validation fraction must be in (0, 1), got {fraction}")
        if not isinstance(self.train, ImageData):
            raise DataError("hold out a validation split of your own data yourself (pass val=)")
        order = torch.randperm(len(self.train), generator=torch.Generator().manual_seed(seed))
        n_val = max(1, int(len(self.train) * fraction))
        return DatasetSplits(
            self.name, self.train.subset(order[n_val:]), self.test, self.train.subset(order[:n_val])
        )


def channel_stats(
    images: torch.Tensor, chunk: int = 4096
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and (unbiased) std of uint8 images (N, C, H, W) on the 0..1 scale.

    Sums run over chunks in float64, so a large folder dataset needs no float copy of itself
    and the result does not drift with the number of pixels.
    """
    c = images.shape[1]
    total = torch.zeros(c, dtype=torch.float64)
    total_sq = torch.zeros(c, dtype=torch.float64)
    for start in range(0, images.shape[0], chunk):
        x = images[start : start + chunk].transpose(0, 1).reshape(c, -1).double().div_(255)
        total += x.sum(1)
        total_sq += x.square().sum(1)
    n = images.numel() // max(c, 1)
    mean = total / max(n, 1)
    var = (total_sq - n * mean.square()) / max(n - 1, 1)
    return tuple(mean.tolist()), tuple(var.clamp_min(0).sqrt().clamp_min(1e-3).tolist())
