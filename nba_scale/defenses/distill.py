"""What NAD, ARGD and NBA share: the teacher (the backdoored model fine-tuned on the clean subset,
one artifact in the cache for all three), the feature taps (the WRN group outputs,
`model(x, features=True)`), and the training run around a distillation loss."""
from __future__ import annotations

import abc

import torch
import torch.nn.functional as F

from ..config import require
from ..training import LossFn, train
from .base import Defense, DefenseContext


def attention_map(f: torch.Tensor, p: float = 2.0) -> torch.Tensor:
    """NAD's attention map: mean over channels of |F|^p, flattened and L2-normalised per sample
    (official NAD code: `F.normalize(fm.pow(p).mean(1).view(b, -1))`; `abs` keeps odd p defined)."""
    return F.normalize(f.float().abs().pow(p).mean(1).flatten(1), dim=1)


def forward_both(teacher: torch.nn.Module, student: torch.nn.Module, x: torch.Tensor):
    """((teacher logits, taps), (student logits, taps)) on `x`; no gradient through the teacher."""
    with torch.no_grad():
        out_t = teacher(x, features=True)
    return out_t, student(x, features=True)


class TeacherDistillation(Defense):
    """Subclasses give `distill_loss(teacher, ctx)`; `cfg.optim` is the run's optimiser."""

    needs_teacher = True

    @abc.abstractmethod
    def distill_loss(self, teacher: torch.nn.Module, ctx: DefenseContext) -> LossFn:
        """loss(student, x, y), including the cross-entropy on the clean labels."""

    def repair(self, model: torch.nn.Module, ctx: DefenseContext) -> torch.nn.Module:
        require(ctx.teacher is not None, f"{self.name} needs a teacher model (DefenseContext.teacher)")
        teacher = ctx.teacher.to(ctx.accelerator.device).eval()
        for q in teacher.parameters():
            q.requires_grad_(False)
        return train(model, ctx.x_clean, ctx.y_clean, self.cfg.optim, ctx.accelerator,
                     loss_fn=self.distill_loss(teacher, ctx), flip=ctx.flip, seed=ctx.seed, desc=self.name,
                     on_epoch_end=ctx.on_epoch_end, start_epoch=ctx.start_epoch,
                     optimizer_state=ctx.optimizer_state)
