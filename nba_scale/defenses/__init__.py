"""Defenses. A new defense is one file here that subclasses `Defense` and registers a name with
`@register` (from .base); importing it below adds it to every listing, in this order (the paper's
Table 2, the repair defenses beyond it, then `none`)."""
from . import ft, fp, mcr, nad, argd, nba, anp, ibau, sau, none  # noqa: F401  (registers, in this order)
from .base import DEFENSES, Defense, DefenseContext, get_defense, register

__all__ = ["DEFENSES", "Defense", "DefenseContext", "get_defense", "register"]
