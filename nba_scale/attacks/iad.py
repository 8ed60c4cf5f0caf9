"""IAD, the input-aware dynamic backdoor (Nguyen & Tran, NeurIPS 2020; code
VinAIResearch/input-aware-backdoor-attack-release, which BackdoorBench's attack/inputaware.py
follows): poison-label, all-to-one, a different trigger for every image.

Two generators of theirs (an encoder-decoder of 3x3 conv + BN + ReLU blocks, 32-64-128 channels,
tanh output squashed to (0, 1)): G draws a pattern and M a mask from the image itself,

    x' = x + (G(x) - x) · m(x),   m = tanh(20 M(x) - 10) / 2 + 1/2   (nearly binary)

1. M alone (`mask_epochs`, theirs 25): a sparse mask (`mask_density` 3.2 % of the pixels above
   threshold, `lambda_norm` 100) that differs between images (the diversity loss: image distance
   over mask distance, `lambda_div` 1). Adam 0.01, betas (0.5, 0.9), lr x0.1 at epochs 10 and 20.
2. G with a classifier, jointly: in each batch `rate` of the images carry their own trigger under
   the target label, as many carry another image's trigger under their true label (the "cross"
   samples: a trigger works only on the image it was made for), the rest are clean; the loss is
   CE plus the same diversity term on the patterns. G: Adam 0.01, betas (0.5, 0.9); classifier:
   SGD 0.01, momentum 0.9, weight decay 5e-4 (theirs).
3. The attacked training set is then poisoned with the final generators (their own
   `bd_train_dataset`, which BackdoorBench saves the same way): `rate` of the images with their
   trigger and the target label, as many cross samples with their true label (`noise_index`),
   and the attacked model is trained on it by the one training loop, as every other attack's.

Choices for cost, stated: the classifier of stage 2 starts from the cached clean model (theirs
trains one from scratch with G over the whole budget: `classifier=scratch`) and trains `joint_epochs` on `images`
training images; the victim is then the backdoor recipe on the poisoned set, not that classifier.
The generators are an artifact in the cache. Images must be a multiple of 8 px (three poolings).
"""
from __future__ import annotations

import copy
import dataclasses

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..config import require
from .base import Attack, AttackParams, register


@dataclasses.dataclass
class IADParams(AttackParams):
    mask_density: float = 0.032  # share of mask pixels above threshold the norm loss allows (theirs)
    lambda_norm: float = 100.0  # weight of the mask's sparsity (theirs)
    lambda_div: float = 1.0  # weight of the diversity terms (theirs)
    mask_epochs: int = 25  # stage 1 (theirs: clean_train_epochs 25)
    joint_epochs: int = 10  # stage 2 (choice: theirs run G with the classifier over the whole training)
    images: int = 5000  # training images the generators learn on (choice for cost: theirs, all)
    batch: int = 128  # (theirs)
    lr_g: float = 0.01
    lr_m: float = 0.01
    lr_c: float = 0.01
    cross_ratio: float = 1.0  # cross samples per poisoned image (theirs: as many)
    # The classifier G trains with: `clean` a copy of the cached clean model (choice for cost),
    # `scratch` the same architecture freshly initialised, as theirs.
    classifier: str = "clean"

    def validate(self) -> None:
        super().validate()
        require(0 < self.mask_density < 1, f"mask_density={self.mask_density} must be in (0, 1)")
        require(self.mask_epochs >= 0 and self.joint_epochs >= 1, "mask_epochs must be >= 0 and joint_epochs >= 1")
        require(self.images >= 2 and self.batch >= 2, "images and batch must be >= 2")
        require(self.cross_ratio >= 0, f"cross_ratio={self.cross_ratio} must be >= 0")
        require(self.classifier in ("clean", "scratch"), f"classifier={self.classifier!r}: use clean or scratch")
        for name in ("lambda_norm", "lambda_div", "lr_g", "lr_m", "lr_c"):
            require(getattr(self, name) >= 0, f"{name}={getattr(self, name)} must be >= 0")


def _block(cin: int, cout: int, relu: bool = True) -> nn.Sequential:
    layers = [nn.Conv2d(cin, cout, 3, 1, 1), nn.BatchNorm2d(cout, eps=1e-5, momentum=0.05)]
    return nn.Sequential(*layers, nn.ReLU(inplace=True)) if relu else nn.Sequential(*layers)


