"""The classifiers a trial trains or defends, and the feature taps the distillation defenses read.

Built in (CIFAR-sized inputs; `--set arch=...` or `--set model.arch=...`):
- `wrn-D-W`: Wide ResNet (Zagoruyko & Komodakis 2016) as in the official NAD code; WRN-16-1 is
  the paper's. Taps: the three group outputs (B,16W,32,32), (B,32W,16,16), (B,64W,8,8).
- `preact-resnet18`: pre-activation ResNet-18, BackdoorBench's layout and parameter names (no
  BN before the pooling). Taps: `layer2`, `layer3`, `layer4` (the last three stages).
- `vgg16-bn`: the CIFAR VGG-16 with BatchNorm of kuangliu/pytorch-cifar (`features.N`, one
  linear `classifier`). Taps: its last three stages, before their pooling.
- `vgg19-bn`: torchvision's `vgg19_bn`, as BackdoorBench trains it on 32-px images (a 7x7 pool
  and three linear layers). Taps as `vgg16-bn`'s.

Every model takes floats in [0, 1] and normalises them itself (buffers `mean`, `std`), so
triggers and PGD budgets are in pixel space. `model(x, features=True)` returns (logits, taps):
the outputs of the modules named in `model.taps`, collected by forward hooks, so any module of
any architecture can be tapped (`--set model.taps=[layer3,layer4]`); `Tapped` wraps a classifier
that is not one of ours. `head(model)` is the linear layer the logits come from, reading the
pooled channels of the last stage: Fine-Pruning ranks and prunes those channels, TrojanNN
excites one of them.
"""
from __future__ import annotations

import abc
import re
from typing import Callable, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from .config import ConfigError

__all__ = ["ARCHS", "Classifier", "PreActResNet18", "Tapped", "VGG16BN", "VGG19BN", "WideResNet", "build_model", "head",
           "last_conv", "parse_arch"]


def tap_modules(net: nn.Module, names: Sequence[str]) -> list[tuple[str, nn.Module]]:
    try:
        return [(n, net.get_submodule(n)) for n in names]
    except AttributeError:
        known = ", ".join(n for n, _ in net.named_modules() if n and "." not in n)
        raise ConfigError(f"model.taps={list(names)} names a module this model lacks; its top-level modules: "
                          f"{known}") from None


def run_tapped(net: nn.Module, names: Sequence[str], run: Callable[[], torch.Tensor]):
    """(run(), [output of each module in `names`]): forward hooks live only for this call."""
    outs: dict[str, torch.Tensor] = {}
    hooks = [m.register_forward_hook(lambda _m, _i, o, n=n: outs.__setitem__(n, o))
             for n, m in tap_modules(net, names)]
    try:
        logits = run()
    finally:
        for h in hooks:
            h.remove()
    return logits, [outs[n] for n in names]


