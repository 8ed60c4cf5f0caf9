"""NAD: Neural Attention Distillation (Li et al., ICLR 2021).

The teacher (the shared fine-tuned teacher artifact) is distilled into the backdoored student by
matching attention maps at the three WRN group outputs:

    loss = CE(z(x), y) + sum_l beta_l * mean((A_T,l - A_S,l)^2),   A = normalize(mean_c |F|^p)

as in the official code (`AT` loss: `(am_s - am_t).pow(2).mean()`). Defaults from the official
code's CIFAR WRN-16-1 setting: p = 2, beta = (500, 1000, 1000), 20 epochs, SGD lr 0.1 decayed
x0.1 at epoch 2, momentum 0.9 nesterov, weight decay 1e-4, batch 64.
"""
from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F

from ..config import finite_positive, require
from ..training import OptimConfig, nad_schedule
from .base import register
from .distill import TeacherDistillation, attention_map, forward_both


@dataclasses.dataclass
class NADConfig:
    p: float = 2.0  # attention power (NAD code: 2.0)
    betas: tuple[float, ...] = (500.0, 1000.0, 1000.0)  # per group output (NAD code: beta1..3)
    optim: OptimConfig = dataclasses.field(default_factory=nad_schedule)

    def validate(self) -> None:
        finite_positive("p", self.p)
        require(len(self.betas) == 3, f"betas={list(self.betas)} needs one weight per WRN group (3)")
        for b in self.betas:
            finite_positive("betas", b, allow_zero=True)


def nad_loss(feats_t, feats_s, p: float, betas) -> torch.Tensor:
    return sum(b * (attention_map(fs, p) - attention_map(ft, p)).pow(2).mean()
               for b, ft, fs in zip(betas, feats_t, feats_s))


@register("nad")
class NAD(TeacherDistillation):
    Config = NADConfig
    stacked_shared = ("p",)  # a stacked pack's betas are the members' own

    def distill_loss(self, teacher, ctx):
        c = self.cfg

        def loss(student, x, y):
            (_, feats_t), (logits, feats_s) = forward_both(teacher, student, x)
            ce, at = F.cross_entropy(logits, y), nad_loss(feats_t, feats_s, c.p, c.betas)
            return ce + at, {"ce": ce.detach(), "at": at.detach()}  # the curves' terms (training.LossFn)

        return loss

    @classmethod
    def stacked_loss(cls, defenses: list["NAD"], teacher, ctx):
        """`distill_loss` for all members of a stacked pack at once (nba_scale/stacking.py)."""
        from ..stacking import member_cross_entropy

        p = defenses[0].cfg.p
        betas = torch.tensor([d.cfg.betas for d in defenses], device=ctx.accelerator.device)  # (K, 3)

        def loss(net, x, y):
            _, feats_t = teacher(x, features=True)
            logits, feats_s = net(x, features=True)
            ce = member_cross_entropy(logits, y)
            at = sum(betas[:, i] * (member_attention(fs, p) - attention_map(ft, p).unsqueeze(1)).pow(2).mean((0, 2))
                     for i, (ft, fs) in enumerate(zip(feats_t, feats_s)))
            return ce + at, {"ce": ce.detach(), "at": at.detach()}

        return loss


def member_attention(f: torch.Tensor, p: float) -> torch.Tensor:
    """`attention_map` of stacked taps (B, K, C, H, W): (B, K, H·W)."""
    return F.normalize(f.float().abs().pow(p).mean(2).flatten(2), dim=2)
