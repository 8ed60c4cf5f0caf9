"""Wide ResNet (Zagoruyko & Komodakis 2016) with feature taps, as in the official NAD code.

`WideResNet(depth=16, widen=1)` is WRN-16-1: three groups of (depth-4)/6 pre-activation basic
blocks with 16k, 32k, 64k channels. `forward(x, features=True)` also returns the three group
outputs (B,16k,32,32), (B,32k,16,16), (B,64k,8,8): the taps NBA, NAD and ARGD distil from.
Inputs are floats in [0, 1]; the model normalises them itself, so triggers and PGD budgets are
expressed in pixel space.
"""
from __future__ import annotations

import re

import torch
import torch.nn as nn
import torch.nn.functional as F

from .config import ConfigError

__all__ = ["WideResNet", "build_model", "parse_arch"]


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.shortcut = None if cin == cout else nn.Conv2d(cin, cout, 1, stride, 0, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # In-place ReLUs on BatchNorm outputs (BN's backward keeps its input, not its output), as the
        # NAD code's nn.ReLU(inplace=True): one activation-sized allocation fewer each.
        o = F.relu(self.bn1(x), inplace=True)
        # The projection shortcut takes the pre-activated input, as in the reference WRN code.
        skip = x if self.shortcut is None else self.shortcut(o)
        o = self.conv2(F.relu(self.bn2(self.conv1(o)), inplace=True))
        return o + skip


class WideResNet(nn.Module):
    def __init__(self, depth: int = 16, widen: int = 1, num_classes: int = 10,
                 mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25)):
        super().__init__()
        if (depth - 4) % 6 or depth < 10:
            raise ConfigError(f"WRN depth must be 6n+4 (10, 16, 22, 28, 40), got {depth}")
        n = (depth - 4) // 6
        widths = [16, 16 * widen, 32 * widen, 64 * widen]
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1))
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
        """The last convolution (Fine-Pruning prunes its output channels)."""
        return self.groups[-1][-1].conv2

    def forward(self, x: torch.Tensor, features: bool = False):
        o = self.conv1((x - self.mean) / self.std)
        taps = []
        for group in self.groups:
            o = group(o)
            taps.append(o)
        o = F.relu(self.bn(o), inplace=True)
        logits = self.fc(torch.flatten(F.adaptive_avg_pool2d(o, 1), 1))
        return (logits, taps) if features else logits


def parse_arch(arch: str) -> tuple[int, int]:
    m = re.fullmatch(r"wrn-(\d+)-(\d+)", arch.lower())
    if not m:
        raise ConfigError(f"unknown arch {arch!r}; use wrn-DEPTH-WIDTH, e.g. wrn-16-1 (default) or wrn-40-2")
    return int(m.group(1)), int(m.group(2))


def build_model(arch: str, num_classes: int, mean, std) -> WideResNet:
    depth, widen = parse_arch(arch)
    return WideResNet(depth, widen, num_classes, mean, std)
