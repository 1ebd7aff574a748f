"""Named, swappable parts of a run (memory updaters, embeddings, edge predictors, sampling strategies,
pipeline schedulers): a part joins its kind's `Registry` by decorating its factory with `register(name)`,
and a config selects it by that name. A new part is then one new module, never an edit of the code that
uses it. The registries live next to the parts they hold; this module is shared by every package.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from common.errors import RegistryError

T = TypeVar("T")


class Registry(Generic[T]):
    """The parts of one kind by name, in registration order.

    `kind` says what the parts are in messages ("memory updater"); `config_key` is the dotted config key
    that selects one ("memory.updater"), so an unknown name points at the line to fix.
    """

    def __init__(self, kind: str, config_key: str | None = None) -> None:
        self.kind = kind
        self.config_key = config_key
        self._parts: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator that files a part under `name` and returns it unchanged.

        A name already taken by another part is refused: two modules silently competing for one name
        would make the chosen part depend on import order.
        """
        def add(part: T) -> T:
            taken = self._parts.get(name)
            if taken is not None and taken is not part:
                owner = getattr(taken, "__module__", "another module")
                raise RegistryError(f"{self.kind} {name!r} is already registered by {owner}")
            self._parts[name] = part
            return part

        return add

    def get(self, name: str) -> T:
        """The part registered under `name`; a `RegistryError` listing the known names if there is none."""
        if name not in self._parts:
            where = f"{self.config_key}: " if self.config_key else ""
            raise RegistryError(f"{where}unknown {self.kind} {name!r} (known: {', '.join(self._parts)})")
        return self._parts[name]

    def names(self) -> tuple[str, ...]:
        """The registered names, in registration order."""
        return tuple(self._parts)

    def __contains__(self, name: object) -> bool:
        return name in self._parts

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())
