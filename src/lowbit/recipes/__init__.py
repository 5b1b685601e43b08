"""Quantization methods as recipes: `prepare(model)`, `phases()`, callbacks, `convert(model)`.

Each method lives in its own file and registers a `Recipe` subclass on import of this package.
The `quant:` section of a run config names the method and is validated once, by
`parse_quant_section`, into that recipe with its typed config (see `lowbit.recipes.base`).
"""

from __future__ import annotations

import logging
from typing import Any

from lowbit.errors import LowbitError
from lowbit.recipes.base import (
    RECIPES,
    QuantConfig,
    Recipe,
    merge_spec,
    register_recipe,
)
from lowbit.recipes.legacy import migrate_section
from lowbit.schema import ConfigError, from_dict, to_dict

log = logging.getLogger(__name__)


def list_recipes() -> list[str]:
    return RECIPES.names()


def parse_quant_section(section: dict[str, Any]) -> Recipe:
    """The recipe a `quant:` section describes: old keys migrated, method defaults merged,
    every field checked. Raises ConfigError with the dotted key on any problem."""
    if not isinstance(section, dict):
        raise ConfigError(f"quant: expected a mapping, got {section!r}")
    cls = _recipe_class(section)
    body = migrate_section(cls, {k: v for k, v in section.items() if k != "method"})
    for side, default in (("weight", cls.default_weight), ("act", cls.default_act)):
        body[side] = merge_spec(default, body[side]) if side in body else default
    names = cls.weight_names
    if names and body["weight"] is not None and body["weight"].get("name") not in names:
        raise ConfigError(f"quant.weight.name: method {cls.name} works with "
                          f"{' / '.join(names)} weights, got {body['weight'].get('name')!r}")
    return cls(from_dict(cls.config_class, body, "quant"))


def create_recipe(method: str, **section: Any) -> Recipe:
    """A recipe for use in any training loop: `create_recipe("inq", weight={"bits": 4})`."""
    return parse_quant_section({"method": method, **section})


def method_bits(section: dict[str, Any]) -> int | None:
    """The weight bits a (possibly old-shape) `quant:` section sets itself, or None."""
    cls = _recipe_class(section)
    weight = migrate_section(cls, {k: v for k, v in section.items() if k != "method"}).get("weight")
    return weight.get("bits") if isinstance(weight, dict) else None


def _recipe_class(section: dict[str, Any]) -> type[Recipe]:
    try:
        return RECIPES.get(section.get("method"), "quant.method")
    except LowbitError as exc:  # a bad config value: ConfigError, as for every other key
        raise ConfigError(str(exc)) from None


def quant_section(recipe: Recipe) -> dict[str, Any]:
    """The canonical `quant:` section of a recipe (what a run directory stores)."""
    return {"method": recipe.name, **to_dict(recipe.cfg)}


from lowbit.recipes import gdrq, groupnet, inq, lbw, qat  # noqa: E402,F401  (registers them)

__all__ = ["QuantConfig", "Recipe", "create_recipe", "list_recipes", "method_bits",
           "parse_quant_section", "quant_section", "register_recipe"]
