"""name -> quantizer class; `get_quantizer(config)` builds one from `to_config()` output."""

from __future__ import annotations

from typing import Any

from lowbit.errors import LowbitError
from lowbit.quant.base import Quantizer

_QUANTIZERS: dict[str, type[Quantizer]] = {}


def register_quantizer(cls: type[Quantizer]) -> type[Quantizer]:
    if not cls.name:
        raise TypeError(f"{cls.__name__} has no `name`")
    _QUANTIZERS[cls.name] = cls
    return cls


def list_quantizers() -> list[str]:
    return sorted(_QUANTIZERS)


def get_quantizer(config: dict[str, Any] | str | Quantizer) -> Quantizer:
    """Build a quantizer from a config dict (`{"name": ..., **kwargs}`) or a name.

    A `Quantizer` instance is passed through unchanged.
    """
    if isinstance(config, Quantizer):
        return config
    if isinstance(config, str):
        config = {"name": config}
    config = dict(config)
    name = config.pop("name", None)
    if name not in _QUANTIZERS:
        choices = ", ".join(list_quantizers())
        raise LowbitError(f"unknown quantizer {name!r}; choose one of {choices}")
    try:
        return _QUANTIZERS[name](**config)
    except TypeError as exc:
        raise LowbitError(f"quantizer {name}: {exc}") from exc
