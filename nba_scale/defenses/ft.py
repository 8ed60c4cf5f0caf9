"""FT: plain fine-tuning of the backdoored model on the clean subset (cross-entropy only).

Defaults: NBA's optimiser and budget (20 epochs, SGD lr 0.1 for 2 epochs then 0.01, momentum
0.9 nesterov, weight decay 1e-4, batch 64; the schedule of the official NAD code, which fine-tunes
its baselines the same way), so FT is NBA without the distillation terms: the comparison
isolates what distillation adds. No gradient clipping (plain CE does not need it).
"""
from __future__ import annotations

import dataclasses

from ..training import OptimConfig, nad_schedule, train
from .base import Defense, register


@dataclasses.dataclass
class FTConfig:
    optim: OptimConfig = dataclasses.field(default_factory=nad_schedule)


@register("ft")
class FineTuning(Defense):
    Config = FTConfig

    def repair(self, model, ctx):
        return train(model, ctx.x_clean, ctx.y_clean, self.cfg.optim, ctx.accelerator, flip=ctx.flip,
                     seed=ctx.seed, desc="ft", on_epoch_end=ctx.on_epoch_end, start_epoch=ctx.start_epoch,
                     optimizer_state=ctx.optimizer_state)
