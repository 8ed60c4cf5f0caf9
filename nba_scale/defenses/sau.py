"""SAU: Shared Adversarial Unlearning (Wei, Zhang, Zha & Wu, "Shared Adversarial Unlearning:
Backdoor Mitigation by Unlearning Shared Adversarial Examples", NeurIPS 2023; official code by
the first author in BackdoorBench, defense/sau.py, config/defense/sau/cifar10.yaml).

Adversarial examples that fool both the model being repaired and the frozen backdoored original
*to the same class* are the ones that act like the trigger (the paper bounds the backdoor risk
by them). Per batch:
1. shared PGD from the L∞ corner (δ = +bound everywhere), `pgd_steps` signed steps minimising
   β1 · L_adv + β2 · L_shared: L_adv = -CE on the samples not yet misclassified (by each net,
   averaged), L_shared = the Jensen-Shannon divergence of the two nets' predictions on the
   samples not yet fooled into one shared class; stops early once every sample is;
2. the model steps on λ1 · CE(x) + λ2 · CE(x + δ) + λ3 · L_unlearn, where L_unlearn pushes the
   model's probability of the original's adversarial class down on the samples the original
   misclassifies (to a class other than its clean prediction): -½ Σ [log p(not that class) +
   log(1 - p(that class))] / batch.

Defaults, theirs for CIFAR-10: L∞ bound 0.2, step 0.2, 5 steps, β1 0.01, β2 1, λ = (1, 0, 1),
Adam lr 1e-4 cosine, no weight decay, batch 256, 100 rounds (epochs) over the clean subset
without augmentation, both networks in eval mode (frozen BatchNorm statistics; their
`train_mode` off). As theirs, δ is not clamped to the image range (their comment: not needed for
a defense).
"""
from __future__ import annotations

import copy
import dataclasses

import torch
import torch.nn.functional as F

from ..config import require
from ..training import OptimConfig, train
from .base import Defense, register


def sau_optim() -> OptimConfig:
    return OptimConfig(epochs=100, lr=1e-4, batch_size=256, weight_decay=0.0, schedule="cosine", augment=False,
                       optimizer="adam")


@dataclasses.dataclass
class SAUConfig:
    bound: float = 0.2  # L∞ budget of the shared adversarial perturbation (pixels in [0, 1])
    pgd_step: float = 0.2
    pgd_steps: int = 5
    beta1: float = 0.01  # weight of the adversarial term in the PGD objective
    beta2: float = 1.0  # weight of the shared (JS) term
    lambda1: float = 1.0  # clean CE
    lambda2: float = 0.0  # CE on the perturbed samples (plain adversarial training; theirs: off)
    lambda3: float = 1.0  # unlearning of the shared adversarial examples
    optim: OptimConfig = dataclasses.field(default_factory=sau_optim)

    def validate(self) -> None:
        require(self.bound > 0 and self.pgd_step > 0, "bound and pgd_step must be > 0")
        require(self.pgd_steps >= 1, f"pgd_steps={self.pgd_steps} must be >= 1")
        for name in ("beta1", "beta2", "lambda1", "lambda2", "lambda3"):
            require(getattr(self, name) >= 0, f"{name}={getattr(self, name)} must be >= 0")


def js_divergence(logits_a: torch.Tensor, logits_b: torch.Tensor) -> torch.Tensor:
    """(B,): Jensen-Shannon divergence of two softmaxes (probabilities floored at 1e-8, as theirs)."""
    p, q = F.softmax(logits_a, 1).clamp(min=1e-8), F.softmax(logits_b, 1).clamp(min=1e-8)
    m = 0.5 * (p + q)
    return (0.5 * (p * p.log() + q * q.log()) - 0.5 * (p * m.log() + q * m.log())).sum(1)


def shared_pgd(model, ref, x: torch.Tensor, y: torch.Tensor, cfg: SAUConfig) -> torch.Tensor:
    """δ (same shape as x) that fools `model` and `ref` into the same class where it can."""
    with torch.no_grad():
        own, own_ref = model(x).argmax(1), ref(x).argmax(1)
    delta = torch.full_like(x, cfg.bound).requires_grad_(True)
    n = len(x)
    for _ in range(cfg.pgd_steps):
        logits, logits_ref = model(x + delta), ref(x + delta)
        fooled, fooled_ref = logits.argmax(1) != own, logits_ref.argmax(1) != own_ref
        shared = fooled & fooled_ref & (logits.argmax(1) == logits_ref.argmax(1))
        adv = -((F.cross_entropy(logits, y, reduction="none") * ~fooled).sum()
                + (F.cross_entropy(logits_ref, y, reduction="none") * ~fooled_ref).sum()) / 2 / n
        js = (js_divergence(logits, logits_ref) * ~shared).sum() / n
        (grad,) = torch.autograd.grad(cfg.beta1 * adv + cfg.beta2 * js, [delta])
        with torch.no_grad():
            delta.sub_(cfg.pgd_step * grad.sign()).clamp_(-cfg.bound, cfg.bound)
        if bool(shared.all()):
            break
    return delta.detach()


def unlearning_loss(logits_adv: torch.Tensor, ref_class: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
    """Push down the model's probability of the reference's adversarial class on `candidates`."""
    if not bool(candidates.any()):
        return logits_adv.new_zeros(())
    p = F.softmax(logits_adv, 1)
    hit = F.one_hot(ref_class, p.shape[1]).to(p.dtype)
    pos, neg = (p * hit).sum(1)[candidates], (p * (1 - hit)).sum(1)[candidates]
    return (-torch.log(1e-6 + neg.clamp(max=0.999)).sum() - torch.log(1 + 1e-6 - pos.clamp(min=0.001)).sum()) / 2 / len(p)


@register("sau")
class SAU(Defense):
    Config = SAUConfig
    presets = {"quick": {"optim.epochs": 20}}

    def repair(self, model, ctx):
        cfg = self.cfg
        ref = copy.deepcopy(model).to(ctx.accelerator.device).eval()  # the backdoored original, frozen
        for p in ref.parameters():
            p.requires_grad_(False)

        def loss(m, xb, yb):
            m.eval()  # theirs: frozen BatchNorm statistics
            delta = shared_pgd(m, ref, xb, yb, cfg)
            logits, logits_adv = m(torch.cat([xb, xb + delta])).split(len(xb))
            with torch.no_grad():
                ref_clean, ref_adv = ref(xb).argmax(1), ref(xb + delta).argmax(1)
            candidates = (ref_adv != yb) & (ref_adv != ref_clean)  # where the original was fooled
            ce, at = F.cross_entropy(logits, yb), F.cross_entropy(logits_adv, yb)
            un = unlearning_loss(logits_adv, ref_adv, candidates)
            total = cfg.lambda1 * ce + cfg.lambda2 * at + cfg.lambda3 * un
            return total, {"ce": ce.detach(), "adv_ce": at.detach(), "unlearn": un.detach()}

        return train(model, ctx.x_clean, ctx.y_clean, cfg.optim, ctx.accelerator, loss_fn=loss, flip=ctx.flip,
                     seed=ctx.seed, desc="sau", on_epoch_end=ctx.on_epoch_end, start_epoch=ctx.start_epoch,
                     optimizer_state=ctx.optimizer_state)