class Generator(nn.Module):
    """Their InputAwareGenerator (CIFAR/GTSRB: 32 channels, 3 down- and up-sampling steps) with
    `out_channels` 3 (the pattern G) or 1 (the mask M); outputs in (0, 1). Inputs in [0, 1] are
    centred to [-1, 1] (theirs take the dataset-normalised image)."""

    def __init__(self, out_channels: int = 3, channels: int = 32, steps: int = 3):
        super().__init__()
        down, c_in, c = [], 3, channels
        for s in range(steps):
            down += [_block(c_in, c), _block(c, c), nn.MaxPool2d(2)]
            if s < steps - 1:
                c_in, c = c, c * 2
        self.down, self.middle = nn.Sequential(*down), _block(c, c)
        up, c_in = [], c
        for s in range(steps):
            c_out = out_channels if s == steps - 1 else c_in // 2
            up += [nn.Upsample(scale_factor=2, mode="bilinear"), _block(c_in, c_in),
                   _block(c_in, c_out, relu=s < steps - 1)]
            c_in = c_out
        self.up = nn.Sequential(*up)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.up(self.middle(self.down(x * 2 - 1)))) / (2 + 1e-7) + 0.5


def threshold(m: torch.Tensor) -> torch.Tensor:
    """Their near-binary mask: tanh(20 m - 10) / 2 + 1/2."""
    return torch.tanh(m * 20 - 10) / (2 + 1e-7) + 0.5


def blend(x: torch.Tensor, pattern: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return x + (pattern - x) * mask


def diversity(a: torch.Tensor, b: torch.Tensor, ga: torch.Tensor, gb: torch.Tensor) -> torch.Tensor:
    """Their diversity loss: ||a - b|| / ||g(a) - g(b)|| (RMS over pixels), averaged over pairs:
    two images must not get the same trigger."""
    dist = lambda u, v: (u - v).pow(2).mean((1, 2, 3)).sqrt()  # noqa: E731
    return (dist(a, b) / (dist(ga, gb) + 1e-7)).mean()


def train_generators(classifier: nn.Module, x: torch.Tensor, y: torch.Tensor, target: int, p: IADParams, seed: int,
                     device, progress=lambda line: print(line, flush=True)) -> tuple[Generator, Generator, float]:
    """Stages 1 and 2 on uint8 images `x` (labels `y`): (G, M) in eval mode, and the classifier's
    accuracy on the triggered images of stage 2's last epoch (its training ASR)."""
    g = torch.Generator().manual_seed(seed + 8191)
    with torch.random.fork_rng(devices=[]):  # the generators' initial weights, seeded, the global RNG left as it was
        torch.manual_seed(seed + 8191)
        netG, netM = Generator(3).to(device), Generator(1).to(device)
    xs, ys = x.to(device), y.to(device)
    n = len(xs)

    def pairs():
        a, b = torch.randperm(n, generator=g), torch.randperm(n, generator=g)
        for i in range(0, n - 1, p.batch):
            ia, ib = a[i:i + p.batch], b[i:i + p.batch]
            k = min(len(ia), len(ib))
            if k >= 2:
                yield xs[ia[:k]].float() / 255, ys[ia[:k]], xs[ib[:k]].float() / 255

    opt_m = torch.optim.Adam(netM.parameters(), p.lr_m, betas=(0.5, 0.9))
    sched_m = torch.optim.lr_scheduler.MultiStepLR(opt_m, [10, 20], 0.1)
    for epoch in range(p.mask_epochs):
        netM.train()
        for x1, _, x2 in pairs():
            m1, m2 = threshold(netM(x1)), threshold(netM(x2))
            loss = p.lambda_norm * F.relu(m1 - p.mask_density).mean() + p.lambda_div * diversity(x1, x2, m1, m2)
            opt_m.zero_grad()
            loss.backward()
            opt_m.step()
        sched_m.step()
        progress(f"iad mask epoch {epoch + 1}/{p.mask_epochs}: loss {float(loss.detach()):.3f}, "
                 f"mask {float((m1 > 0.5).float().mean()):.3f} of pixels")
    netM.eval().requires_grad_(False)

    netC = copy.deepcopy(classifier).to(device).train().requires_grad_(True)
    if p.classifier == "scratch":
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed + 8209)
            for m in netC.modules():
                if hasattr(m, "reset_parameters"):
                    m.reset_parameters()
    opt_c = torch.optim.SGD(netC.parameters(), p.lr_c, momentum=0.9, weight_decay=5e-4)
    opt_g = torch.optim.Adam(netG.parameters(), p.lr_g, betas=(0.5, 0.9))
    asr = 0.0
    for epoch in range(p.joint_epochs):
        netG.train()
        hit = seen = 0
        for x1, y1, x2 in pairs():
            nb = max(1, round(p.rate * len(x1)))
            nc = min(len(x1) - nb, round(p.cross_ratio * nb))
            with torch.no_grad():
                m1, m2 = threshold(netM(x1[:nb])), threshold(netM(x2[nb:nb + nc]))
            g1, g2 = netG(x1[:nb]), netG(x2[nb:nb + nc])
            inputs = torch.cat([blend(x1[:nb], g1, m1), blend(x1[nb:nb + nc], g2, m2), x1[nb + nc:]])
            labels = torch.cat([torch.full((nb,), target, device=device), y1[nb:]])
            logits = netC(inputs)
            loss = F.cross_entropy(logits, labels)
            if nc:
                loss = loss + p.lambda_div * diversity(x1[:nc], x2[nb:nb + nc], g1[:nc], g2)
            opt_c.zero_grad()
            opt_g.zero_grad()
            loss.backward()
            opt_c.step()
            opt_g.step()
            hit += int((logits[:nb].argmax(1) == target).sum())
            seen += nb
        asr = hit / max(seen, 1)
        progress(f"iad joint epoch {epoch + 1}/{p.joint_epochs}: loss {float(loss.detach()):.3f}, training ASR {asr:.3f}")
    return netG.eval().requires_grad_(False), netM, asr


