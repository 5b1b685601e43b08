"""lowbit.data.loader: epoch coverage, seeding, batched augmentation, sharding, normalisation."""

from __future__ import annotations

import pytest
import torch

from lowbit.data.base import ImageData
from lowbit.data.loader import BatchLoader, augment_batch

MEAN, STD = (0.4, 0.5, 0.6), (0.2, 0.25, 0.3)


def indexed_data(n: int = 103, size: int = 8, pad: int = 2, flip: bool = True) -> ImageData:
    """Random images whose label is their index, so a batch tells which images it holds."""
    gen = torch.Generator().manual_seed(n)
    images = torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=gen)
    return ImageData(images, torch.arange(n), n, MEAN, STD, flip=flip, pad=pad)


def denormalize(x: torch.Tensor) -> torch.Tensor:
    mean, std = torch.tensor(MEAN).view(1, 3, 1, 1), torch.tensor(STD).view(1, 3, 1, 1)
    return ((x * std + mean) * 255).round().to(torch.uint8)


def batches(loader: BatchLoader) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return list(loader)


def test_eval_mode_covers_every_index_once_in_order() -> None:
    loader = BatchLoader(indexed_data(), 10, train=False)
    labels = [y for _, y in batches(loader)]
    assert len(loader) == len(labels) == 11 and len(labels[-1]) == 3
    assert torch.cat(labels).tolist() == list(range(103))


def test_train_mode_drops_only_the_remainder() -> None:
    loader = BatchLoader(indexed_data(), 10, train=True, seed=3)
    seen = torch.cat([y for _, y in batches(loader)])
    assert len(loader) == 10 and all(len(y) == 10 for _, y in batches(loader))
    assert len(seen) == 100 and len(set(seen.tolist())) == 100
    assert seen.tolist() != sorted(seen.tolist())  # shuffled


def test_same_seed_and_epoch_give_identical_batches() -> None:
    a = BatchLoader(indexed_data(), 16, True, seed=7)
    b = BatchLoader(indexed_data(), 16, True, seed=7)
    a.set_epoch(4)
    b.set_epoch(4)
    for (xa, ya), (xb, yb) in zip(batches(a), batches(b), strict=True):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)


def test_epoch_and_seed_change_the_order() -> None:
    loader = BatchLoader(indexed_data(), 16, True, seed=7)
    first = torch.cat([y for _, y in batches(loader)])
    loader.set_epoch(1)
    second = torch.cat([y for _, y in batches(loader)])
    other_seed = torch.cat([y for _, y in batches(BatchLoader(indexed_data(), 16, True, seed=8))])
    assert first.tolist() != second.tolist() and first.tolist() != other_seed.tolist()
    loader.set_epoch(0)
    assert torch.cat([y for _, y in batches(loader)]).tolist() == first.tolist()


def crops_of(image: torch.Tensor, pad: int) -> list[tuple[int, int, bool, torch.Tensor]]:
    """Every (dy, dx, flipped) crop of the zero-padded image: the slow per-image reference."""
    _, h, w = image.shape
    padded = torch.zeros(image.shape[0], h + 2 * pad, w + 2 * pad, dtype=image.dtype)
    padded[:, pad:pad + h, pad:pad + w] = image
    out = []
    for dy in range(2 * pad + 1):
        for dx in range(2 * pad + 1):
            crop = padded[:, dy:dy + h, dx:dx + w]
            out += [(dy, dx, False, crop), (dy, dx, True, crop.flip(2))]
    return out


def match_crop(orig: torch.Tensor, out: torch.Tensor, pad: int) -> tuple[int, int, bool]:
    hits = [(dy, dx, f) for dy, dx, f, crop in crops_of(orig, pad) if torch.equal(crop, out)]
    assert hits, "augmented image is not a crop (or flipped crop) of the zero-padded original"
    return hits[0]


def test_augmentation_is_a_valid_crop_and_uses_every_offset() -> None:
    data = indexed_data(n=600, size=6, pad=2)
    out = augment_batch(data.images, 2, True, torch.Generator().manual_seed(0))
    assert out.shape == data.images.shape and out.dtype == torch.uint8
    found = {match_crop(orig, aug, 2) for orig, aug in zip(data.images, out, strict=True)}
    assert len(found) == 5 * 5 * 2  # every offset and both flip states occur


