"""Untargeted L∞ PGD, the one adversarial search the project runs: NBA's pseudo samples, CLA's
poisoned images and its surrogate's adversarial training all call it."""
from __future__ import annotations

import contextlib
from typing import Optional

import torch
import torch.nn.functional as F

from .training import warn_if_slow_bf16


def pgd_untargeted(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float | torch.Tensor, steps: int,
                   step_size: float | torch.Tensor, random_start: bool = True, bf16: bool = False,
                   batch_size: Optional[int] = None, start: Optional[torch.Tensor] = None) -> torch.Tensor:
    """x + δ maximising the model's cross-entropy on the true label, ||δ||_∞ ≤ eps, x+δ in [0,1].

    Runs the model in eval mode (BatchNorm running statistics), so crafting the sample neither
    updates the statistics nor depends on the rest of the batch; parameters get no gradient, and
    the model's mode is restored. `bf16`: the model's passes run under bf16 autocast (δ, its steps
    and the loss stay fp32); PGD keeps only the sign of each pixel's gradient, which bf16's rounding
    rarely flips. `batch_size`: craft in chunks of that many (a whole poisoned class at once).
    A stacked pack (nba_scale/stacking.py) passes x (B, K·3, H, W), eps and step_size as tensors
    broadcasting over it (each member's own), `start` (its members' random starts, drawn as each
    would draw alone), and gets logits (B, K, classes): the loss is the members' CEs summed, so
    each member's δ follows its own gradient.
    """
    if batch_size and len(x) > batch_size:
        return torch.cat([pgd_untargeted(model, x[i:i + batch_size], y[i:i + batch_size], eps, steps, step_size,
                                         random_start, bf16, start=None if start is None else start[i:i + batch_size])
                          for i in range(0, len(x), batch_size)])
    was_training = model.training
    model.eval()
    if start is not None:
        delta = start
    else:
        delta = torch.empty_like(x).uniform_(-eps, eps) if random_start else torch.zeros_like(x)
    delta = ((x + delta).clamp(0, 1) - x).detach()
    if bf16:
        warn_if_slow_bf16(x.device)
    autocast = (torch.autocast(device_type=x.device.type, dtype=torch.bfloat16) if bf16
                else contextlib.nullcontext())
    with torch.enable_grad():
        for _ in range(steps):
            delta.requires_grad_(True)
            with autocast:
                logits = model(x + delta)
            if logits.dim() == 3:  # a stacked pack's members: each one's mean CE, summed
                loss = F.cross_entropy(logits.float().flatten(0, 1), y.repeat_interleave(logits.shape[1]),
                                       reduction="sum") / len(y)
            else:
                loss = F.cross_entropy(logits.float(), y)
            (grad,) = torch.autograd.grad(loss, delta)
            delta = torch.clamp(delta + step_size * grad.sign(), -eps, eps)
            delta = ((x + delta).clamp(0, 1) - x).detach()
    model.train(was_training)
    return (x + delta).detach()
