"""Refool (Liu, Ma, Bailey & Lu 2020, "Reflection backdoor: a natural backdoor attack on deep
neural networks"): clean-label; reflections added to target-class training images.

The reflection layer r is added to the image t in linear light (gamma 2.2), by one of the
paper's three reflection models, with the arithmetic of the authors' released `blend_images`:
    ghost          x = (1 - a) * (g * r + (1 - g) * shift(r, d)) + a * t,
                   reflection share 1 - a ~ U(alpha_min, alpha_max), g ~ |{0,1} - U(0.15, 0.5)|,
                   d ~ U{3..8}^2 px;
    out of focus   x = V * (1 - a / 2) * clamp(k_sigma * r - overflow) + a * t,  sigma ~ U(1, 5) px,
                   V a centred Gaussian vignette, overflow the per-channel excess of k*r + t over 1
                   (times 1.08..1.18), as the authors do so that the sum stays in range;
    in focus       the same with no blur.
Pixel sizes (d, sigma) are those of the authors' working resolution (`working_size`, 560 px: they
resize every image to it before blending) and are scaled to the data's size, so on 32-px CIFAR
images the blur is below a pixel and a ghost's offset about a third of one, as in their images.

Reflections: the paper draws candidates from PascalVOC and keeps the top-m after rounds of
adversarial reflection selection (Algorithm 1): each round a surrogate trains on data poisoned
with the current top-m; each used reflection is scored by the ASR it gives on validation images,
the unused ones get the median score; the final top-m poison the training set and trigger the
test set. `reflection_dir` names any directory of images as the candidates; without it the
candidates are `n_candidates` images of the non-target classes held out of the training split
(the attacked model never trains on a reflection as an image of its own). The surrogate uses the
backdoor recipe for `selection_epochs` epochs; validation images are `selection_images`
non-target training images (the surrogate saw them clean). Each image's reflection, model and
strengths are a deterministic function of its pixels and the seed, so a test set is triggered
the same way every time.
"""
from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import ClassVar, Optional

import torch
import torch.nn.functional as F
import torchvision.transforms.v2.functional as TF

from ..config import require
from .base import Attack, AttackContext, AttackParams, register
from .blend import load_image

MODELS = ("in_focus", "out_of_focus", "ghost")
GAMMA = 2.2


@dataclasses.dataclass
class RefoolParams(AttackParams):
    # Fraction of the target class poisoned (choice: Refool's CIFAR runs inject ~3 % of the
    # training set, i.e. about a third of one class; 0.8 here for the short budgets used on CPU).
    rate: float = 0.8
    alpha_min: float = 0.05  # reflection share 1 - a, every model (authors' code: 0.05-0.45)
    alpha_max: float = 0.45
    models: tuple[str, ...] = MODELS  # reflection models drawn from (paper: all three)
    sigma_min: float = 1.0  # out-of-focus blur, px at working_size (authors' code: U(1, 5))
    sigma_max: float = 5.0
    working_size: int = 560  # the resolution the authors blend at; pixel sizes above refer to it
    reflection_dir: Optional[str] = None  # directory of candidate reflections (paper: PascalVOC); None: held out
    n_candidates: int = 200  # candidate reflections (held-out images, or the first files of reflection_dir)
    n_reflections: int = 20  # top-m kept by the selection (choice; see docs/ATTACKS.md)
    selection_rounds: int = 2  # adversarial selection rounds (0: the first n_reflections candidates)
    selection_epochs: int = 10  # the surrogate's epochs per round (backdoor recipe otherwise)
    selection_images: int = 200  # non-target validation images each reflection is scored on

    def validate(self) -> None:
        super().validate()
        require(0 < self.alpha_min <= self.alpha_max < 1,
                f"alpha_min/alpha_max={self.alpha_min}/{self.alpha_max} must satisfy 0 < min <= max < 1")
        require(0 < self.sigma_min <= self.sigma_max, f"sigma_min/sigma_max={self.sigma_min}/{self.sigma_max} "
                                                      f"must satisfy 0 < min <= max")
        require(len(self.models) > 0 and set(self.models) <= set(MODELS),
                f"models={list(self.models)} must be a non-empty subset of {list(MODELS)}")
        require(self.working_size >= 32, f"working_size={self.working_size} must be >= 32")
        require(1 <= self.n_reflections <= self.n_candidates,
                f"n_reflections={self.n_reflections} must be in 1..n_candidates ({self.n_candidates})")
        require(self.selection_rounds >= 0 and self.selection_epochs >= 1 and self.selection_images >= 1,
                "selection_rounds must be >= 0, selection_epochs and selection_images >= 1")


