"""YAML reading that fails fast and clearly: safe tags only, no duplicate keys, no alias tricks.

`yaml.safe_load` never runs code, but it accepts what a config never needs and what makes later
code misbehave: a duplicate key silently keeps the last value; a self-referencing alias builds a
cyclic structure (RecursionError in any walker); an alias "bomb" (each level referring to the
previous one nine times) is small on disk but expands to billions of nodes in any walker. Here
a duplicate key is an error, and the loaded tree must be acyclic and at most MAX_NODES nodes
counted with aliases expanded (so a bomb is refused after MAX_NODES steps, in milliseconds).
"""

from __future__ import annotations

from typing import Any

import yaml

from lowbit.errors import LowbitError

MAX_NODES = 100_000


class YAMLError(LowbitError):
    """A config text is not acceptable YAML."""


class _Loader(yaml.SafeLoader):
    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)  # type: ignore[no-untyped-call]
            try:
                duplicate = key in seen
            except TypeError:  # an unhashable key (a list used as a key)
                raise YAMLError(f"line {key_node.start_mark.line + 1}: a mapping key must be "
                                f"a plain value, got {key!r}") from None
            if duplicate:
                raise YAMLError(f"line {key_node.start_mark.line + 1}: duplicate key {key!r}")
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def safe_load(text: str, source: str) -> Any:
    """Parse `text` (named `source` in errors) with the checks of the module docstring."""
    try:
        data = yaml.load(text, Loader=_Loader)  # noqa: S506 - _Loader is a SafeLoader
    except YAMLError as exc:
        raise YAMLError(f"{source}: {exc}") from None
    except yaml.YAMLError as exc:
        raise YAMLError(f"{source} is not valid YAML: {' '.join(str(exc).split())}") from None
    except RecursionError:
        raise YAMLError(f"{source}: nested too deeply") from None
    _check_tree(data, source)
    return data


def _check_tree(data: Any, source: str) -> None:
    """Refuse cycles and trees larger than MAX_NODES (aliases expanded), iteratively."""
    count, stack = 0, [(data, frozenset[int]())]
    while stack:
        node, path = stack.pop()
        count += 1
        if count > MAX_NODES:
            raise YAMLError(f"{source}: more than {MAX_NODES} values once aliases are expanded "
                            "(an alias bomb?)")
        if isinstance(node, dict | list):
            if id(node) in path:
                raise YAMLError(f"{source}: an alias refers to itself (a cyclic structure)")
            inner = path | {id(node)}
            children = node.values() if isinstance(node, dict) else node
            stack.extend((child, inner) for child in children)
