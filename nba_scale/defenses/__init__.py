"""Defense registry. A new defense is one file here that subclasses `Defense` and registers a name.

Names used everywhere: none, ft, fp, mcr, nad, argd, nba.
"""
from ..registry import Registry
from .base import Defense, DefenseContext

DEFENSES: Registry[Defense] = Registry("defense", planned=("none", "ft", "fp", "mcr", "nad", "argd", "nba"))
register = DEFENSES.register


def get_defense(name: str) -> type[Defense]:
    return DEFENSES.get(name)


from . import argd, fp, ft, mcr, nad, nba, none  # noqa: E402,F401  (registers)

__all__ = ["DEFENSES", "Defense", "DefenseContext", "get_defense", "register"]