def reference_augment(images: torch.Tensor, pad: int, flip: bool,
                      gen: torch.Generator) -> torch.Tensor:
    """Per-image loop with the documented draw order: row offsets, column offsets, flip coins."""
    b = images.shape[0]
    oy = torch.randint(0, 2 * pad + 1, (b,), generator=gen) if pad else torch.zeros(b, dtype=int)
    ox = torch.randint(0, 2 * pad + 1, (b,), generator=gen) if pad else torch.zeros(b, dtype=int)
    coins = torch.rand(b, generator=gen) < 0.5 if flip else torch.zeros(b, dtype=torch.bool)
    out = torch.empty_like(images)
    for i in range(b):
        crops = {(dy, dx, f): crop for dy, dx, f, crop in crops_of(images[i], pad)}
        out[i] = crops[(int(oy[i]), int(ox[i]), bool(coins[i]))]
    return out


@pytest.mark.parametrize("pad, flip", [(3, True), (1, False), (0, True), (0, False)])
def test_augmentation_equals_slow_reference(pad: int, flip: bool) -> None:
    images = indexed_data(n=50, size=5).images
    fast = augment_batch(images, pad, flip, torch.Generator().manual_seed(11))
    assert torch.equal(fast, reference_augment(images, pad, flip,
                                               torch.Generator().manual_seed(11)))


def test_loader_batches_are_crops_of_their_images() -> None:
    data = indexed_data(n=40, size=6, pad=3)
    for x, y in BatchLoader(data, 8, train=True, seed=1):
        for img, label in zip(denormalize(x), y, strict=True):
            match_crop(data.images[label], img, 3)


def test_flip_probability_is_about_half() -> None:
    data = indexed_data(n=4000, size=4, pad=0)
    out = augment_batch(data.images, 0, True, torch.Generator().manual_seed(0))
    flipped = (out != data.images).flatten(1).any(1).float().mean().item()
    assert 0.46 < flipped < 0.54
    assert torch.equal(augment_batch(data.images, 0, False, torch.Generator()), data.images)


@pytest.mark.parametrize("train", [True, False])
def test_two_ranks_shard_the_single_process_batch(train: bool) -> None:
    data = indexed_data()
    full = BatchLoader(data, 12, train, seed=5)
    ranks = [BatchLoader(data, 12, train, seed=5, rank=r, world_size=2) for r in (0, 1)]
    for e in (0, 3):
        for loader in (full, *ranks):
            loader.set_epoch(e)
        for (x, y), (x0, y0), (x1, y1) in zip(full, *ranks, strict=True):
            assert sorted(torch.cat([y0, y1]).tolist()) == sorted(y.tolist())
            assert torch.equal(x[0::2], x0) and torch.equal(x[1::2], x1)
            assert torch.equal(y[0::2], y0) and torch.equal(y[1::2], y1)


def test_bad_sharding_and_batch_arguments() -> None:
    data = indexed_data(n=20)
    with pytest.raises(ValueError, match="multiple of world size 4"):
        BatchLoader(data, 10, True, world_size=4)
    with pytest.raises(ValueError, match="rank 2 outside 0..1"):
        BatchLoader(data, 10, True, rank=2, world_size=2)
    with pytest.raises(ValueError, match="exceeds the 20 training images"):
        BatchLoader(data, 32, True)
    assert len(BatchLoader(data, 32, False)) == 1  # evaluation keeps a short last batch


def test_normalisation_matches_formula() -> None:
    data = indexed_data(n=10)
    x, _ = next(iter(BatchLoader(data, 10, train=False)))
    mean, std = torch.tensor(MEAN).view(1, 3, 1, 1), torch.tensor(STD).view(1, 3, 1, 1)
    expected = (data.images.float() / 255 - mean) / std
    assert x.dtype == torch.float32
    torch.testing.assert_close(x, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("train", [True, False])
@pytest.mark.parametrize("channels_last", [True, False])
def test_channels_last_flag(train: bool, channels_last: bool) -> None:
    x, _ = next(iter(BatchLoader(indexed_data(), 8, train, channels_last=channels_last)))
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    assert x.is_contiguous(memory_format=fmt) and x.shape == (8, 3, 8, 8)
