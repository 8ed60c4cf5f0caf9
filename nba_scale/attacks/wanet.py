"""WaNet (Nguyen & Tran 2021, "WaNet - Imperceptible warping-based backdoor attack"): poison-label,
all-to-one; the trigger is a smooth, fixed warping field applied with `grid_sample`.

    M = upsample_bicubic(U(-1, 1)^(2,k,k) / mean|.|, to H x W)      (drawn once, `field_seed`)
    grid = clamp((identity + s * M / H) * grid_rescale, -1, 1)
    x' = grid_sample(x, grid)
Noise mode: `cross_ratio * rate * N` further training images are warped by the same field plus
a random one (U(-1, 1) / H per pixel) and keep their true labels, so the network learns that only
this field means the target. Defaults are the paper's CIFAR-10 settings: k = 4, s = 0.5, grid
rescale 1, cross ratio 2, 10 % poisoned.

WaNet controls training and draws fresh noise and fresh poisoned images in every batch; here the
attack is data poisoning like the others (one poisoned training set, cached models keyed by it),
so the backdoor and noise images are drawn once, each noise image with its own random field.
Choice, stated in docs/ATTACKS.md; it changes no test-time behaviour.
"""
from __future__ import annotations

import dataclasses
import functools

import torch
import torch.nn.functional as F

from ..config import require
from .base import Attack, AttackParams, register


@dataclasses.dataclass
class WaNetParams(AttackParams):
    k: int = 4  # control grid size of the warping field (paper: 4)
    s: float = 0.5  # warping strength (paper: 0.5)
    grid_rescale: float = 1.0  # (paper: 1)
    cross_ratio: float = 2.0  # noise-mode images per poisoned image (paper: 2)
    field_seed: int = 0  # seed of the warping field (fixed per attack, not per trial seed)

    def validate(self) -> None:
        super().validate()
        require(self.k >= 2, f"k={self.k} must be >= 2")
        require(self.s > 0, f"s={self.s} must be > 0")
        require(self.grid_rescale > 0, f"grid_rescale={self.grid_rescale} must be > 0")
        require(self.cross_ratio >= 0, f"cross_ratio={self.cross_ratio} must be >= 0")


@register("wanet")
class WaNet(Attack):
    Params = WaNetParams

    @functools.lru_cache(maxsize=4)
    def grid(self, h: int, w: int) -> torch.Tensor:
        """(1,H,W,2) sampling grid of the trigger."""
        p = self.params
        g = torch.Generator().manual_seed(p.field_seed)
        ins = torch.rand(1, 2, p.k, p.k, generator=g) * 2 - 1
        ins = ins / ins.abs().mean()
        noise = F.interpolate(ins, size=(h, w), mode="bicubic", align_corners=True).permute(0, 2, 3, 1)
        ys, xs = torch.meshgrid(torch.linspace(-1, 1, h), torch.linspace(-1, 1, w), indexing="ij")
        identity = torch.stack((xs, ys), 2)[None]
        return ((identity + p.s * noise / h) * p.grid_rescale).clamp(-1, 1)

    def warp(self, x: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
        out = F.grid_sample(x.float(), grid.to(x.device).expand(len(x), -1, -1, -1), align_corners=True)
        return out.round().clamp_(0, 255).to(torch.uint8)

    def apply_trigger(self, x: torch.Tensor) -> torch.Tensor:
        if len(x) == 0:
            return x.clone()
        h, w = x.shape[-2:]
        return self.warp(x, self.on_device(("grid", h, w), x.device, lambda: self.grid(h, w)))

    def noise_samples(self, x, y, poisoned):
        k = int(round(self.params.cross_ratio * len(poisoned)))
        idx = self.others(len(y), k, poisoned, salt=3_000_017)
        if len(idx) == 0:
            return None
        h, w = x.shape[-2:]
        g = torch.Generator().manual_seed(3_000_019 + self.seed)
        jitter = (torch.rand(len(idx), h, w, 2, generator=g) * 2 - 1) / h
        return idx, self.warp(x[idx], (self.grid(h, w) + jitter).clamp(-1, 1))
