"""What NAD, ARGD and NBA share: the teacher (the backdoored model fine-tuned on the clean subset,
one artifact in the cache for all three), the feature taps (the WRN group outputs,
`model(x, features=True)`), and the training run around a distillation loss."""
from __future__ import annotations

import abc

import torch
import torch.nn.functional as F

from ..config import require
from ..training import LossFn, Member, memory_format, train, train_pack
from .base import Defense, DefenseContext


def attention_map(f: torch.Tensor, p: float = 2.0) -> torch.Tensor:
    """NAD's attention map: mean over channels of |F|^p, flattened and L2-normalised per sample
    (official NAD code: `F.normalize(fm.pow(p).mean(1).view(b, -1))`; `abs` keeps odd p defined)."""
    return F.normalize(f.float().abs().pow(p).mean(1).flatten(1), dim=1)


class SharedForward:
    """A frozen network's forward pass on a batch, computed once however many students ask for
    it: the members of a pack distil from the same teacher on the same batch (`train_pack`)."""

    def __init__(self, net: torch.nn.Module):
        self.net, self._x, self._out = net, None, None

    def __call__(self, x: torch.Tensor, features: bool = True):
        if x is not self._x:
            with torch.no_grad():
                self._out = self.net(x, features=True)
            self._x = x
        return self._out if features else self._out[0]


def forward_both(teacher, student: torch.nn.Module, x: torch.Tensor):
    """((teacher logits, taps), (student logits, taps)) on `x`; no gradient through the teacher."""
    with torch.no_grad():
        out_t = teacher(x, features=True)
    return out_t, student(x, features=True)


class TeacherDistillation(Defense):
    """Subclasses give `distill_loss(teacher, ctx)`; `cfg.optim` is the run's optimiser. Several
    configurations of one such defense train as a pack (`repair_pack`): one teacher forward per
    batch for all of them."""

    needs_teacher = True
    packable = True

    @abc.abstractmethod
    def distill_loss(self, teacher, ctx: DefenseContext) -> LossFn:
        """loss(student, x, y), including the cross-entropy on the clean labels; `teacher(x,
        features=True)` gives the teacher's (logits, taps)."""

    @staticmethod
    def shared_teacher(ctx: DefenseContext) -> SharedForward:
        require(ctx.teacher is not None, "distillation needs a teacher model (DefenseContext.teacher)")
        teacher = ctx.teacher.to(ctx.accelerator.device, memory_format=memory_format(ctx.accelerator.device)).eval()
        for q in teacher.parameters():
            q.requires_grad_(False)
        return SharedForward(teacher)

    def repair(self, model: torch.nn.Module, ctx: DefenseContext) -> torch.nn.Module:
        return train(model, ctx.x_clean, ctx.y_clean, self.cfg.optim, ctx.accelerator,
                     loss_fn=self.distill_loss(self.shared_teacher(ctx), ctx), flip=ctx.flip, seed=ctx.seed,
                     desc=self.name, on_epoch_end=ctx.on_epoch_end, start_epoch=ctx.start_epoch,
                     optimizer_state=ctx.optimizer_state)

    @classmethod
    def stacked_loss(cls, defenses: list["TeacherDistillation"], teacher, ctx: DefenseContext):
        """The members' loss on their stacked network (`stacking.StackedLoss`): each member's
        loss as a (K,) vector, its terms too; defenses that set `stacked_shared` give it."""
        raise TypeError(f"{cls.__name__} sets stacked_shared but gives no stacked_loss: a plug-in that stacks "
                        f"must give both (nba_scale/stacking.py)")

    @classmethod
    def repair_pack(cls, defenses: list["TeacherDistillation"], models: list[torch.nn.Module],
                    ctx: DefenseContext, on_epoch_end=None) -> list[Member]:
        from ..stacking import resolve_pack_mode

        teacher = cls.shared_teacher(ctx)
        states = ctx.optimizer_states or [None] * len(models)
        members = [Member(m, d.cfg.optim, d.distill_loss(teacher, ctx), state)
                   for d, m, state in zip(defenses, models, states)]
        mode = resolve_pack_mode(ctx.pack_mode, defenses, models[0], ctx.accelerator.device)
        stacked = cls.stacked_loss(defenses, teacher, ctx) if mode == "stacked" else None
        return train_pack(members, ctx.x_clean, ctx.y_clean, ctx.accelerator, flip=ctx.flip, seed=ctx.seed,
                          desc=f"{cls.name} x{len(members)}{' stacked' if stacked else ''}",
                          on_epoch_end=on_epoch_end, start_epoch=ctx.start_epoch, stacked=stacked)
