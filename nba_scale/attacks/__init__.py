"""Attack registry. A new attack is one file here that subclasses `Attack` and registers a name.

Names used everywhere: badnets, trojan, blend, sig, cla, refool.
"""
from ..registry import Registry
from .base import Attack, AttackContext, AttackParams, PoisonedData

ATTACKS: Registry[Attack] = Registry("attack", planned=("badnets", "trojan", "blend", "sig", "cla", "refool"))
register = ATTACKS.register


def get_attack(name: str) -> type[Attack]:
    return ATTACKS.get(name)


from . import badnets, blend, cla, refool, sig, trojan  # noqa: E402,F401  (registers)

__all__ = ["ATTACKS", "Attack", "AttackContext", "AttackParams", "PoisonedData", "get_attack", "register"]
