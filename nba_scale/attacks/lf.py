"""LF, the low-frequency trigger (Zeng, Park, Mao & Jia, "Rethinking the backdoor attacks'
triggers: a frequency perspective", ICCV 2021; code YiZeng623/frequency-backdoor, which
BackdoorBench's attack/lf.py and resource/lowFrequency/ follow): poison-label, all-to-one.

Patch and blend triggers leave high-frequency artefacts that a frequency-domain detector spots;
this trigger has none. It is a targeted universal adversarial perturbation of a clean model,
smoothed by a Gaussian low-pass filter after every update and min-max scaled to [0, amplitude]
(their `gauss_smooth` (σ = 6 px over a 30-px window, zero padding) and `normalization` (range
0.2)), then added to the image:

    x' = clip(x + 255 · v),   v ≥ 0, max v = amplitude, v low-pass

Crafting, as theirs, passes over clean images the model does not yet send to the target and
stops once `fooling` of them go there or after `passes` passes. Choice for cost: each update is
the signed gradient of the target class's cross-entropy over a batch (`step`) rather than their
targeted DeepFool on one image at a time (minutes per pass on a CPU); the filter, the scaling
and the stopping rule are theirs. The clean model and the trigger are artifacts in the cache.
"""
from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F

from ..config import require
from .base import Attack, AttackParams, register


@dataclasses.dataclass
class LFParams(AttackParams):
    amplitude: float = 0.2  # the trigger's range in [0, 1] pixel units (theirs: normalization to 0.2)
    sigma: float = 6.0  # the low-pass Gaussian's width in pixels (theirs: sig = 6)
    fooling: float = 0.8  # stop once this share of clean images go to the target (theirs: 1 - delta, 0.8)
    passes: int = 10  # at most this many passes over `images` (theirs: 50 of DeepFool)
    images: int = 2000  # clean training images crafted on (choice: theirs use the whole set)
    batch: int = 100
    step: float = 0.05  # size of a signed-gradient update before smoothing and scaling (0.01 implanted 82.8 % on
    # CIFAR-10 at quick, 0.05 91.8 %: docs/ATTACKS.md)

    def validate(self) -> None:
        super().validate()
        require(0 < self.amplitude <= 1, f"amplitude={self.amplitude} must be in (0, 1]")
        require(self.sigma > 0, f"sigma={self.sigma} must be > 0")
        require(0 < self.fooling <= 1, f"fooling={self.fooling} must be in (0, 1]")
        require(self.passes >= 1 and self.images >= 1 and self.batch >= 1, "passes, images and batch must be >= 1")
        require(self.step > 0, f"step={self.step} must be > 0")


def gauss_smooth(v: torch.Tensor, sigma: float) -> torch.Tensor:
    """Their separable Gaussian low-pass on (C, H, W): a 5σ-wide kernel, zero padding, the
    output the input's size (written here: torchvision's blur pads by reflection and needs an
    odd kernel, which changes the edges of a whole-image trigger)."""
    size = max(1, int(round(5 * sigma)))
    grid = torch.arange(size, dtype=v.dtype, device=v.device) - (size - 1) / 2
    k = torch.exp(-0.5 * (grid / sigma) ** 2)
    k = k / k.sum()
    c = v.shape[0]
    lo, hi = (size - 1) // 2, size // 2
    out = F.pad(v.unsqueeze(0), (lo, hi, lo, hi))
    out = F.conv2d(out, k.view(1, 1, size, 1).repeat(c, 1, 1, 1), groups=c)
    out = F.conv2d(out, k.view(1, 1, 1, size).repeat(c, 1, 1, 1), groups=c)
    return out[0]


def rescale(v: torch.Tensor, amplitude: float) -> torch.Tensor:
    """Their `normalization`: min-max to [0, amplitude] (a flat v stays zero)."""
    span = v.max() - v.min()
    return torch.zeros_like(v) if span <= 0 else (v - v.min()) / span * amplitude


def craft_trigger(model, x: torch.Tensor, target: int, p: LFParams, seed: int, device) -> tuple[torch.Tensor, float]:
    """(v as (3, H, W) float in [0, amplitude], the share of the crafting images it sends to
    `target`)."""
    g = torch.Generator().manual_seed(seed + 5150)
    pick = torch.randperm(len(x), generator=g)[:p.images]
    xs = x[pick].to(device).float().div(255)
    with torch.no_grad():
        keep = torch.cat([model(xs[i:i + 500]).argmax(1) for i in range(0, len(xs), 500)]) != target
    xs = xs[keep]
    v = torch.zeros(xs.shape[1:], device=device)
    if len(xs) == 0:
        return v, 1.0
    target_y = torch.full((p.batch,), target, device=device)
    rate = 0.0
    for _ in range(p.passes):
        for i in torch.randperm(len(xs), generator=g).split(p.batch):
            xb = xs[i.to(device)]
            d = v.clone().requires_grad_(True)
            loss = F.cross_entropy(model((xb + d).clamp(0, 1)), target_y[:len(xb)])
            (grad,) = torch.autograd.grad(loss, [d])
            v = rescale(gauss_smooth(v - gauss_smooth(p.step * grad.sign(), p.sigma), p.sigma), p.amplitude)
        with torch.no_grad():
            hits = sum(int((model((xs[j:j + 500] + v).clamp(0, 1)).argmax(1) == target).sum())
                       for j in range(0, len(xs), 500))
        rate = hits / len(xs)
        if rate >= p.fooling:
            break
    return v.detach(), rate


@register("lf")
class LowFrequency(Attack):
    Params = LFParams
    trigger: torch.Tensor | None = None  # (3, H, W) float in [0, amplitude], set by prepare

    def prepare(self, x_train, y_train, ctx):
        ctx = self.needs_context(ctx)
        p = self.params

        def build():
            v, rate = craft_trigger(ctx.clean_model(), x_train, p.target, p, self.seed, ctx.device)
            return {"trigger": v.cpu(), "fooling_rate": torch.tensor([rate])}

        self.trigger = ctx.artifact("trigger", build)["trigger"]

    def apply_trigger(self, x: torch.Tensor) -> torch.Tensor:
        require(self.trigger is not None, "lf: the trigger is made by prepare(); call poison() first")
        require(tuple(self.trigger.shape[-2:]) == tuple(x.shape[-2:]),
                f"lf: the trigger is {tuple(self.trigger.shape[-2:])} px, the images {tuple(x.shape[-2:])}")
        v = self.on_device(("trigger", id(self.trigger)), x.device, lambda: self.trigger * 255)
        return (x.float() + v).round().clamp_(0, 255).to(torch.uint8)

