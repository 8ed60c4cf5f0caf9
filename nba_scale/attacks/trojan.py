"""TrojanNN (Liu et al. 2018, "Trojaning attack on neural networks"), poison-label, all-to-one.

The trigger is not drawn by hand: its pixels, inside a square mask in the bottom-right corner,
are optimised to drive one internal neuron of a clean model to a high activation, so that the
trigger excites a feature the network already has. As in Liu et al., the neuron is the one with
the largest sum of absolute incoming weights in the chosen layer; here the layer is the model's
last convolution and a "neuron" one of its channels, read as the pooled channel the classifier
reads (on the WRN: after the final BatchNorm + ReLU). The trigger then poisons the training set as BadNets
does (the re-implementations NAD and BackdoorBench evaluate; Liu et al. additionally retrain
only the later layers, which does not apply when the attacker controls the whole training).

The clean model and the optimised trigger are artifacts in the cache (one per data, parameters
and seed).
"""
from __future__ import annotations

import dataclasses

import torch

from ..config import require
from ..models import head, last_conv
from .base import Attack, AttackParams, register, scaled


@dataclasses.dataclass
class TrojanParams(AttackParams):
    patch_size: int = 7  # square mask side at 32 px: 7x7 = 4.8 % of a 32x32 image (Liu et al.: 4-7 % squares)
    target_activation: float = 100.0  # value the neuron is driven to (Liu et al.'s cost (t - act)^2; 100 as their code)
    steps: int = 200  # optimisation steps on the trigger pixels (choice; the loss flattens by ~100)
    lr: float = 0.1  # Adam step on the trigger's logits (choice)
    batch: int = 128  # clean images the trigger is stamped on per step (choice)

    def validate(self) -> None:
        super().validate()
        require(1 <= self.patch_size <= 16, f"patch_size={self.patch_size} must be in 1..16")
        require(self.steps >= 1, f"steps={self.steps} must be >= 1")


def select_neuron(model: torch.nn.Module) -> int:
    """Liu et al.: the neuron with the largest sum of absolute incoming weights."""
    return int(last_conv(model).weight.detach().abs().sum(dim=(1, 2, 3)).argmax())


@register("trojan")
class Trojan(Attack):
    Params = TrojanParams
    trigger: torch.Tensor | None = None  # (3, s, s) uint8, set by prepare

    def prepare(self, x_train, y_train, ctx):
        ctx = self.needs_context(ctx)
        p = self.params

        def build():
            model = ctx.clean_model()
            neuron = select_neuron(model)
            t, act = optimise_trigger(model, x_train, neuron, p, seed=self.seed, device=ctx.device)
            return {"trigger": t, "neuron": torch.tensor([neuron]), "activation": torch.tensor([act])}

        self.trigger = ctx.artifact("trigger", build)["trigger"]

    def apply_trigger(self, x: torch.Tensor) -> torch.Tensor:
        require(self.trigger is not None, "trojan: the trigger is made by prepare(); call poison() first")
        s, (h, w) = self.trigger.shape[-1], x.shape[-2:]  # optimised at the images' scale (base.scaled)
        require(s == scaled(self.params.patch_size, h),
                f"trojan: the trigger is {s} px, made for other images than these {h}-px ones")
        out = x.clone()
        out[..., h - s:, w - s:] = self.on_device(("trigger", id(self.trigger)), x.device, lambda: self.trigger)
        return out


def optimise_trigger(model, x_train, neuron: int, p: TrojanParams, seed: int, device) -> tuple[torch.Tensor, float]:
    """Gradient descent on (target_activation - mean activation of `neuron`)^2 over clean images
    stamped with the trigger. Returns the uint8 trigger and the activation it reaches."""
    g = torch.Generator().manual_seed(seed + 4242)
    s = scaled(p.patch_size, x_train.shape[-1])
    logits = torch.randn(3, s, s, generator=g).to(device).requires_grad_(True)
    opt = torch.optim.Adam([logits], lr=p.lr)
    acts = {}
    # The neuron's activation as the classifier reads it: its pooled channel.
    hook = head(model, "trojan").register_forward_pre_hook(lambda m, i: acts.__setitem__("o", i[0].flatten(1)))
    try:
        for step in range(p.steps):
            idx = torch.randint(0, len(x_train), (p.batch,), generator=g)
            xb = x_train[idx].to(device).float().div(255)
            xb[..., -s:, -s:] = torch.sigmoid(logits)
            model(xb)
            act = acts["o"][:, neuron].mean()
            loss = (p.target_activation - act) ** 2
            opt.zero_grad()
            loss.backward()
            opt.step()
    finally:
        hook.remove()
    trigger = (torch.sigmoid(logits.detach()) * 255).round().to(torch.uint8).cpu()
    return trigger, float(act.detach())
