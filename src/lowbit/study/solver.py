"""Width solver: the width multiplier whose integer-channel model has a given stored size.

Spec §6.2: the parameters of a width-scaled CNN are P(w) = A w^2 + B w (+ a constant for
BN and scales), so the stored size at fixed bits is a quadratic in w. We fit that quadratic
exactly through three sizes, solve it for the target, then bisect on w over the true
(step-shaped, because channels are integers) size to the two models either side of the target
and keep the closer one. Everything is counted on meta-device models: no data, no training.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from torch import nn

from lowbit.models import create_model
from lowbit.study.size import Bits, ModelFactory, SizeBreakdown, build_meta, model_size

_MIN_WIDTH, _MAX_WIDTH = 1e-3, 64.0


@dataclass(frozen=True)
class ZooFactory:
    """A picklable `width -> model` for a registered model (`create_model`)."""

    name: str
    num_classes: int = 10
    in_channels: int = 3
    kwargs: tuple[tuple[str, Any], ...] = ()

    def __call__(self, width: float) -> nn.Module:
        return create_model(self.name, self.num_classes, self.in_channels, width,
                            **dict(self.kwargs))


@dataclass(frozen=True)
class SolvedWidth:
    """The chosen width, its model's stored size and the target.

    `step` is the relative size gap between the two integer-channel models either side of the
    target: no width can do better than half of it (ResNets scale only three channel counts,
    so at narrow widths one channel more in the last stage moves the size by several %).
    """

    width: float
    size: SizeBreakdown
    target: float
    step: float

    @property
    def error(self) -> float:
        """(size - target) / target."""
        return (self.size.total - self.target) / self.target


def solve_width(factory: ModelFactory, bits: Bits, target_bytes: float,
                first_last_bits: int = 8) -> SolvedWidth:
    """The width whose integer-channel model `factory(width)` at `bits` stores closest to
    `target_bytes` (see module doc).

    Raises:
        ValueError: a target the family cannot reach between widths 0.001 and 64.
    """
    def size(w: float) -> float:
        return model_size(factory, w, bits, first_last_bits).total

    guess = _quadratic_guess(size, target_bytes)
    lo, hi = _bracket(size, target_bytes, guess)
    # w* = inf{w : size(w) > target}. A channel count c*w moves only every 1/c in w, so a
    # bracket of 1e-6 separates the models either side of w* for any c below 10^5.
    while hi - lo > 1e-6:
        mid = 0.5 * (lo + hi)
        if size(mid) > target_bytes:
            hi = mid
        else:
            lo = mid
    below, above = size(lo), size(hi)
    best = lo if abs(below - target_bytes) <= abs(above - target_bytes) else hi
    width = _short_width(factory, best)
    return SolvedWidth(width, model_size(factory, width, bits, first_last_bits), target_bytes,
                       (above - below) / target_bytes)


def _quadratic_guess(size: Any, target: float) -> float:
    """Root of the quadratic through the sizes at widths 0.5, 1 and 2."""
    xs = (0.5, 1.0, 2.0)
    ys = [size(x) for x in xs]
    # Newton's divided differences: s(w) = a w^2 + b w + c
    d1, d2 = (ys[1] - ys[0]) / 0.5, (ys[2] - ys[1]) / 1.0
    a = (d2 - d1) / 1.5
    b = d1 - a * 1.5
    c = ys[0] - a * 0.25 - b * 0.5
    if a <= 0:
        return max((target - c) / b, _MIN_WIDTH) if b > 0 else 1.0
    disc = b * b - 4 * a * (c - target)
    root = (-b + math.sqrt(disc)) / (2 * a) if disc >= 0 else 1.0
    return min(max(root, _MIN_WIDTH), _MAX_WIDTH)


def _bracket(size: Any, target: float, guess: float) -> tuple[float, float]:
    """(lo, hi) with size(lo) <= target < size(hi), grown geometrically around `guess`."""
    lo, hi = guess, guess
    while size(lo) > target:
        if lo <= _MIN_WIDTH:
            raise ValueError(f"target {target:,.0f} bytes is below the smallest model of this "
                             "family")
        lo = max(lo / 1.25, _MIN_WIDTH)
    while size(hi) <= target:
        if hi >= _MAX_WIDTH:
            raise ValueError(f"target {target:,.0f} bytes needs a width above {_MAX_WIDTH}")
        hi = min(hi * 1.25, _MAX_WIDTH)
    return lo, hi


def _short_width(factory: ModelFactory, width: float) -> float:
    """The fewest-decimals width that builds the same architecture as `width`."""
    want = _shapes(factory, width)
    for digits in range(1, 10):
        scale = 10**digits
        for short in (round(width, digits), math.ceil(width * scale) / scale):
            if short > 0 and _shapes(factory, short) == want:
                return short
    return width


def _shapes(factory: ModelFactory, width: float) -> list[tuple[int, ...]]:
    model = build_meta(factory, width)
    return [tuple(p.shape) for p in model.parameters()]
