"""MCR: Mode Connectivity Repair (Zhao et al., ICLR 2020, "Bridging mode connectivity in loss
landscapes and adversarial robustness").

Two endpoint models, w0 = the backdoored model and w1 = its fine-tuned copy (the shared teacher
artifact: the backdoored model fine-tuned on the clean subset), are joined by a quadratic Bézier
curve
    phi(t) = (1 - t)^2 w0 + 2 t (1 - t) theta + t^2 w1,
whose control point theta is trained on the clean subset (cross-entropy at a t ~ U(0, 1) drawn
per step; theta starts at the endpoints' midpoint). Points inside the curve keep clean accuracy
but lose the backdoor both endpoints still partly carry. The repaired model is phi(t) at the
configured t, with BatchNorm statistics recomputed on the clean subset there (the endpoints'
statistics do not hold between them); at t = 0 and t = 1 the endpoints come back exactly.

Defaults: t = 0.4 (choice inside Zhao et al.'s range: in their Fig. 3 the backdoor's error rate
collapses and clean error stays low for t around 0.3-0.7; closer to w0 keeps more of its clean
accuracy), 20 epochs of SGD lr 0.01 momentum 0.9 cosine, batch 64, weight decay 1e-4 (choice:
NBA's budget; Zhao et al. train the curve for 100-200 epochs on their clean subsets).
"""
from __future__ import annotations

import copy
import dataclasses

import torch
import torch.nn as nn
from torch.func import functional_call

from ..config import require
from ..data import Batches
from ..training import OptimConfig, train
from .base import Defense, register


def mcr_optim() -> OptimConfig:
    return OptimConfig(epochs=20, lr=0.01, batch_size=64, weight_decay=1e-4, schedule="cosine")


@dataclasses.dataclass
class MCRConfig:
    t: float = 0.4  # curve position of the repaired model (choice in Zhao et al.'s range)
    optim: OptimConfig = dataclasses.field(default_factory=mcr_optim)

    def validate(self) -> None:
        require(0 <= self.t <= 1, f"t={self.t} must be in [0, 1]")


class BezierCurve(nn.Module):
    """A quadratic Bézier curve of networks; trains only its control point theta."""

    def __init__(self, net: nn.Module, w0: dict[str, torch.Tensor], w1: dict[str, torch.Tensor], eval_t: float):
        super().__init__()
        self.net = net
        self.names = [n for n, _ in net.named_parameters()]
        for q in net.parameters():
            q.requires_grad_(False)
        self.w0 = nn.ParameterList([nn.Parameter(w0[n].detach().clone(), requires_grad=False) for n in self.names])
        self.w1 = nn.ParameterList([nn.Parameter(w1[n].detach().clone(), requires_grad=False) for n in self.names])
        self.theta = nn.ParameterList([nn.Parameter((a + b) / 2) for a, b in zip(self.w0, self.w1)])
        self.eval_t = eval_t

    def weights(self, t: float | torch.Tensor) -> dict[str, torch.Tensor]:
        return {n: (1 - t) ** 2 * a + 2 * t * (1 - t) * c + t ** 2 * b
                for n, a, b, c in zip(self.names, self.w0, self.w1, self.theta)}

    def forward(self, x: torch.Tensor, features: bool = False):
        t = torch.rand((), device=x.device) if self.training else self.eval_t
        return functional_call(self.net, self.weights(t), (x,), {"features": features})

    @torch.no_grad()
    def point(self, t: float, x_clean: torch.Tensor, batch_size: int = 128) -> nn.Module:
        """The network at t, BatchNorm statistics recomputed on `x_clean` (not at the endpoints)."""
        net = copy.deepcopy(self.net)
        for n, w in self.weights(t).items():
            net.get_parameter(n).copy_(w)
        if 0 < t < 1:
            for m in net.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.reset_running_stats()
                    m.momentum = None  # cumulative average over the whole pass
            net.train()
            dev = next(net.parameters()).device
            for xb, _ in Batches(x_clean, torch.zeros(len(x_clean), dtype=torch.long), batch_size, dev, shuffle=False):
                net(xb)
            for m in net.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.momentum = 0.1
        for q in net.parameters():
            q.requires_grad_(True)
        return net.eval()


@register("mcr")
class MCR(Defense):
    Config = MCRConfig
    needs_teacher = True
    _resume_state = None

    def restore(self, model, state):
        self._resume_state = state  # the curve's state, loaded once the curve exists

    def repair(self, model, ctx):
        require(ctx.teacher is not None, "mcr needs the fine-tuned endpoint (DefenseContext.teacher)")
        dev = ctx.accelerator.device
        model = model.to(dev)
        endpoint1 = {n: q for n, q in ctx.teacher.to(dev).named_parameters()}
        curve = BezierCurve(copy.deepcopy(model), dict(model.named_parameters()), endpoint1, self.cfg.t).to(dev)
        if self._resume_state is not None:
            curve.load_state_dict(self._resume_state)
        if self.cfg.t in (0.0, 1.0):  # an endpoint itself: nothing to train
            return (model if self.cfg.t == 0 else copy.deepcopy(ctx.teacher)).eval()
        curve = train(curve, ctx.x_clean, ctx.y_clean, self.cfg.optim, ctx.accelerator, flip=ctx.flip,
                      seed=ctx.seed, desc="mcr", on_epoch_end=ctx.on_epoch_end, start_epoch=ctx.start_epoch,
                      optimizer_state=ctx.optimizer_state)
        return curve.point(self.cfg.t, ctx.x_clean)
