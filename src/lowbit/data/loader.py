"""A fast CPU batch loader: whole-batch augmentation on uint8 tensors, seeded per epoch.

Random crop with zero padding, horizontal flip and normalisation run on the whole batch at once
(advanced indexing, no per-image Python), so the pipeline stays far below the cost of a training
step. Every epoch draws its permutation and augmentation from `seed` and the epoch number alone,
so a resumed run sees exactly the batches an uninterrupted run would.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol

import torch
import torch.nn.functional as F


class Images(Protocol):
    """What a `BatchLoader` reads from a split (`lowbit.data.base.ImageData` is one): uint8
    images (N, C, H, W), labels (N,), per-channel mean and std on the 0..1 scale, and the
    augmentation settings."""

    images: torch.Tensor
    labels: torch.Tensor
    mean: tuple[float, ...]
    std: tuple[float, ...]
    flip: bool
    pad: int

    def __len__(self) -> int: ...


def augment_batch(images: torch.Tensor, pad: int, flip: bool, gen: torch.Generator) -> torch.Tensor:
    """Random-crop (zero padding `pad`) and random horizontal flip of a uint8 batch (B, C, H, W).

    Draws, in this order: row offsets, column offsets (both only if `pad` > 0), flip coins (only
    if `flip`). Crop and flip are one `gather` with per-image source indices: a flip just reverses
    the column indices, so the batch is read once and no per-image Python runs.
    """
    if pad <= 0 and not flip:
        return images
    b, c, h, w = images.shape
    cols = torch.arange(w).expand(b, w)
    rows = torch.arange(h).expand(b, h)
    if pad > 0:
        oy = torch.randint(0, 2 * pad + 1, (b,), generator=gen)
        ox = torch.randint(0, 2 * pad + 1, (b,), generator=gen)
        images = F.pad(images, (pad, pad, pad, pad))
        rows, cols = rows + oy[:, None], cols + ox[:, None]
    if flip:
        mask = torch.rand(b, generator=gen) < 0.5
        cols = torch.where(mask[:, None], cols.flip(1), cols)
    index = rows[:, :, None] * images.shape[-1] + cols[:, None, :]  # (B, H, W) into the plane
    out = images.flatten(2).gather(2, index.view(b, 1, h * w).expand(b, c, h * w))
    return out.view(b, c, h, w)


class BatchLoader:
    """Iterates (float images, labels) batches over an in-memory split (`Images`).

    Args:
        data: the split to iterate.
        batch_size: global batch size (split across `world_size` ranks).
        train: shuffle and augment (otherwise ordered, no augmentation, keeps the last batch).
        seed: base seed; epoch `e` uses generator seed `seed * 100003 + e`.
        rank, world_size: distributed sharding; each rank gets its slice of every global batch.
        channels_last: return images in channels_last memory format.
    """

    def __init__(self, data: Images, batch_size: int, train: bool, seed: int = 0,
                 rank: int = 0, world_size: int = 1, channels_last: bool = False) -> None:
        if batch_size < world_size or batch_size % world_size:
            raise ValueError(f"batch_size {batch_size} must be a multiple of world size "
                             f"{world_size}")
        if train and len(data) < batch_size:  # an epoch of zero steps would pass silently
            raise ValueError(f"batch_size {batch_size} exceeds the {len(data)} training images; "
                             f"lower the batch size")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside 0..{world_size - 1}")
        self.data, self.batch_size, self.train, self.seed = data, batch_size, train, seed
        self.rank, self.world_size, self.channels_last = rank, world_size, channels_last
        self.epoch = 0
        self._mean = torch.tensor(data.mean).view(1, -1, 1, 1) * 255
        self._inv_std = 1.0 / (torch.tensor(data.std).view(1, -1, 1, 1) * 255)

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose permutation and augmentation the next iteration draws."""
        self.epoch = epoch

    def __len__(self) -> int:
        n = len(self.data)
        return n // self.batch_size if self.train else -(-n // self.batch_size)

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 (B, C, H, W) -> float32 `(x / 255 - mean) / std` in the requested memory format."""
        x = (images.float() - self._mean) * self._inv_std
        # The crop gather leaves batches channels_last-strided; without the flag callers expect
        # plain contiguous NCHW, so make it explicit either way.
        fmt = torch.channels_last if self.channels_last else torch.contiguous_format
        return x.contiguous(memory_format=fmt)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        n = len(self.data)
        gen = torch.Generator().manual_seed(self.seed * 100003 + self.epoch)
        order = torch.randperm(n, generator=gen) if self.train else torch.arange(n)
        for i in range(len(self)):
            idx = order[i * self.batch_size:(i + 1) * self.batch_size]
            imgs = self.data.images[idx]
            if self.train:  # same draws on every rank, then each keeps its shard
                imgs = augment_batch(imgs, self.data.pad, self.data.flip, gen)
            if self.world_size > 1:
                imgs, idx = imgs[self.rank::self.world_size], idx[self.rank::self.world_size]
            yield self.normalize(imgs), self.data.labels[idx]
