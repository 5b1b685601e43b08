"""lowbit.data.base: ImageData validation and channel statistics; the dataset registry."""

from __future__ import annotations

import pytest
import torch

from lowbit.data import list_datasets, load_dataset
from lowbit.data.base import ImageData, channel_stats
from lowbit.errors import DataError


def _data(**kw) -> ImageData:
    args = {"images": torch.zeros(4, 3, 8, 8, dtype=torch.uint8), "labels": torch.arange(4),
            "num_classes": 4, "mean": (0.5,) * 3, "std": (0.25,) * 3}
    args.update(kw)
    return ImageData(**args)


@pytest.mark.parametrize("kw, message", [
    ({"images": torch.zeros(4, 3, 8, 8)}, "uint8"),
    ({"images": torch.zeros(4, 8, 8, dtype=torch.uint8)}, "uint8"),
    ({"labels": torch.arange(3)}, "3 labels for 4 images"),
    ({"labels": torch.tensor([0, 1, 2, 4])}, "labels must lie in 0..3"),
    ({"labels": torch.tensor([0, -1, 2, 3])}, "labels must lie in 0..3"),
    ({"mean": (0.5,)}, "one value per channel"),
])
def test_image_data_rejects_bad_input(kw, message) -> None:
    with pytest.raises(DataError, match=message):
        _data(**kw)


def test_subset_keeps_metadata() -> None:
    data = _data(classes=["a", "b", "c", "d"], pad=2, flip=False)
    sub = data.subset(torch.tensor([3, 1]))
    assert sub.labels.tolist() == [3, 1] and sub.classes == data.classes
    assert (sub.pad, sub.flip, sub.mean, len(sub)) == (2, False, data.mean, 2)


def test_channel_stats_matches_direct_computation() -> None:
    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (37, 3, 5, 5), dtype=torch.uint8, generator=gen)
    images[:, 1] //= 4  # channels must differ for the test to tell them apart
    mean, std = channel_stats(images, chunk=8)
    x = images.double().div(255).transpose(0, 1).reshape(3, -1)
    assert mean == pytest.approx(x.mean(1).tolist(), abs=1e-9)
    assert std == pytest.approx(x.std(1).tolist(), abs=1e-9)
    assert channel_stats(torch.full((2, 1, 3, 3), 7, dtype=torch.uint8))[1] == (1e-3,)


def test_registry_lists_and_rejects() -> None:
    names = list_datasets()
    assert {"cifar10", "cifar100", "mnist", "fashion_mnist", "digits", "synthetic"} <= set(names)
    with pytest.raises(DataError, match="unknown dataset 'imagenet'; choose one of cifar10"):
        load_dataset("imagenet")
    assert load_dataset("synthetic").name == "synthetic"
