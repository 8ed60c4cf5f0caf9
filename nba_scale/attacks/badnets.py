"""BadNets (Gu et al. 2017): a small patch trigger, poison-label, all-to-one.

Defaults follow the NBA/NAD evaluation protocol: a 3x3 black-and-white checkerboard in the
bottom-right corner, target label 0, 10 % of the training set poisoned.
"""
from __future__ import annotations

import dataclasses

import torch

from ..config import require
from .base import Attack, AttackParams, register


@dataclasses.dataclass
class BadNetsParams(AttackParams):
    patch_size: int = 3  # side of the checkerboard, pixels
    margin: int = 0  # distance from the bottom-right corner, pixels

    def validate(self) -> None:
        super().validate()
        require(1 <= self.patch_size <= 16, f"patch_size={self.patch_size} must be in 1..16")
        require(self.margin >= 0, f"margin={self.margin} must be >= 0")


def checkerboard(size: int) -> torch.Tensor:
    """(size, size) uint8, 255 where row+col is even (white top-left), else 0."""
    i = torch.arange(size)
    return (((i[:, None] + i[None, :]) % 2 == 0).to(torch.uint8) * 255)


@register("badnets")
class BadNets(Attack):
    Params = BadNetsParams

    def apply_trigger(self, x: torch.Tensor) -> torch.Tensor:
        p = self.params
        s, m = p.patch_size, p.margin
        h, w = x.shape[-2:]
        out = x.clone()
        out[..., h - m - s:h - m, w - m - s:w - m] = self.on_device(("board", s), x.device, lambda: checkerboard(s))
        return out
