"""Benign accuracy (BA), attack success rate (ASR) and robust accuracy (RA).

BA: accuracy on the whole clean test set (the official NAD code drops target-class images from
it; `exclude_target=True` does that, off by default). ASR: fraction of triggered non-target test
images classified as the target. RA: fraction of the same images still classified correctly.
"""
from __future__ import annotations

import torch

from .data import PoisonedData
from .training import fast_layout


@torch.no_grad()
def predict(model: torch.nn.Module, x: torch.Tensor, device, batch_size: int = 1000) -> torch.Tensor:
    was_training = model.training
    model.eval()
    out, finite = [], torch.ones((), dtype=torch.bool, device=device)
    with fast_layout(model, device) as fmt:
        for i in range(0, len(x), batch_size):
            xb = x[i:i + batch_size].to(device, non_blocking=True).float().div_(255).contiguous(memory_format=fmt)
            logits = model(xb)
            finite &= torch.isfinite(logits).all()
            out.append(logits.argmax(1))
    model.train(was_training)
    if not bool(finite):  # argmax of NaN logits is a class like any other: a score would be made up
        raise FloatingPointError("the model's logits are not finite (NaN/inf): its weights are broken")
    return torch.cat(out).cpu() if out else torch.empty(0, dtype=torch.long)


def accuracy(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, device) -> float:
    if len(x) == 0:
        return float("nan")
    return (predict(model, x, device) == y.cpu()).float().mean().item()


def score(model: torch.nn.Module, x_test: torch.Tensor, y_test: torch.Tensor, poisoned: PoisonedData,
          device, target: int) -> dict[str, float]:
    """ba, ba_nontarget (BA without target-class images, NAD's variant), asr, ra."""
    clean_pred = predict(model, x_test, device)
    correct = (clean_pred == y_test.cpu()).float()
    nontarget = y_test.cpu() != target
    pred = predict(model, poisoned.x_test, device)
    return {
        "ba": correct.mean().item(),
        "ba_nontarget": correct[nontarget].mean().item(),
        "asr": (pred == poisoned.y_test_target).float().mean().item() if len(pred) else float("nan"),
        # A brought test set may not know its images' true labels (-1): no RA then, rather than 0.
        "ra": (pred == poisoned.y_test_true).float().mean().item()
        if len(pred) and bool((poisoned.y_test_true >= 0).all()) else float("nan"),
    }


def der(asr_before: float, ba_before: float, asr: float, ba: float) -> float:
    """BackdoorBench's defense effectiveness rating (Wu et al., NeurIPS 2022 Datasets and
    Benchmarks, section 4): [max(0, ΔASR) - max(0, ΔBA) + 1] / 2 with ΔASR = ASR before - after
    and ΔBA = BA before - after, in [0, 1]; 0.5 for a defense that changes neither, 1 for one that
    removes the whole backdoor at no cost in accuracy. It rewards the ASR removed and charges the
    accuracy lost one for one, and ignores gains in accuracy."""
    return (max(0.0, asr_before - asr) - max(0.0, ba_before - ba) + 1) / 2
