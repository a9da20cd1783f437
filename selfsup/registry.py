"""Name -> constructor registries, so that adding a method or an encoder is one new file.

Modelled on timm's ``register_model`` and solo-learn's method table: a module registers itself
on import, and the CLI looks things up by the name the user typed.

A registry may be given ``attributes``: per name, class attributes declared elsewhere (the
methods' metadata in selfsup/catalog.py, which ``--help`` reads without importing torch). An
item registering under such a name receives them, and may not set them itself: each is declared
once.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Generic, TypeVar

from selfsup.errors import SelfsupError

T = TypeVar("T", bound=Callable)


class Registry(Generic[T]):
    """A named table of constructors with a helpful error for unknown names."""

    def __init__(self, kind: str,
                 attributes: Mapping[str, Mapping[str, Any]] | None = None) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}
        self._attributes = attributes or {}

    def register(self, name: str) -> Callable[[T], T]:
        def add(item: T) -> T:
            if name in self._items:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            declared = self._attributes.get(name, {})
            own = sorted(set(declared) & set(vars(item)))
            if own:
                raise ValueError(f"{self.kind} {name!r} sets {', '.join(own)} itself; they are "
                                 "declared once, in its catalogue entry")
            for attribute, value in declared.items():
                setattr(item, attribute, value)
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
