"""Name -> class registries filled by decorators (torchvision's `register_model` pattern), and
plug-ins from other installed packages through entry points.

A package adds an attack (or a defense) without editing this one: it declares an entry point in
the group `nba_scale.attacks` (`nba_scale.defenses`) naming a module or a class,

    [project.entry-points."nba_scale.attacks"]
    corner = "corner_attack"             # a module whose import registers it (@register("corner"))
    # or: corner = "corner_attack:Corner"  # a class, registered under the entry point's name

and `--attack corner` finds it, with the same contract and checks as a built-in one (its
`Params`/`Config` dataclass, `--set corner.KEY`). Entry points are read once, on the first
lookup, after the built-ins (so listings keep the paper's order first); one that fails to load
is reported on stderr, naming it, and left out rather than breaking every command.
"""
from __future__ import annotations

import sys
from typing import Callable, Generic, Optional, TypeVar

from .config import ConfigError

T = TypeVar("T")


class Registry(Generic[T]):
    def __init__(self, kind: str, group: Optional[str] = None):
        self.kind, self.group = kind, group
        self._items: dict[str, type[T]] = {}
        self._plugins_read = group is None

    def register(self, name: str) -> Callable[[type[T]], type[T]]:
        def deco(cls: type[T]) -> type[T]:
            if name in self._items:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            cls.name = name  # type: ignore[attr-defined]
            self._items[name] = cls
            return cls
        return deco

    def _read_plugins(self) -> None:
        if self._plugins_read:
            return
        self._plugins_read = True  # before loading: a plug-in's own import may look names up
        from importlib.metadata import entry_points

        for ep in entry_points(group=self.group):
            if ep.name in self._items:
                print(f"warning: {self.kind} plug-in {ep.name!r} ({ep.value}) has the name of one already "
                      f"registered; left out", file=sys.stderr)
                continue
            try:
                obj = ep.load()
            except Exception as e:  # someone else's code: say which, keep the rest working
                print(f"warning: {self.kind} plug-in {ep.name!r} ({ep.value}) failed to load: "
                      f"{type(e).__name__}: {e}; left out", file=sys.stderr)
                continue
            if ep.name not in self._items and isinstance(obj, type):
                self.register(ep.name)(obj)
            if ep.name not in self._items:
                print(f"warning: {self.kind} plug-in {ep.name!r} ({ep.value}) registered nothing under that name "
                      f"(register the class with @register({ep.name!r}), or name the class in the entry point); "
                      "left out", file=sys.stderr)

    def names(self) -> list[str]:
        """In registration order: the package imports its plug-ins in the paper's order, which
        every table and listing follows; installed plug-ins after them."""
        self._read_plugins()
        return list(self._items)

    def get(self, name: str) -> type[T]:
        if name not in self._items:
            self._read_plugins()
        if name not in self._items:
            raise ConfigError(f"unknown {self.kind} {name!r}; known: {', '.join(self.names())}")
        return self._items[name]
