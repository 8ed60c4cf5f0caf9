"""BppAttack (Wang, Zhai & Ma 2022, "BppAttack: stealthy and efficient trojan attacks against deep
neural networks via image quantization and contrastive adversarial learning"): poison-label,
all-to-one; the trigger is the image itself reduced to `squeeze_num` levels per channel, with
Floyd-Steinberg error diffusion so that the change stays invisible:

    x' = dither(x, levels = squeeze_num)     (quantise each pixel, pass its error on: 7/16 right,
                                              3/16 down-left, 5/16 down, 1/16 down-right)
Negative samples (the paper's contrastive adversarial training): `neg_ratio * N` further training
images get the quantisation residual (x' - x) of another, random training image added and keep
their true labels, so the network learns the quantisation pattern of the image itself, not any
residual-like noise. Defaults are the paper's CIFAR-10 settings: squeeze_num 8, dithering on,
10 % poisoned, negative ratio 0.2.

BppAttack controls training and draws fresh negatives in every batch; here, as for WaNet, the
poisoned and negative images are drawn once (data poisoning like the other attacks). Choice,
stated in docs/ATTACKS.md; it changes no test-time behaviour.
"""
from __future__ import annotations

import dataclasses

import torch

from ..config import require
from .base import Attack, AttackParams, register


@dataclasses.dataclass
class BppParams(AttackParams):
    squeeze_num: int = 8  # colour levels per channel (paper, CIFAR-10: 8)
    dither: bool = True  # Floyd-Steinberg error diffusion (paper: on)
    neg_ratio: float = 0.2  # negative samples, fraction of the training set (paper: 0.2)

    def validate(self) -> None:
        super().validate()
        require(2 <= self.squeeze_num <= 256, f"squeeze_num={self.squeeze_num} must be in 2..256")
        require(0 <= self.neg_ratio < 1, f"neg_ratio={self.neg_ratio} must be in [0, 1)")


def quantise(x: torch.Tensor, levels: int, dither: bool) -> torch.Tensor:
    """uint8 (N,3,H,W) -> uint8 with `levels` values per channel; error diffusion along rows."""
    step = 255 / (levels - 1)
    if not dither:
        return ((x.float() / step).round() * step).round().to(torch.uint8)
    img = x.float().clone()
    h, w = img.shape[-2:]
    for i in range(h):  # batched over images and channels: H*W steps, each a vector op
        for j in range(w):
            old = img[..., i, j]
            new = (old / step).round().clamp_(0, levels - 1) * step
            err = old - new
            img[..., i, j] = new
            if j + 1 < w:
                img[..., i, j + 1] += err * 7 / 16
            if i + 1 < h:
                if j > 0:
                    img[..., i + 1, j - 1] += err * 3 / 16
                img[..., i + 1, j] += err * 5 / 16
                if j + 1 < w:
                    img[..., i + 1, j + 1] += err * 1 / 16
    return img.round().clamp_(0, 255).to(torch.uint8)


@register("bpp")
class Bpp(Attack):
    Params = BppParams

    def apply_trigger(self, x: torch.Tensor) -> torch.Tensor:
        if len(x) == 0:
            return x.clone()
        p = self.params
        return torch.cat([quantise(x[i:i + 4096], p.squeeze_num, p.dither) for i in range(0, len(x), 4096)])

    def noise_samples(self, x, y, poisoned):
        p = self.params
        idx = self.others(len(y), int(round(p.neg_ratio * len(y))), poisoned, salt=4_000_037)
        if len(idx) == 0:
            return None
        g = torch.Generator().manual_seed(4_000_039 + self.seed)
        donors = self.others(len(y), len(y), torch.empty(0, dtype=torch.long), salt=4_000_041)
        donors = donors[torch.randint(0, len(donors), (len(idx),), generator=g)]
        residual = self.apply_trigger(x[donors]).float() - x[donors].float()
        return idx, (x[idx].float() + residual).round().clamp_(0, 255).to(torch.uint8)
