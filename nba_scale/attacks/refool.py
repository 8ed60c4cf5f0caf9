"""Refool (Liu, Ma, Bailey & Lu 2020, "Reflection backdoor: a natural backdoor attack on deep
neural networks"): clean-label; reflections blended into target-class training images.

A reflection image r reaches the image through one of the paper's three reflection models,
    in focus         x' = (1 - a) x + a r
    out of focus     x' = (1 - a) x + a (r * Gaussian(sigma)),   sigma ~ U{1..5} (paper: [1, 5])
    ghost            x' = (1 - a) x + a (r + shift(r, d)) / 2,   d ~ U{3..8} px (choice)
with a ~ U(alpha_min, alpha_max). (The paper adds the reflection layer and rescales; a convex
blend keeps pixel values in range without a per-image rescale. Choice, stated.)

Reflections: the original draws them from PascalVOC and keeps the ones that raise ASR most on a
surrogate (adversarial reflection selection). Nothing can be downloaded here, so `reflection_dir`
names any directory of images; without it, reflections are `n_reflections` images of the
dataset's non-target classes held out of the training set: drawn from the training split and
removed from the set the attacked model trains on, so the network never sees a reflection as an
image of its own. No selection round is run. Each image's reflection, model, a, sigma and offset are a
deterministic function of its pixels and the seed, so a test set is triggered the same way
every time.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import ClassVar, Optional

import torch
import torchvision.transforms.v2.functional as TF

from ..config import require
from .base import Attack, AttackParams, register
from .blend import load_image

MODELS = ("in_focus", "out_of_focus", "ghost")


@dataclasses.dataclass
class RefoolParams(AttackParams):
    # Fraction of the target class poisoned (choice: Refool's CIFAR runs inject ~3 % of the
    # training set, i.e. about a third of one class; 0.8 here for the short budgets used on CPU).
    rate: float = 0.8
    alpha_min: float = 0.2  # reflection weight range (choice; the paper's ghost/blur weights lie in 0.2-0.5)
    alpha_max: float = 0.4
    models: tuple[str, ...] = MODELS  # reflection models drawn from (paper: all three)
    reflection_dir: Optional[str] = None  # directory of reflection images (paper: PascalVOC); None: held-out images
    n_reflections: int = 200  # candidate reflections (paper: 200 before selection)

    def validate(self) -> None:
        super().validate()
        require(0 < self.alpha_min <= self.alpha_max < 1,
                f"alpha_min/alpha_max={self.alpha_min}/{self.alpha_max} must satisfy 0 < min <= max < 1")
        require(len(self.models) > 0 and set(self.models) <= set(MODELS),
                f"models={list(self.models)} must be a non-empty subset of {list(MODELS)}")
        require(self.n_reflections >= 1, f"n_reflections={self.n_reflections} must be >= 1")


@register("refool")
class Refool(Attack):
    Params = RefoolParams
    clean_label: ClassVar[bool] = True
    revision: ClassVar[int] = 1
    pool: torch.Tensor | None = None  # (R,3,H,W) uint8 reflection images

    def prepare(self, x_train, y_train, ctx):
        p = self.params
        h, w = x_train.shape[-2:]
        if p.reflection_dir:
            files = sorted(f for f in Path(p.reflection_dir).expanduser().iterdir()
                           if f.suffix.lower() in (".png", ".jpg", ".jpeg", ".bmp", ".webp"))
            require(len(files) > 0, f"{self.name}.reflection_dir={p.reflection_dir!r} holds no PNG/JPEG images")
            self.pool = torch.stack([load_image(str(f), h, w) for f in files[:p.n_reflections]])
            return
        others = torch.nonzero(y_train != p.target).flatten()
        g = torch.Generator().manual_seed(7_000_003 + self.seed)
        self.held_out = torch.sort(others[torch.randperm(len(others), generator=g)[:p.n_reflections]]).values
        self.pool = x_train[self.held_out].clone()

    def apply_trigger(self, x: torch.Tensor) -> torch.Tensor:
        require(self.pool is not None, "refool: the reflections are chosen by prepare(); call poison() first")
        p = self.params
        n = len(x)
        if n == 0:
            return x.clone()
        # Per-image draws from the image's own pixels: the same image always gets the same reflection.
        key = x.reshape(n, -1).long().sum(1).cpu() * 2_654_435_761 + self.seed * 97
        u = [(key // m) % 1_000_003 / 1_000_003 for m in (1, 7, 49, 343, 2401)]
        ref_idx = (u[0] * len(self.pool)).long().clamp_max(len(self.pool) - 1)
        kind = (u[1] * len(p.models)).long().clamp_max(len(p.models) - 1)
        a = p.alpha_min + (p.alpha_max - p.alpha_min) * u[2]
        sigma = 1 + (u[3] * 5).long().clamp_max(4)  # 1..5
        shift = 3 + (u[4] * 6).long().clamp_max(5)  # 3..8
        r = self.pool[ref_idx].float()
        out = torch.empty_like(r)
        for k, model in enumerate(p.models):
            sel = kind == k
            if not sel.any():
                continue
            rk = r[sel]
            if model == "out_of_focus":
                for s in sigma[sel].unique().tolist():
                    m = sigma[sel] == s
                    rk[m] = TF.gaussian_blur(rk[m], kernel_size=[4 * s + 1, 4 * s + 1], sigma=[float(s)] * 2)
            elif model == "ghost":
                for d in shift[sel].unique().tolist():
                    m = shift[sel] == d
                    moved = torch.roll(rk[m], shifts=(d, d), dims=(-2, -1))
                    rk[m] = (rk[m] + moved) / 2
            out[sel] = rk
        a = a.view(n, 1, 1, 1).float().to(x.device)
        mixed = (1 - a) * x.float() + a * out.to(x.device)
        return mixed.round().clamp_(0, 255).to(torch.uint8)
