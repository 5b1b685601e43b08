"""name -> quantizer class; `get_quantizer(config)` builds one from `to_config()` output."""

from __future__ import annotations

import difflib
import inspect
from typing import Any

from lowbit.errors import LowbitError
from lowbit.quant.base import Quantizer
from lowbit.registry import Registry

QUANTIZERS: Registry[type[Quantizer]] = Registry("quantizer")


def register_quantizer(cls: type[Quantizer]) -> type[Quantizer]:
    """Class decorator: register a Quantizer subclass under its `name`."""
    if not cls.name:
        raise TypeError(f"{cls.__name__} has no `name`")
    return QUANTIZERS.add(cls.name, cls)


def list_quantizers() -> list[str]:
    return QUANTIZERS.names()


def get_quantizer(config: dict[str, Any] | str | Quantizer) -> Quantizer:
    """Build a quantizer from a config dict (`{"name": ..., **kwargs}`) or a name.

    A `Quantizer` instance is passed through unchanged.
    """
    if isinstance(config, Quantizer):
        return config
    if isinstance(config, str):
        config = {"name": config}
    config = dict(config)
    cls = QUANTIZERS.get(config.pop("name", None))
    accepted = [p for p in inspect.signature(cls.__init__).parameters if p != "self"]
    unknown = [k for k in config if k not in accepted]
    if unknown:
        close = difflib.get_close_matches(unknown[0], accepted, n=1)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        raise LowbitError(f"quantizer {cls.name} takes no argument {unknown[0]!r}; it takes "
                          f"{', '.join(accepted)}{hint}")
    try:
        return cls(**config)
    except TypeError as exc:
        raise LowbitError(f"quantizer {cls.name}: {exc}") from exc