@register("iad")
class InputAware(Attack):
    Params = IADParams
    nets: tuple[Generator, Generator] | None = None  # (G, M), set by prepare

    def prepare(self, x_train, y_train, ctx):
        ctx = self.needs_context(ctx)
        p = self.params
        require(x_train.shape[-1] % 8 == 0, f"iad: its generators pool three times; the images are "
                                            f"{x_train.shape[-1]} px, use a multiple of 8 (data.image_size)")

        def build():
            pick = torch.randperm(len(x_train), generator=torch.Generator().manual_seed(self.seed + 77))[:p.images]
            netG, netM, asr = train_generators(ctx.clean_model(), x_train[pick], y_train[pick], p.target, p,
                                               self.seed, ctx.device)
            return {**{f"G.{k}": v.cpu() for k, v in netG.state_dict().items()},
                    **{f"M.{k}": v.cpu() for k, v in netM.state_dict().items()}, "train_asr": torch.tensor([asr])}

        state = ctx.artifact("generators", build)
        nets = Generator(3), Generator(1)
        for prefix, net in zip("GM", nets):
            net.load_state_dict({k[2:]: v for k, v in state.items() if k.startswith(prefix + ".")})
            net.eval().requires_grad_(False)
        self.nets = nets

    def _triggered(self, x: torch.Tensor, source: torch.Tensor) -> torch.Tensor:
        """x (uint8) with the trigger G and M draw from `source` (x itself, or cross images)."""
        require(self.nets is not None, "iad: the generators are made by prepare(); call poison() first")
        out = torch.empty_like(x)
        nets = [self.on_device(("net", i), x.device, lambda i=i: self.nets[i]) for i in range(2)]
        with torch.no_grad():
            for i in range(0, len(x), 256):
                xb, sb = x[i:i + 256].float() / 255, source[i:i + 256].float() / 255
                out[i:i + 256] = blend(xb, nets[0](sb), threshold(nets[1](sb))).mul(255).round().clamp(0, 255).to(torch.uint8)
        return out

    def apply_trigger(self, x: torch.Tensor) -> torch.Tensor:
        return self._triggered(x, x)

    def noise_samples(self, x, y, poisoned):
        """Their cross samples: `cross_ratio` per poisoned image, each with the trigger drawn from
        another (random) training image, under its true label."""
        k = round(self.params.cross_ratio * len(poisoned))
        idx = self.others(len(y), k, poisoned, salt=6007)
        if not len(idx):
            return None
        shift = torch.randint(1, len(y), (len(idx),), generator=torch.Generator().manual_seed(self.seed + 6011))
        donors = (idx + shift) % len(y)  # never the image itself
        return idx, self._triggered(x[idx], x[donors])