class Classifier(nn.Module, abc.ABC):
    """Normalisation inside, taps by name. Subclasses build their layers and `logits(x)`.
    `stackable`: its own code touches channels only through its layers, channel-wise pooling
    and `torch.flatten(x, 1)`, so K of them stack into one network (nba_scale/stacking.py)."""

    default_taps: tuple[str, ...] = ()
    stackable = False

    def __init__(self, mean, std):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1))
        self.taps = tuple(self.default_taps)

    @abc.abstractmethod
    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of normalised images."""

    def forward(self, x: torch.Tensor, features: bool = False):
        x = (x - self.mean) / self.std
        if not features:
            return self.logits(x)
        return run_tapped(self, self.taps, lambda: self.logits(x))


class Tapped(Classifier):
    """Any classifier `net` (taking normalised images) with our normalisation and named taps;
    its parameters live under `net.`."""

    stackable = True  # its `net` stacks where each of its modules does

    def __init__(self, net: nn.Module, taps: Sequence[str], mean, std):
        super().__init__(mean, std)
        self.net = net
        self.taps = tuple(f"net.{t}" for t in taps)

    def logits(self, x):
        return self.net(x)


class BasicBlock(nn.Module):
    """Pre-activation basic block (WRN and PreAct-ResNet alike); the projection shortcut takes
    the pre-activated input, as in the reference WRN and BackdoorBench code."""
    stackable = True  # (nba_scale/stacking.py) its code: layers, ReLU and a sum

    def __init__(self, cin: int, cout: int, stride: int, shortcut: str = "conv"):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        needs = stride != 1 or cin != cout
        conv = nn.Conv2d(cin, cout, 1, stride, 0, bias=False) if needs else None
        # Parameter names as in each source: WRN `shortcut.weight`, BackdoorBench `shortcut.0.weight`.
        self.shortcut = nn.Sequential(conv) if conv is not None and shortcut == "seq" else conv

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # In-place ReLUs on BatchNorm outputs (BN's backward keeps its input, not its output), as the
        # NAD code's nn.ReLU(inplace=True): one activation-sized allocation fewer each.
        o = F.relu(self.bn1(x), inplace=True)
        skip = x if self.shortcut is None else self.shortcut(o)
        o = self.conv2(F.relu(self.bn2(self.conv1(o)), inplace=True))
        return o + skip


class WideResNet(Classifier):
    default_taps = ("groups.0", "groups.1", "groups.2")
    stackable = True

    def __init__(self, depth: int = 16, widen: int = 1, num_classes: int = 10,
                 mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25)):
        super().__init__(mean, std)
        if (depth - 4) % 6 or depth < 10:
            raise ConfigError(f"WRN depth must be 6n+4 (10, 16, 22, 28, 40), got {depth}")
        n = (depth - 4) // 6
        widths = [16, 16 * widen, 32 * widen, 64 * widen]
        self.conv1 = nn.Conv2d(3, widths[0], 3, 1, 1, bias=False)
        self.groups = nn.ModuleList()
        for g in range(3):
            blocks = [BasicBlock(widths[g] if i == 0 else widths[g + 1], widths[g + 1],
                                 (1 if g == 0 else 2) if i == 0 else 1) for i in range(n)]
            self.groups.append(nn.Sequential(*blocks))
        self.bn = nn.BatchNorm2d(widths[3])
        self.fc = nn.Linear(widths[3], num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.Linear):
                nn.init.zeros_(m.bias)

    @property
    def last_conv(self) -> nn.Conv2d:
        return self.groups[-1][-1].conv2

    def logits(self, x):
        o = self.conv1(x)
        for group in self.groups:
            o = group(o)
        o = F.relu(self.bn(o), inplace=True)
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(o, 1), 1))


class PreActResNet18(Classifier):
    default_taps = ("layer2", "layer3", "layer4")
    stackable = True

    def __init__(self, num_classes: int = 10, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25)):
        super().__init__(mean, std)
        self.conv1 = nn.Conv2d(3, 64, 3, 1, 1, bias=False)
        cin = 64
        for k, (width, stride) in enumerate(((64, 1), (128, 2), (256, 2), (512, 2)), 1):
            setattr(self, f"layer{k}", nn.Sequential(BasicBlock(cin, width, stride, shortcut="seq"),
                                                     BasicBlock(width, width, 1, shortcut="seq")))
            cin = width
        self.linear = nn.Linear(512, num_classes)

    def logits(self, x):
        o = self.layer4(self.layer3(self.layer2(self.layer1(self.conv1(x)))))
        return self.linear(torch.flatten(F.adaptive_avg_pool2d(o, 1), 1))


VGG16 = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")


def vgg_features(config: Sequence) -> tuple[nn.Sequential, tuple[str, ...]]:
    """A VGG's `features` (conv 3x3 + BN + ReLU per number, max-pool per "M", torchvision's and
    kuangliu's indices) and its taps: the last three stages' outputs before their pooling (8x8,
    4x4, 2x2 on 32-px inputs: after the pooling the last one is 1x1, where a Gram matrix or an
    attention map says nothing)."""
    layers: list[nn.Module] = []
    cin, pools = 3, []
    for v in config:
        if v == "M":
            pools.append(len(layers))
            layers.append(nn.MaxPool2d(2, 2))
        else:
            layers += [nn.Conv2d(cin, v, 3, padding=1), nn.BatchNorm2d(v), nn.ReLU(inplace=True)]
            cin = v
    return nn.Sequential(*layers), tuple(f"features.{i - 1}" for i in pools[-3:])


class VGG16BN(Classifier):
    stackable = True

    def __init__(self, num_classes: int = 10, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25)):
        super().__init__(mean, std)
        self.features, self.taps = vgg_features(VGG16)
        self.classifier = nn.Linear(512, num_classes)

    def logits(self, x):
        o = self.features(x)
        return self.classifier(torch.flatten(F.adaptive_avg_pool2d(o, 1), 1))


VGG19 = (64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512, "M")


class VGG19BN(Classifier):
    """torchvision's `vgg19_bn` layout, which BackdoorBench trains on 32-px images (their
    `model_name: vgg19_bn`, utils/aggregate_block/model_trainer_generate.py): the same parameter
    names (`features.N`, `classifier.0/3/6`), a 7x7 adaptive average pool (on 32-px inputs the
    last stage's 1x1 map repeated 49 times) and a three-layer classifier, 139 M parameters. Taps
    as VGG16BN's. Its head reads 4,096 hidden units rather than pooled channels, so the defenses
    and attacks that work on those channels (Fine-Pruning, TrojanNN) refuse it (`reads_channels`)."""
    reads_channels = False
    stackable = True  # but for its dropout (stacking.why_not_stackable)

    def __init__(self, num_classes: int = 10, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25)):
        super().__init__(mean, std)
        self.features, self.taps = vgg_features(VGG19)
        self.avgpool = nn.AdaptiveAvgPool2d((7, 7))
        self.classifier = nn.Sequential(nn.Linear(512 * 7 * 7, 4096), nn.ReLU(True), nn.Dropout(),
                                        nn.Linear(4096, 4096), nn.ReLU(True), nn.Dropout(), nn.Linear(4096, num_classes))

    def logits(self, x):
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


ARCHS = ("wrn-DEPTH-WIDTH", "preact-resnet18", "vgg16-bn", "vgg19-bn")


def parse_arch(arch: str) -> tuple[int, int]:
    m = re.fullmatch(r"wrn-(\d+)-(\d+)", arch.lower())
    if not m:
        raise ConfigError(f"unknown arch {arch!r}; use wrn-DEPTH-WIDTH (e.g. wrn-16-1, the default), "
                          f"preact-resnet18, vgg16-bn or vgg19-bn")
    return int(m.group(1)), int(m.group(2))


def build_model(arch: str, num_classes: int, mean, std, taps: Sequence[str] | None = None) -> Classifier:
    name = arch.lower()
    if name == "preact-resnet18":
        model: Classifier = PreActResNet18(num_classes, mean, std)
    elif name == "vgg16-bn":
        model = VGG16BN(num_classes, mean, std)
    elif name == "vgg19-bn":
        model = VGG19BN(num_classes, mean, std)
    else:
        depth, widen = parse_arch(arch)
        model = WideResNet(depth, widen, num_classes, mean, std)
    if taps:
        model.taps = tuple(taps)
        tap_modules(model, model.taps)  # an unknown name fails here, in one line
    return model


def head(model: nn.Module, who: str = "") -> nn.Linear:
    """The linear layer that makes the logits from the pooled last-stage channels (the last
    `nn.Linear` in the model). `who` (a plug-in that works on those channels) is refused in one
    line on a model whose head reads something else (VGG19BN's hidden units)."""
    if who and not getattr(model, "reads_channels", True):
        raise ConfigError(f"{who} works on the pooled last-stage channels the classifier reads; "
                          f"{type(model).__name__}'s head reads hidden units of a three-layer classifier: use "
                          f"another defense or attack with this architecture")
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ConfigError(f"{type(model).__name__} has no nn.Linear classifier head")
    return linears[-1]


def last_conv(model: nn.Module) -> nn.Conv2d:
    """The last convolution in module order (TrojanNN's neuron is one of its output channels)."""
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    if not convs:
        raise ConfigError(f"{type(model).__name__} has no nn.Conv2d")
    return convs[-1]
