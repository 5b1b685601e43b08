"""Quantization methods as recipes: `prepare(model)`, hooks for the loop, `convert(model)`.

Each method lives in its own file and registers a config dataclass plus a recipe class. The
`quant:` section of a run config names the method (`method: qat|inq|lbw|gdrq|groupnet`) and is
validated by that method's schema when the config is loaded.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch import nn

from lowbit.engine.hooks import Hook
from lowbit.schema import ConfigError, from_dict, to_dict


class Recipe:
    """A method: turns a float model into its trainable low-bit form and back out for deployment."""

    def prepare(self, model: nn.Module) -> nn.Module:
        """Return the model with the method's layers in place (may modify `model`)."""
        return model

    def hooks(self) -> list[Hook]:
        """Hooks the trainer calls (gradient masks, schedules, weight swaps)."""
        return []

    def convert(self, model: nn.Module) -> nn.Module:
        """The deployable model after training (e.g. weights snapped to their codebook)."""
        return model

    def epochs(self) -> int | None:
        """The total epochs the method's schedule needs, or None to use `train.epochs`."""
        return None


@dataclass
class _Entry:
    schema: type
    build: Callable[[Any], Recipe]


_RECIPES: dict[str, _Entry] = {}


def register_recipe(
    name: str, schema: type
) -> Callable[[Callable[[Any], Recipe]], Callable[[Any], Recipe]]:
    def deco(build: Callable[[Any], Recipe]) -> Callable[[Any], Recipe]:
        _RECIPES[name] = _Entry(schema, build)
        return build

    return deco


def _load_all() -> None:
    import importlib

    for mod in ("qat", "inq", "lbw", "gdrq", "groupnet"):
        try:
            importlib.import_module(f"lowbit.recipes.{mod}")
        except ModuleNotFoundError as exc:
            if exc.name != f"lowbit.recipes.{mod}":
                raise


def list_recipes() -> list[str]:
    _load_all()
    return sorted(_RECIPES)


def validate_quant_section(section: dict[str, Any]) -> dict[str, Any]:
    """Check a `quant:` section against its method's schema; returns it with defaults filled in."""
    _load_all()
    method = section.get("method")
    if method not in _RECIPES:
        raise ConfigError(
            f"quant.method: {method!r} is not a method; choose one of "
            f"{', '.join(sorted(_RECIPES)) or '(none installed)'}"
        )
    body = {k: v for k, v in section.items() if k != "method"}
    cfg: Any = from_dict(_RECIPES[method].schema, body, "quant")
    return {"method": method, **to_dict(cfg)}


def quant_section_for(method: str, bits: int) -> dict[str, Any]:
    """The `quant:` section `lowbit quantize --method M --bits B` starts from."""
    _load_all()
    if method not in _RECIPES:
        raise ConfigError(
            f"--method {method!r} is not a method; choose one of {', '.join(sorted(_RECIPES))}"
        )
    if method == "qat":
        return {"method": "qat", "weight": {"name": "uniform", "bits": bits}}
    fields = {f.name for f in dataclasses.fields(_RECIPES[method].schema)}
    key = "bits" if "bits" in fields else "weight_bits"
    return {"method": method, key: bits}


def build_recipe(section: dict[str, Any]) -> Recipe:
    """The recipe object for a validated `quant:` section."""
    _load_all()
    entry = _RECIPES[section["method"]]
    body = {k: v for k, v in section.items() if k != "method"}
    return entry.build(from_dict(entry.schema, body, "quant"))
