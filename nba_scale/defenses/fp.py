"""FP: Fine-Pruning (Liu, Dolan-Gavitt & Garg, RAID 2018).

Backdoor neurons stay dormant on clean inputs, so: rank the last convolutional layer's channels
by their mean activation on the clean subset, prune the least active first, then fine-tune.

The layer's activation is what the classifier reads: the pooled channels of the last stage (for
the pre-activation WRN, after its final BN + ReLU). A channel is pruned by zeroing its column of
the classifier's weight (`models.head`): it then reaches no logit for any input, exactly as
removing the neuron in Liu et al.'s plain conv nets, on every architecture alike. Stopping rule (BackdoorBench's):
prune in steps of `step` (1 %) of the channels and keep the largest pruning whose clean accuracy,
measured on the clean subset, stays within `max_acc_drop` (10 %, relative) of the unpruned
model's. Fine-tuning: 10 epochs at lr 0.01 (choice: Liu et al. fine-tune briefly at a small rate
so the pruned network keeps its clean accuracy). Pruned channels are held at zero while
fine-tuning by zeroing their gradients (rather than torch.nn.utils.prune's reparametrisation, so
checkpoints stay plain state dicts that load and resume anywhere).
"""
from __future__ import annotations

import dataclasses
import math

import torch

from ..config import require
from ..models import head
from ..training import OptimConfig, train
from .base import Defense, register


def fp_optim() -> OptimConfig:
    return OptimConfig(epochs=10, lr=0.01, batch_size=64, weight_decay=1e-4, schedule="constant")


@dataclasses.dataclass
class FPConfig:
    max_acc_drop: float = 0.10  # relative clean-accuracy drop allowed (BackdoorBench: 10 %)
    step: float = 0.01  # pruning step, fraction of the channels (BackdoorBench: 1 %)
    max_ratio: float = 0.95  # never prune more than this fraction (keeps the classifier alive)
    optim: OptimConfig = dataclasses.field(default_factory=fp_optim)

    def validate(self) -> None:
        require(0 <= self.max_acc_drop < 1, f"max_acc_drop={self.max_acc_drop} must be in [0, 1)")
        require(0 < self.step <= 1, f"step={self.step} must be in (0, 1]")
        require(0 < self.max_ratio < 1, f"max_ratio={self.max_ratio} must be in (0, 1)")


@torch.no_grad()
def final_activations(model, x: torch.Tensor, device, batch_size: int = 500) -> torch.Tensor:
    """(N, C): the pooled last-stage channels the classifier reads."""
    acts = []
    hook = head(model, "fp").register_forward_pre_hook(lambda m, i: acts.append(i[0].flatten(1)))
    was = model.training
    model.eval()
    try:
        for i in range(0, len(x), batch_size):
            model(x[i:i + batch_size].to(device).float().div_(255))
    finally:
        hook.remove()
        model.train(was)
    return torch.cat(acts)


def choose_pruning(model, x, y, device, cfg: FPConfig) -> list[int]:
    """Channels to prune, least active first, by the stopping rule."""
    act = final_activations(model, x, device)  # (N, C)
    order = torch.argsort(act.mean(0))
    y = y.to(device)
    c = act.shape[1]

    def accuracy(pruned: torch.Tensor) -> float:
        a = act.clone()
        a[:, pruned] = 0
        return (head(model)(a).argmax(1) == y).float().mean().item()

    step = max(1, math.ceil(cfg.step * c))
    best = largest_within(range(step, int(cfg.max_ratio * c) + 1, step), lambda k: accuracy(order[:k]),
                          (1 - cfg.max_acc_drop) * accuracy(order[:0]))
    return sorted(order[:best or 0].tolist())


def largest_within(levels, accuracy_at, floor: float):
    """The stopping rule of pruning by clean accuracy (FP, ANP's `max_acc_drop`): the last of the
    increasing `levels` before the first whose `accuracy_at(level)` falls under `floor` (None
    when the first already does)."""
    best = None
    for level in levels:
        if accuracy_at(level) < floor:
            break
        best = level
    return best


@register("fp")
class FinePruning(Defense):
    Config = FPConfig

    def repair(self, model, ctx):
        dev = ctx.accelerator.device
        model = model.to(dev)
        fc = head(model)
        if ctx.start_epoch > 0:  # resumed: the pruning is already in the weights
            pruned = torch.nonzero((fc.weight == 0).all(0)).flatten().tolist()
        else:
            pruned = choose_pruning(model, ctx.x_clean, ctx.y_clean, dev, self.cfg)
        mask = torch.ones_like(fc.weight[:1])
        mask[:, pruned] = 0
        with torch.no_grad():
            fc.weight.mul_(mask)
        hooks = [fc.weight.register_hook(lambda g: g * mask)]
        try:
            model = train(model, ctx.x_clean, ctx.y_clean, self.cfg.optim, ctx.accelerator, flip=ctx.flip,
                          seed=ctx.seed, desc="fp", on_epoch_end=ctx.on_epoch_end, start_epoch=ctx.start_epoch,
                          optimizer_state=ctx.optimizer_state)
        finally:
            for h in hooks:
                h.remove()
        self.info = {"pruned": len(pruned), "pruned_channels": ",".join(map(str, pruned)),
                     "pruned_ratio": len(pruned) / mask.shape[1]}
        return model
