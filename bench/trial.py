"""Throughput of the trial's hot loops against a reference loop written the NAD way.

    python bench/trial.py [--device auto] [--images 4096] [--clean 1024] [--epochs 2] [--workers N]
                          [--precision no|bf16] [--repeats 5] [--json F] [--only ... nba-pgd-bf16]

Prints images/s for (1) backdoor training (CE, crop+flip), (2) one NAD defense epoch (teacher
forward + student forward, attention loss) and (3) one NBA defense epoch (teacher forward +
student forward + PGD pseudo sample + second student forward), each through nba_scale's loop
(uint8 tensors on the device, batched augmentation, Accelerate, `training.memory_format`: once in
the device's chosen layout and once in each of the two layouts) and through a reference loop as
in the official NAD code (torchvision DataLoader over PIL images with RandomCrop /
RandomHorizontalFlip / ToTensor / Normalize transforms, fp32, default layout), on identical work:
same model, same images, same batch size, same loss. The first epoch of each is a warm-up; the
loops alternate `--repeats` times; each run's rate is its fastest epoch, the figures are medians
over the repeats, and the ratio is the median of the ratios of neighbouring runs (this machine's
speed drifts by 10-20 % over minutes).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import time

import numpy as np
import torch
import torchvision.transforms as T
from PIL import Image

from nba_scale.attacks.badnets import BadNets
from nba_scale.data import make_synthetic
from nba_scale.defenses.base import DefenseContext
from nba_scale.defenses.nad import NAD
from nba_scale.defenses.nba import NBA
from nba_scale.models import WideResNet
from nba_scale.training import OptimConfig, cross_entropy, make_accelerator, make_optimizer, memory_format, train

MEAN, STD = (0.5,) * 3, (0.25,) * 3


class PILSet(torch.utils.data.Dataset):
    def __init__(self, x: torch.Tensor, y: torch.Tensor, transform):
        self.imgs = [Image.fromarray(a) for a in x.permute(0, 2, 3, 1).numpy()]
        self.y, self.transform = y.tolist(), transform

    def __len__(self):
        return len(self.imgs)

    def __getitem__(self, i):
        return self.transform(self.imgs[i]), self.y[i]


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


@contextlib.contextmanager
def layout(fmt):
    """`training.memory_format` as `fmt` (None: the device's own choice)."""
    before = os.environ.get("NBA_SCALE_CHANNELS_LAST")
    if fmt is not None:
        os.environ["NBA_SCALE_CHANNELS_LAST"] = "1" if fmt == torch.channels_last else "0"
    try:
        yield
    finally:
        os.environ.pop("NBA_SCALE_CHANNELS_LAST", None)
        if before is not None:
            os.environ["NBA_SCALE_CHANNELS_LAST"] = before


class Clock:
    def __init__(self, device):
        self.device, self.times = device, []

    def __call__(self, *_):
        sync(self.device)
        self.times.append(time.perf_counter())

    def rate(self, n):
        return n / np.diff(self.times)[1:].min()  # the first epoch is a warm-up


def bench_ours(x, y, acc, epochs, defense=None, teacher=None, cfg=None):
    """Our path end to end: `train` for backdoor training, `defense.repair` (the trial's call, with
    its teacher set-up) for a defense."""
    torch.manual_seed(0)
    model = WideResNet(16, 1, 10, MEAN, STD)
    clock = Clock(acc.device)
    clock()
    if defense is None:
        train(model, x, y, OptimConfig(**{**cfg.__dict__, "epochs": epochs}), acc, flip=True, on_epoch_end=clock)
    else:
        defense.cfg.optim.epochs = epochs
        defense.repair(model, DefenseContext(x, y, 10, True, acc, teacher=teacher, on_epoch_end=clock))
    return clock.rate(len(x))


def bench_reference(x, y, cfg, device, epochs, workers, loss_for=None, teacher=None):
    """The NAD code's loop: normalisation in the transform (so the models' own is neutralised)."""
    torch.manual_seed(0)
    model = WideResNet(16, 1, 10)
    nets = [model] + ([teacher] if teacher is not None else [])
    for net in nets:
        net.mean.zero_()
        net.std.fill_(1.0)
        net.to(device)
    loss_fn = cross_entropy if loss_for is None else loss_for(teacher.eval())
    tf = T.Compose([T.RandomCrop(32, padding=4), T.RandomHorizontalFlip(), T.ToTensor(), T.Normalize(MEAN, STD)])
    loader = torch.utils.data.DataLoader(PILSet(x, y, tf), batch_size=cfg.batch_size, shuffle=True,
                                         num_workers=workers, pin_memory=device.type == "cuda")
    model.train()
    opt = make_optimizer(model, cfg)
    clock = Clock(device)
    clock()
    for _ in range(epochs):
        for xb, yb in loader:
            xb, yb = xb.to(device), yb.to(device)
            loss = loss_fn(model, xb, yb)
            loss = loss[0] if isinstance(loss, tuple) else loss  # (the loss, its terms): training.LossFn
            opt.zero_grad()
            loss.backward()
            if cfg.grad_clip is not None:
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            opt.step()
        clock()
    return clock.rate(len(x))


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="auto")
    p.add_argument("--precision", default="no")
    p.add_argument("--images", type=int, default=4096, help="training images for the backdoor benchmark")
    p.add_argument("--clean", type=int, default=1024, help="clean images for the defense benchmarks")
    p.add_argument("--epochs", type=int, default=2, help="epochs per measurement, the first one a warm-up")
    p.add_argument("--repeats", type=int, default=5, help="alternations of the loops")
    p.add_argument("--workers", type=int, default=None, help="reference DataLoader workers (default 0 on CPU, 4 on GPU)")
    p.add_argument("--json", default=None, help="also write the figures (img/s) to this file")
    p.add_argument("--only", nargs="*", default=["backdoor", "nad", "nba"],
                   choices=["backdoor", "nad", "nba", "nba-pgd-bf16"])
    args = p.parse_args()
    acc = make_accelerator(args.device, args.precision)
    dev = acc.device
    workers = args.workers if args.workers is not None else (4 if dev.type == "cuda" else 0)
    x, y, xt, yt = make_synthetic(args.images, 10, seed=0)
    poisoned = BadNets({}, 10).poison(x, y, xt, yt)
    chosen = memory_format(dev)
    other = torch.contiguous_format if chosen == torch.channels_last else torch.channels_last
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else f"CPU x{torch.get_num_threads()} threads"
    print(f"device: {name}; torch {torch.__version__}; precision {args.precision}; reference workers {workers}; "
          f"chosen layout {str(chosen).split('.')[-1]}")

    def teacher():
        torch.manual_seed(1)
        return WideResNet(16, 1, 10, MEAN, STD)

    def reference_loss(defense):
        return lambda t: defense.distill_loss(t, DefenseContext(x, y, 10, True, acc))

    # (title, images, labels, optimiser, defense, our defense's overrides); the reference loop
    # always runs the defense's defaults, so "nba-pgd-bf16" compares our NBA with its PGD passes in
    # bf16 (nba.pgd_precision) against the fp32 reference: not identical work, a speed-up a user can take.
    work = {
        "backdoor": ("backdoor training (WRN-16-1, batch 128)", poisoned.x_train, poisoned.y_train,
                     OptimConfig(epochs=args.epochs, lr=0.1, batch_size=128, weight_decay=5e-4), None, {}),
        "nad": ("NAD defense epoch  (WRN-16-1, batch 64)", x[:args.clean], y[:args.clean], NAD({}).cfg.optim, NAD, {}),
        "nba": ("NBA defense epoch  (WRN-16-1, batch 64, PGD 5 steps)", x[:args.clean], y[:args.clean],
                NBA({}).cfg.optim, NBA, {}),
        "nba-pgd-bf16": ("NBA defense epoch, PGD passes in bf16 (reference: fp32)", x[:args.clean], y[:args.clean],
                         NBA({}).cfg.optim, NBA, {"pgd_precision": "bf16"}),
    }
    figures = {}
    for key in args.only:
        title, xs, ys, cfg, Defense, ours_cfg = work[key]
        runs = {"ours": [], "ours_other_layout": [], "reference": []}
        for _ in range(args.repeats):
            for label, fmt in (("ours", None), ("ours_other_layout", other)):
                with layout(fmt):
                    if Defense is None:
                        runs[label].append(bench_ours(xs, ys, acc, args.epochs, cfg=cfg))
                    else:
                        runs[label].append(bench_ours(xs, ys, acc, args.epochs, Defense(dict(ours_cfg)), teacher()))
            runs["reference"].append(bench_reference(xs, ys, cfg, dev, args.epochs, workers,
                                                     None if Defense is None else reference_loss(Defense({})),
                                                     None if Defense is None else teacher()))
        # The ratio of neighbouring runs, median over the repeats: robust to the machine's drift.
        ratios = [a / b for a, b in zip(runs["ours"], runs["reference"])]
        figures[key] = {**{k: float(np.median(v)) for k, v in runs.items()}, "ratio": float(np.median(ratios)),
                        "ratios": ratios}
        f = figures[key]
        print(f"{title}: nba_scale {f['ours']:7.0f} img/s ({str(chosen).split('.')[-1]}), "
              f"{f['ours_other_layout']:7.0f} img/s ({str(other).split('.')[-1]}); reference "
              f"{f['reference']:7.0f} img/s; ratio {f['ratio']:4.2f}x (per repeat: "
              f"{', '.join(f'{r:.2f}' for r in ratios)})", flush=True)
    if args.json:
        figures["device"], figures["layout"] = name, str(chosen).split(".")[-1]
        with open(args.json, "w") as f:
            json.dump(figures, f, indent=1)


if __name__ == "__main__":
    main()
