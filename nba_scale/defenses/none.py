"""`none`: score the backdoored model as it is (the 'before' row of every table)."""
from __future__ import annotations

import dataclasses

from .base import Defense, register


@dataclasses.dataclass
class NoConfig:
    pass


@register("none")
class NoDefense(Defense):
    Config = NoConfig

    def repair(self, model, ctx):
        return model
