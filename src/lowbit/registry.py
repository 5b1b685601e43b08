"""One registry helper behind models, quantizers, recipes, converters and file formats.

    MODELS: Registry[Callable[..., nn.Module]] = Registry("model")

    @MODELS.register("resnet20")
    def resnet20(...): ...

    MODELS.get("resnet21")  # LowbitError: unknown model 'resnet21'; choose one of resnet20, ...

A name is registered once: a second registration under the same name is refused (a plugin that
shadows a built-in by accident would otherwise change results silently).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from lowbit.errors import LowbitError

T = TypeVar("T")


class Registry(Generic[T]):
    """name -> object, with one-line errors that list the choices."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}

    def add(self, name: str, obj: T) -> T:
        """Register `obj` under `name`; a name already taken is an error."""
        if not isinstance(name, str) or not name:
            raise TypeError(f"a {self.kind} name must be a non-empty string, got {name!r}")
        if name in self._items:
            raise LowbitError(f"{self.kind} {name!r} is already registered")
        self._items[name] = obj
        return obj

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator form of `add`."""
        return lambda obj: self.add(name, obj)

    def get(self, name: object, what: str | None = None) -> T:
        """The object registered as `name`, or a LowbitError naming the choices."""
        if isinstance(name, str) and name in self._items:
            return self._items[name]
        label = what or self.kind
        raise LowbitError(f"unknown {label} {name!r}; choose one of {', '.join(self.names())}")

    def names(self, where: Callable[[str, T], bool] | None = None) -> list[str]:
        """Sorted names, optionally only those whose (name, object) pass `where`."""
        return sorted(n for n, o in self._items.items() if where is None or where(n, o))

    def remove(self, name: str) -> None:
        """Unregister `name` (for tests and plugins that clean up after themselves)."""
        self._items.pop(name, None)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._items)
