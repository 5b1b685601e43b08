"""A user's own data: any `torch.utils.data.Dataset` or `DataLoader`, behind the same interface
as lowbit's in-memory datasets (`batches(...)`, `num_classes`, `in_channels`, `len`).

    from lowbit.data.user import user_splits
    data = user_splits(train_loader, test_loader, num_classes=10)

A Dataset is batched here (shuffled per epoch from the run's seed when training, so a resumed
run sees the same order); a DataLoader is used as given: its own batch size, sampler and
workers. Its epochs are reproducible if its sampler is (a DistributedSampler's `set_epoch` is
called). Under distributed training pass a DataLoader with a DistributedSampler.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from lowbit.data.base import DatasetSplits
from lowbit.errors import DataError


class LoaderBatches:
    """Iterates (x, y) batches of a DataLoader; `set_epoch` reaches a sampler that has one."""

    def __init__(self, loader: DataLoader, channels_last: bool = False) -> None:
        self.loader, self.channels_last = loader, channels_last

    def set_epoch(self, epoch: int) -> None:
        for part in (self.loader.sampler, getattr(self.loader, "batch_sampler", None)):
            set_epoch = getattr(part, "set_epoch", None)
            if set_epoch is not None:
                set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        fmt = torch.channels_last if self.channels_last else torch.contiguous_format
        for batch in self.loader:
            if not isinstance(batch, list | tuple) or len(batch) < 2:
                raise DataError("a batch of the user's data must be (inputs, labels)")
            x, y = batch[0], batch[1]
            x = x.float()
            yield (x.contiguous(memory_format=fmt) if x.dim() == 4 else x), y.long()


class _EpochSampler(torch.utils.data.Sampler[int]):
    """A seeded permutation per epoch (what lowbit's own loader draws)."""

    def __init__(self, n: int, seed: int) -> None:
        self.n, self.seed, self.epoch = n, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.n

    def __iter__(self) -> Iterator[int]:
        gen = torch.Generator().manual_seed(self.seed * 100003 + self.epoch)
        return iter(torch.randperm(self.n, generator=gen).tolist())


@dataclass
class UserData:
    """One split of a user's data (a Dataset or a DataLoader)."""

    source: Dataset | DataLoader
    num_classes: int
    in_channels: int

    def __len__(self) -> int:
        src = self.source
        return len(src.dataset if isinstance(src, DataLoader) else src)  # type: ignore[arg-type]

    def batches(self, batch_size: int, train: bool, seed: int = 0, rank: int = 0,
                world_size: int = 1, channels_last: bool = False, augment: bool = True) -> Any:
        """LoaderBatches over the DataLoader, or over one built for the Dataset."""
        src = self.source
        if not isinstance(src, DataLoader):
            if world_size > 1:
                raise DataError("distributed training with your own data needs a DataLoader "
                                "with a DistributedSampler")
            sampler = _EpochSampler(len(src), seed) if train else None  # type: ignore[arg-type]
            src = DataLoader(src, batch_size=batch_size, sampler=sampler, drop_last=train)
        return LoaderBatches(src, channels_last)


def user_splits(train: Dataset | DataLoader, test: Dataset | DataLoader | None = None,
                num_classes: int | None = None, val: Dataset | DataLoader | None = None,
                name: str = "user") -> DatasetSplits:
    """Splits over a user's data; `num_classes` and `in_channels` come from the data when not
    given (the first batch's input channels; the largest label + 1, read over the train split)."""
    probe = next(iter(LoaderBatches(train if isinstance(train, DataLoader)
                                    else DataLoader(train, batch_size=2))))
    channels = int(probe[0].shape[1])
    classes = num_classes or _count_classes(train)
    parts = [UserData(s, classes, channels) if s is not None else None for s in (train, test, val)]
    assert parts[0] is not None
    return DatasetSplits(name, parts[0], parts[1] or parts[0], parts[2])


def _count_classes(source: Dataset | DataLoader) -> int:
    loader = source if isinstance(source, DataLoader) else DataLoader(source, batch_size=256)
    return int(max(int(y.max()) for _, y in LoaderBatches(loader))) + 1
