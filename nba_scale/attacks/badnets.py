"""BadNets (Gu et al. 2017): a small patch trigger, poison-label, all-to-one.

Defaults follow the NBA/NAD evaluation protocol: a 3x3 black-and-white checkerboard in the
bottom-right corner, target label 0, 10 % of the training set poisoned. To score a model someone
else poisoned, `pattern` reproduces the NAD code's triggers exactly (`data_loader.py` of
bboylyg/NAD): `nad-grid` is its BadNets `gridTrigger`, our checkerboard with the top-left pixel
black, always 3x3 in the corner; `white` is its `squareTrigger` (a white `patch_size` square,
`margin` 1 there).
"""
from __future__ import annotations

import dataclasses

import torch

from ..config import require
from .base import Attack, AttackParams, register, scaled, stretch


@dataclasses.dataclass
class BadNetsParams(AttackParams):
    patch_size: int = 3  # side of the checkerboard, pixels at 32 px (base.scaled: 6 on 64-px images)
    margin: int = 0  # distance from the bottom-right corner, pixels at 32 px
    pattern: str = "checkerboard"  # checkerboard | nad-grid | white (see the module docstring)

    def validate(self) -> None:
        super().validate()
        require(self.pattern in PATTERNS, f"pattern={self.pattern!r}: use one of {', '.join(PATTERNS)}")
        require(self.pattern != "nad-grid" or (self.patch_size, self.margin) == (3, 0),
                "pattern=nad-grid is the NAD code's fixed 3x3 corner trigger: leave patch_size=3 and margin=0")
        require(1 <= self.patch_size <= 16, f"patch_size={self.patch_size} must be in 1..16")
        require(self.margin >= 0, f"margin={self.margin} must be >= 0")


PATTERNS = ("checkerboard", "nad-grid", "white")


def patch(pattern: str, size: int) -> torch.Tensor:
    """(size, size) uint8, the trigger's pixels (the same on every channel)."""
    if pattern == "white":
        return torch.full((size, size), 255, dtype=torch.uint8)
    board = checkerboard(size)
    if pattern == "nad-grid":
        board[0, 0] = 0
    return board


def checkerboard(size: int) -> torch.Tensor:
    """(size, size) uint8, 255 where row+col is even (white top-left), else 0."""
    i = torch.arange(size)
    return (((i[:, None] + i[None, :]) % 2 == 0).to(torch.uint8) * 255)


@register("badnets")
class BadNets(Attack):
    Params = BadNetsParams

    def apply_trigger(self, x: torch.Tensor) -> torch.Tensor:
        p = self.params
        h, w = x.shape[-2:]
        s, m = scaled(p.patch_size, h), scaled(p.margin, h)
        out = x.clone()
        out[..., h - m - s:h - m, w - m - s:w - m] = self.on_device(
            (p.pattern, s), x.device, lambda: stretch(patch(p.pattern, p.patch_size), s))
        return out

    def describe(self) -> dict:
        d = super().describe()
        if d["pattern"] == "checkerboard":  # the key it had before `pattern` existed: caches stay valid
            del d["pattern"]
        return d
