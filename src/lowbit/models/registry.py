"""Model registry: `@register_model` on a builder, `create_model(name, ...)` to build one.

Every builder takes `num_classes`, `in_channels` and `width` (a multiplier applied to every
channel count, rounded to an integer), because the equal-size bit-width study varies width.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from torch import nn

from lowbit.errors import LowbitError
from lowbit.registry import Registry

MODELS: Registry[Callable[..., nn.Module]] = Registry("model")


def register_model(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    """Register a model builder under its function name."""
    params = inspect.signature(fn).parameters
    missing = {"num_classes", "in_channels", "width"} - set(params)
    if missing:
        raise TypeError(f"model builder {fn.__name__} lacks arguments {sorted(missing)}")
    return MODELS.add(fn.__name__, fn)


def list_models() -> list[str]:
    return MODELS.names()


def create_model(name: str, num_classes: int = 10, in_channels: int = 3, width: float = 1.0,
                 **kwargs: Any) -> nn.Module:
    """Build a registered model. Unknown names and bad arguments raise a one-line error."""
    builder = MODELS.get(name)
    if num_classes < 1 or in_channels < 1:
        raise LowbitError("num_classes and in_channels must be positive")
    if not width > 0:
        raise LowbitError(f"width multiplier must be > 0, got {width}")
    accepted = inspect.signature(builder).parameters
    unknown = set(kwargs) - set(accepted)
    if unknown:
        raise LowbitError(f"model {name} takes no argument(s) {sorted(unknown)}; it takes "
                          f"{sorted(accepted)}")
    return builder(num_classes=num_classes, in_channels=in_channels, width=width, **kwargs)


def scaled(channels: int, width: float) -> int:
    """A channel count scaled by the width multiplier (at least 1)."""
    return max(1, int(round(channels * width)))
