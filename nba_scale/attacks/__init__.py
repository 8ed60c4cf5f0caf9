"""Attacks. A new attack is one file here that subclasses `Attack` and registers a name with
`@register` (from .base); importing it below adds it to every listing, in this order (the paper's)."""
from . import badnets, trojan, blend, sig, cla, refool, wanet, bpp, lf, iad  # noqa: F401  (registers, in this order)
from .base import ATTACKS, Attack, AttackContext, AttackParams, get_attack, register

__all__ = ["ATTACKS", "Attack", "AttackContext", "AttackParams", "get_attack", "register"]
