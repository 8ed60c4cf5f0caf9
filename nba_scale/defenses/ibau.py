"""I-BAU: Implicit Backdoor Adversarial Unlearning (Zeng, Chen, Park, Mao, Jin & Jia, "Adversarial
Unlearning of Backdoors via Implicit Hypergradient", ICLR 2022; official code YiZeng623/I-BAU,
defense.py and hypergrad.py, which BackdoorBench's i-bau.py follows).

A minimax: the inner problem finds the universal perturbation δ that most changes the model's
predictions on the clean subset (a stand-in for the unknown trigger); the outer problem trains
the model to classify clean images carrying δ correctly. The outer gradient is the implicit
hypergradient through the inner solution δ*(θ): ∂L_o/∂θ + (∂δ'/∂θ)ᵀ v, where δ' = δ - η ∇_δ L_i
is one gradient step on the inner loss and v solves v = (∂δ'/∂δ)ᵀ v + ∂L_o/∂δ by `fixed_point_iters`
fixed-point iterations (their `hg.fixed_point` with `GradientDescent(loss_inner, 0.1)`).

Each round (one epoch of `training.train`):
1. δ (one image's shape, shared by every image) from zero, one pass over the clean subset of
   SGD at lr 10 on L_i = -CE(f(x + δ), f(x)'s labels) + 0.001 ‖δ‖² (their inner loop);
2. per batch, Adam on the model with the hypergradient of L_o = CE(f(x + δ on a `portion` of
   the batch), y), L_i taken on the batch's true labels as their `loss_inner`.

Defaults, the official code's (CIFAR-10): 5 rounds, K = 5 fixed-point iterations, batch 100,
Adam lr 0.001, no weight decay, no augmentation, portion 0.01, the model in eval mode (its
BatchNorm statistics frozen) throughout. Choices where the code is narrow: the inner loss of the
fixed-point map is taken on the batch being unlearnt (theirs always reads the first batch of the
clean set); the patched share of a batch is ceil(portion · batch) images (theirs, int(), patches
none below a batch of 100, which leaves the outer loss plain CE). δ is not clamped to the image
range, as theirs. The fixed-point solver is written here (20 lines; hypertorch, where theirs is
copied from, is not on PyPI).
"""
from __future__ import annotations

import dataclasses
import math
from typing import Optional

import torch
import torch.nn.functional as F

from ..config import require
from ..data import Batches
from ..training import OptimConfig, train
from .base import Defense, register


def ibau_optim() -> OptimConfig:
    return OptimConfig(epochs=5, lr=0.001, batch_size=100, weight_decay=0.0, schedule="constant", augment=False,
                       optimizer="adam")


@dataclasses.dataclass
class IBAUConfig:
    fixed_point_iters: int = 5  # K: fixed-point iterations of the hypergradient
    inner_lr: float = 0.1  # η of the fixed-point map δ' = δ - η ∇_δ L_i
    pert_lr: float = 10.0  # SGD rate of the per-round universal perturbation
    pert_reg: float = 0.001  # weight of ‖δ‖² in the inner loss
    portion: float = 0.01  # share of each batch that carries δ in the outer loss
    optim: OptimConfig = dataclasses.field(default_factory=ibau_optim)  # epochs = rounds

    def validate(self) -> None:
        require(self.fixed_point_iters >= 1, f"fixed_point_iters={self.fixed_point_iters} must be >= 1")
        require(self.inner_lr > 0 and self.pert_lr > 0 and self.pert_reg >= 0,
                "inner_lr and pert_lr must be > 0, pert_reg >= 0")
        require(0 < self.portion <= 1, f"portion={self.portion} must be in (0, 1]")


def universal_perturbation(model, x: torch.Tensor, cfg: IBAUConfig, batch_size: int, device) -> torch.Tensor:
    """(1, C, H, W): one pass of SGD pushing the model's predictions away from its own labels."""
    delta = torch.zeros((1, *x.shape[1:]), device=device, requires_grad=True)
    opt = torch.optim.SGD([delta], lr=cfg.pert_lr)
    for xb, _ in Batches(x, torch.zeros(len(x), dtype=torch.long), batch_size, device, shuffle=False):
        with torch.no_grad():
            own = model(xb).argmax(1)
        loss = -F.cross_entropy(model(xb + delta), own) + cfg.pert_reg * delta.pow(2).sum()
        opt.zero_grad()
        (grad,) = torch.autograd.grad(loss, [delta])
        delta.grad = grad
        opt.step()
    return delta.detach()


def hypergradient_loss(model, xb: torch.Tensor, yb: torch.Tensor, delta: torch.Tensor, cfg: IBAUConfig) -> torch.Tensor:
    """A loss whose value is L_o and whose gradient in the model's parameters is the implicit
    hypergradient (the fixed-point vector v enters as a constant)."""
    d = delta.detach().requires_grad_(True)
    n = len(xb)
    patched = torch.zeros(n, 1, 1, 1, device=xb.device)
    patched[torch.randperm(n, device=xb.device)[:math.ceil(cfg.portion * n)]] = 1  # the epoch's seeded stream
    outer = F.cross_entropy(model(xb + patched * d), yb)
    (g_d,) = torch.autograd.grad(outer, [d], retain_graph=True)
    inner = -F.cross_entropy(model(xb + d), yb) + cfg.pert_reg * d.pow(2).sum()
    (gi,) = torch.autograd.grad(inner, [d], create_graph=True)
    mapped = d - cfg.inner_lr * gi  # depends on θ through gi
    v = torch.zeros_like(d)
    for _ in range(cfg.fixed_point_iters):
        (jv,) = torch.autograd.grad(mapped, [d], grad_outputs=v, retain_graph=True)
        v = jv + g_d
    implicit = (mapped * v.detach()).sum()
    return outer + implicit - implicit.detach()


@register("ibau")
class IBAU(Defense):
    Config = IBAUConfig
    presets = {"quick": {"optim.epochs": 5}}  # its default is already short: quick keeps it

    def repair(self, model, ctx):
        cfg, dev = self.cfg, ctx.accelerator.device
        state: dict[str, Optional[torch.Tensor]] = {"delta": None}

        def loss(m, xb, yb):
            m.eval()  # theirs: BatchNorm statistics stay the backdoored model's
            if state["delta"] is None:  # the round's perturbation, from the model as the round starts
                state["delta"] = universal_perturbation(m, ctx.x_clean, cfg, cfg.optim.batch_size, dev)
            return hypergradient_loss(m, xb, yb, state["delta"], cfg)

        def on_epoch_end(epoch, m, optimizer):
            state["delta"] = None
            if ctx.on_epoch_end is not None:
                ctx.on_epoch_end(epoch, m, optimizer)

        return train(model, ctx.x_clean, ctx.y_clean, cfg.optim, ctx.accelerator, loss_fn=loss, flip=ctx.flip,
                     seed=ctx.seed, desc="ibau", on_epoch_end=on_epoch_end, start_epoch=ctx.start_epoch,
                     optimizer_state=ctx.optimizer_state)
