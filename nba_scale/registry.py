"""Name -> class registries filled by decorators (torchvision's `register_model` pattern)."""
from __future__ import annotations

from typing import Callable, Generic, TypeVar

from .config import ConfigError

T = TypeVar("T")


class Registry(Generic[T]):
    def __init__(self, kind: str):
        self.kind = kind
        self._items: dict[str, type[T]] = {}

    def register(self, name: str) -> Callable[[type[T]], type[T]]:
        def deco(cls: type[T]) -> type[T]:
            if name in self._items:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            cls.name = name  # type: ignore[attr-defined]
            self._items[name] = cls
            return cls
        return deco

    def names(self) -> list[str]:
        """In registration order: the package imports its plug-ins in the paper's order, which
        every table and listing follows."""
        return list(self._items)

    def get(self, name: str) -> type[T]:
        if name not in self._items:
            raise ConfigError(f"unknown {self.kind} {name!r}; known: {', '.join(self.names())}")
        return self._items[name]
