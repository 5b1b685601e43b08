"""lowbit.data.small: the embedded digits copy and the synthetic dataset."""

from __future__ import annotations

import pytest
import torch

from lowbit.data import DatasetSplits, load_dataset
from lowbit.data.base import channel_stats
from lowbit.data.small import load_digits, make_synthetic


def test_digits_offline(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("LOWBIT_DATA", str(tmp_path / "nowhere"))  # no files are needed
    data = load_dataset("digits")
    assert len(data.train) + len(data.test) == 1797
    assert len(data.test) == 449
    assert data.train.images.shape[1:] == (1, 8, 8) and data.train.images.dtype == torch.uint8
    labels = torch.cat([data.train.labels, data.test.labels])
    assert labels.bincount().tolist() == [178, 182, 177, 183, 181, 182, 181, 179, 174, 180]
    assert data.train.images.max() == 255 and data.train.images.min() == 0


def _rows(data: DatasetSplits) -> list[bytes]:
    """Every (image, label) of both splits as bytes, sorted: the multiset of examples."""
    images = torch.cat([data.train.images, data.test.images]).flatten(1)
    labels = torch.cat([data.train.labels, data.test.labels]).to(torch.uint8)
    return sorted(bytes(row.numpy()) for row in torch.cat([images, labels[:, None]], 1))


def test_digits_split_is_a_seeded_partition() -> None:
    a, b, c = load_digits(seed=0), load_digits(seed=0), load_digits(seed=1)
    assert torch.equal(a.test.images, b.test.images)
    assert not torch.equal(a.test.images, c.test.images)
    assert _rows(a) == _rows(c)  # both seeds split the same 1,797 examples, none lost or doubled


def test_digits_stats_come_from_train_only() -> None:
    data = load_digits()
    mean, std = channel_stats(data.train.images)
    assert data.train.mean == pytest.approx(mean) and data.train.std == pytest.approx(std)
    assert data.test.mean == data.train.mean


def test_synthetic_is_learnable_by_class_means() -> None:
    data = make_synthetic()
    x_train = data.train.images.float().flatten(1)
    centres = torch.stack([x_train[data.train.labels == c].mean(0) for c in range(4)])
    dist = torch.cdist(data.test.images.float().flatten(1), centres)
    accuracy = (dist.argmin(1) == data.test.labels).float().mean().item()
    assert accuracy > 0.9  # a nearest-class-mean rule solves it, so any model can learn it
    gaps = torch.pdist(centres)
    assert gaps.min() > 10 * x_train.std(0).mean() / len(x_train) ** 0.5


def test_synthetic_shapes_and_seed() -> None:
    a = make_synthetic(num_train=32, num_test=8, num_classes=3, in_channels=2, size=6, seed=3)
    assert a.train.images.shape == (32, 2, 6, 6) and a.test.images.shape == (8, 2, 6, 6)
    assert a.train.num_classes == 3 and int(a.train.labels.max()) < 3
    b = make_synthetic(num_train=32, num_test=8, num_classes=3, in_channels=2, size=6, seed=3)
    assert torch.equal(a.train.images, b.train.images)
