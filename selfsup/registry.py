"""Name -> constructor registries, so that adding a method or an encoder is one new file.

Modelled on timm's ``register_model`` and solo-learn's method table: a module registers itself
on import, and the CLI looks things up by the name the user typed.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

from selfsup.errors import SelfsupError

T = TypeVar("T", bound=Callable)


class Registry(Generic[T]):
    """A named table of constructors with a helpful error for unknown names."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def add(item: T) -> T:
            if name in self._items:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._items[name] = item
            return item

        return add

    def get(self, name: str) -> T:
        try:
            return self._items[name]
        except KeyError:
            raise SelfsupError(
                f"unknown {self.kind} {name!r}; choose one of: {', '.join(self.names())}"
            ) from None

    def names(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name: str) -> bool:
        return name in self._items