def _draws(x: torch.Tensor, seed: int, k: int) -> torch.Tensor:
    """(N, k) uniforms in [0, 1), a function of each image's pixels and the seed."""
    key = x.reshape(len(x), -1).long().sum(1).cpu().tolist()
    rows = [torch.rand(k, generator=torch.Generator().manual_seed(v * 1_000_003 + seed * 97 + 13)) for v in key]
    return torch.stack(rows) if rows else torch.empty(0, k)


def vignette(h: int, w: int) -> torch.Tensor:
    """The authors' reflection mask: a centred Gaussian reaching exp(-9/4) at the image's sides."""
    u, v = torch.linspace(-3, 3, h), torch.linspace(-3, 3, w)
    return torch.exp(-(u[:, None] ** 2 + v[None, :] ** 2) / 4)


def reflect(t: torch.Tensor, r: torch.Tensor, model: str, u: torch.Tensor, p: RefoolParams) -> torch.Tensor:
    """One reflected image: t and r (3,H,W) uint8, u 7 uniforms; returns uint8."""
    h, w = t.shape[-2:]
    scale = max(h, w) / p.working_size
    t = (t.float() / 255) ** GAMMA
    r = (r.float() / 255) ** GAMMA
    a = 1 - (p.alpha_min + (p.alpha_max - p.alpha_min) * float(u[0]))  # the image's share
    if model == "ghost":
        dy, dx = (3 + int(float(q) * 6) for q in u[1:3])
        g = 0.15 + 0.35 * float(u[3])
        g = 1 - g if u[4] < 0.5 else g
        # Shift by a sub-pixel amount where the working size dwarfs the image: resample instead of rolling.
        theta = torch.tensor([[1, 0, -2 * dx * scale / w], [0, 1, -2 * dy * scale / h]], dtype=torch.float32)
        grid = F.affine_grid(theta[None], [1, 3, h, w], align_corners=False)
        moved = F.grid_sample(r[None], grid, align_corners=False, padding_mode="zeros")[0]
        out = (1 - a) * (g * r + (1 - g) * moved) + a * t
    else:
        if model == "out_of_focus":
            sigma = (p.sigma_min + (p.sigma_max - p.sigma_min) * float(u[1])) * scale
            size = 2 * math.ceil(2 * sigma) + 1
            r = TF.gaussian_blur(r[None], [size, size], [sigma, sigma])[0]
        total = r + t
        over = total > 1
        excess = torch.where(over, total, torch.zeros_like(total)).sum((1, 2)) / (over.sum((1, 2)) + 1e-6)
        att = 1.08 + float(u[5]) / 10
        r = (r - (excess.clamp_min(1) - 1).view(3, 1, 1) * att).clamp(0, 1)
        out = vignette(h, w) * (1 - a / 2) * r + a * t
    return (out.clamp(0, 1) ** (1 / GAMMA) * 255).round().to(torch.uint8)


