"""Model registry: `@register_model` on a builder, `create_model(name, ...)` to build one.

A name is a registered model, a model an installed package declares in the `lowbit.models`
entry-point group, or a user's own builder written `package.module:callable`. A user builder
takes any of `num_classes`, `in_channels`, `width` (and its own keyword arguments). Building a
`module:callable` imports that module, so names read from a file (a checkpoint's config) are
imported only once trusted: `trust_model(name)` (the CLI's `--model NAME`), or
`trusted=True` for names the user typed (their own config, the Python API).

Every builder takes `num_classes`, `in_channels` and `width` (a multiplier applied to every
channel count, rounded to an integer), because the equal-size bit-width study varies width.
"""

from __future__ import annotations

import importlib
import importlib.metadata
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


_TRUSTED: set[str] = set()
ENTRY_POINTS = "lowbit.models"


def trust_model(name: str) -> None:
    """Allow `create_model(name, trusted=False)` to import the `module:callable` `name`."""
    _TRUSTED.add(name)


def is_user_model(name: str) -> bool:
    """`module:callable` or an installed package's entry point (not a built-in name)."""
    return name not in MODELS and (":" in name or _entry_point(name) is not None)


def _entry_point(name: str) -> Any:
    return next(iter(importlib.metadata.entry_points(group=ENTRY_POINTS, name=name)), None)


def _builder(name: str, trusted: bool) -> Callable[..., nn.Module]:
    if name in MODELS:
        return MODELS.get(name)
    entry = _entry_point(name)
    if entry is not None:  # an installed package declared it: installing was the trust
        return entry.load()  # type: ignore[no-any-return]
    if ":" not in name:
        return MODELS.get(name)  # unknown: the error lists the choices
    if not (trusted or name in _TRUSTED):
        raise LowbitError(f"model {name!r} is code outside lowbit, named by a file; lowbit "
                          f"never imports code a file names: pass --model {name} (or call "
                          "lowbit.models.trust_model) if you trust it")
    module, _, attr = name.partition(":")
    try:
        builder = getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as exc:
        raise LowbitError(f"model {name!r}: cannot import it ({exc}); the module must be "
                          "importable (installed, or on PYTHONPATH)") from None
    if not callable(builder):
        raise LowbitError(f"model {name!r} is not callable")
    return builder  # type: ignore[no-any-return]


def create_model(name: str, num_classes: int = 10, in_channels: int = 3, width: float = 1.0,
                 trusted: bool = True, **kwargs: Any) -> nn.Module:
    """Build a model by name (see the module docstring); errors are one line.

    `trusted=False` for names read from a file: a `module:callable` must then be trusted first.
    """
    builder = _builder(name, trusted)
    if num_classes < 1 or in_channels < 1:
        raise LowbitError("num_classes and in_channels must be positive")
    if not width > 0:
        raise LowbitError(f"width multiplier must be > 0, got {width}")
    accepted = inspect.signature(builder).parameters
    unknown = set(kwargs) - set(accepted)
    if unknown:
        raise LowbitError(f"model {name} takes no argument(s) {sorted(unknown)}; it takes "
                          f"{sorted(accepted)}")
    given = {"num_classes": num_classes, "in_channels": in_channels, "width": width}
    if "width" not in accepted and width != 1.0:
        raise LowbitError(f"model {name} takes no width argument, so width must be 1.0")
    model = builder(**{k: v for k, v in given.items() if k in accepted}, **kwargs)
    if not isinstance(model, nn.Module):
        raise LowbitError(f"model {name} returned {type(model).__name__}, not an nn.Module")
    return model


def scaled(channels: int, width: float) -> int:
    """A channel count scaled by the width multiplier (at least 1)."""
    return max(1, int(round(channels * width)))
