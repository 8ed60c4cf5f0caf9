"""Blend (Chen et al. 2017, "Targeted backdoor attacks on deep learning systems using data
poisoning"): a full-image pattern alpha-blended into the image, poison-label, all-to-one.

    x' = (1 - alpha) * x + alpha * pattern

The original blends a Hello Kitty image or uniform random noise. No image can be downloaded
here, so the default is a seeded uniform-noise pattern (Chen et al.'s second pattern);
`--set blend.pattern=PATH` blends any image file instead (resized to the data's size).
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Optional

import torch

from ..config import require
from .base import Attack, AttackParams, register


@dataclasses.dataclass
class BlendParams(AttackParams):
    alpha: float = 0.2  # blend ratio of the training poison (Chen et al. 2017: 0.2)
    test_alpha: Optional[float] = None  # blend ratio at test time (None: alpha, as Chen et al.)
    pattern: Optional[str] = None  # image file to blend; None: seeded uniform noise (Chen et al.)
    pattern_seed: int = 0  # seed of the noise pattern (fixed per attack, not per trial seed)

    def validate(self) -> None:
        super().validate()
        for name in ("alpha", "test_alpha"):
            v = getattr(self, name)
            require(v is None or 0 < v <= 1, f"{name}={v} must be in (0, 1]")


def load_image(path: str, h: int, w: int) -> torch.Tensor:
    """(3,h,w) uint8 from any image file PIL reads."""
    from PIL import Image, UnidentifiedImageError

    try:
        img = Image.open(path).convert("RGB").resize((w, h), Image.BILINEAR)
    except (OSError, UnidentifiedImageError) as e:
        from ..config import ConfigError

        raise ConfigError(f"cannot read image {path!r} ({e}); pass a PNG/JPEG file") from None
    return torch.frombuffer(bytearray(img.tobytes()), dtype=torch.uint8).view(h, w, 3).permute(2, 0, 1).clone()


@register("blend")
class Blend(Attack):
    Params = BlendParams

    @functools.lru_cache(maxsize=4)
    def pattern(self, h: int, w: int) -> torch.Tensor:
        p = self.params
        if p.pattern:
            return load_image(p.pattern, h, w)
        g = torch.Generator().manual_seed(p.pattern_seed)
        return torch.randint(0, 256, (3, h, w), generator=g, dtype=torch.uint8)

    def blend(self, x: torch.Tensor, alpha: float) -> torch.Tensor:
        h, w = x.shape[-2:]
        pat = self.on_device(("pattern", h, w), x.device, lambda: self.pattern(h, w).float())
        return ((1 - alpha) * x.float() + alpha * pat).round().clamp_(0, 255).to(torch.uint8)

    def apply_trigger(self, x: torch.Tensor) -> torch.Tensor:
        return self.blend(x, self.params.test_alpha or self.params.alpha)

    def poison_images(self, x, y, ctx):
        return self.blend(x, self.params.alpha)
