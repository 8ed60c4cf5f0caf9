"""Untargeted L∞ PGD, the one adversarial search the project runs: NBA's pseudo samples, CLA's
poisoned images and its surrogate's adversarial training all call it."""
from __future__ import annotations

import contextlib
from typing import Optional

import torch
import torch.nn.functional as F

from .training import warn_if_slow_bf16


def pgd_untargeted(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, steps: int,
                   step_size: float, random_start: bool = True, bf16: bool = False,
                   batch_size: Optional[int] = None) -> torch.Tensor:
    """x + δ maximising the model's cross-entropy on the true label, ||δ||_∞ ≤ eps, x+δ in [0,1].

    Runs the model in eval mode (BatchNorm running statistics), so crafting the sample neither
    updates the statistics nor depends on the rest of the batch; parameters get no gradient, and
    the model's mode is restored. `bf16`: the model's passes run under bf16 autocast (δ, its steps
    and the loss stay fp32); PGD keeps only the sign of each pixel's gradient, which bf16's rounding
    rarely flips. `batch_size`: craft in chunks of that many (a whole poisoned class at once).
    """
    if batch_size and len(x) > batch_size:
        return torch.cat([pgd_untargeted(model, x[i:i + batch_size], y[i:i + batch_size], eps, steps, step_size,
                                         random_start, bf16) for i in range(0, len(x), batch_size)])
    was_training = model.training
    model.eval()
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
            loss = F.cross_entropy(logits.float(), y)
            (grad,) = torch.autograd.grad(loss, delta)
            delta = (delta + step_size * grad.sign()).clamp(-eps, eps)
            delta = ((x + delta).clamp(0, 1) - x).detach()
    model.train(was_training)
    return (x + delta).detach()