@register("refool")
class Refool(Attack):
    Params = RefoolParams
    clean_label: ClassVar[bool] = True
    # 2: the authors' reflection arithmetic and adversarial selection (1: held-out reflections).
    revision: ClassVar[int] = 2
    candidates: torch.Tensor | None = None  # (R,3,H,W) uint8
    pool: torch.Tensor | None = None  # the selected reflections

    def prepare(self, x_train, y_train, ctx):
        p = self.params
        h, w = x_train.shape[-2:]
        if p.reflection_dir:
            files = sorted(f for f in Path(p.reflection_dir).expanduser().iterdir()
                           if f.suffix.lower() in (".png", ".jpg", ".jpeg", ".bmp", ".webp"))
            require(len(files) > 0, f"{self.name}.reflection_dir={p.reflection_dir!r} holds no PNG/JPEG images")
            self.candidates = torch.stack([load_image(str(f), h, w) for f in files[:p.n_candidates]])
        else:
            others = torch.nonzero(y_train != p.target).flatten()
            g = torch.Generator().manual_seed(7_000_003 + self.seed)
            self.held_out = torch.sort(others[torch.randperm(len(others), generator=g)[:p.n_candidates]]).values
            self.candidates = x_train[self.held_out].clone()
        chosen = torch.arange(min(p.n_reflections, len(self.candidates)))
        if p.selection_rounds and len(self.candidates) > p.n_reflections:
            ctx = self.needs_context(ctx)
            chosen = ctx.artifact("selection", lambda: self.select_reflections(x_train, y_train, ctx))["chosen"]
        self.pool = self.candidates[chosen]

    def select_reflections(self, x_train: torch.Tensor, y_train: torch.Tensor, ctx: AttackContext
                           ) -> dict[str, torch.Tensor]:
        """Liu et al.'s Algorithm 1 over `selection_rounds` rounds: {"chosen": the top-m candidates,
        "score": each candidate's last score, "scored": which were ever scored by a surrogate}."""
        from ..metrics import predict

        p = self.params
        require(ctx.train is not None, "refool's reflection selection trains a surrogate: run it through "
                                       "nba_scale.run / run_trial, or set refool.selection_rounds=0")
        keep = torch.ones(len(y_train), dtype=torch.bool)
        if self.held_out is not None:
            keep[self.held_out] = False
        g = torch.Generator().manual_seed(5_000_011 + self.seed)
        others = torch.nonzero(keep & (y_train != p.target)).flatten()
        val = x_train[others[torch.randperm(len(others), generator=g)[:p.selection_images]]]
        idx = self.select(y_train)  # the images the attack will poison (never a held-out one)
        score = torch.ones(len(self.candidates))
        scored = torch.zeros(len(self.candidates), dtype=torch.bool)
        for k in range(p.selection_rounds):
            # Ties (every candidate at first, the unscored ones later) are broken at random, seeded.
            jitter = torch.rand(len(score), generator=g) * 1e-6
            top = torch.sort(torch.topk(score + jitter, p.n_reflections, sorted=False).indices).values
            self.pool = self.candidates[top]
            xp = x_train.clone()
            xp[idx] = self.apply_trigger(x_train[idx])
            model = ctx.train(xp[keep], y_train[keep], p.selection_epochs, f"refool selection {k + 1}/{p.selection_rounds}")
            for j, c in enumerate(top.tolist()):
                hit = predict(model, self.apply_trigger(val, only=j), ctx.device) == p.target
                score[c] = hit.float().mean()
            scored[top] = True
            score[~torch.isin(torch.arange(len(score)), top)] = score[top].median()
        chosen = torch.sort(torch.topk(score + scored * 1e-6, p.n_reflections, sorted=False).indices).values
        return {"chosen": chosen, "score": score, "scored": scored}

    def apply_trigger(self, x: torch.Tensor, only: Optional[int] = None) -> torch.Tensor:
        """Reflected copies; `only`: every image gets that reflection of the pool (selection)."""
        require(self.pool is not None, "refool: the reflections are chosen by prepare(); call poison() first")
        p = self.params
        u = _draws(x, self.seed, 9)
        ref = (u[:, 7] * len(self.pool)).long().clamp_max(len(self.pool) - 1) if only is None else None
        kind = (u[:, 8] * len(p.models)).long().clamp_max(len(p.models) - 1)
        out = [reflect(x[i].cpu(), self.pool[only if ref is None else int(ref[i])], p.models[int(kind[i])], u[i], p)
               for i in range(len(x))]
        return torch.stack(out).to(x.device) if out else x.clone()
