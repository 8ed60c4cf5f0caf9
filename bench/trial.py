"""Throughput of the trial's two hot loops against a reference loop written the NAD way.

    python bench/trial.py [--device auto] [--images 4096] [--epochs 2] [--workers N] [--precision no|bf16]

Prints images/s for (1) backdoor training (CE, crop+flip) and (2) one NBA defense epoch
(teacher forward + student forward + PGD pseudo sample + second student forward), each through
nba_scale's loop (uint8 tensors on the device, batched augmentation, Accelerate) and through a
reference loop as in the official NAD code (torchvision DataLoader over PIL images with
RandomCrop/RandomHorizontalFlip/ToTensor/Normalize transforms, fp32), on identical work: same
model, same images, same batch size, same loss. The first epoch of each is a warm-up.
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch
import torchvision.transforms as T
from PIL import Image

from nba_scale.attacks.badnets import BadNets
from nba_scale.data import make_synthetic
from nba_scale.defenses.base import DefenseContext
from nba_scale.defenses.nba import NBA
from nba_scale.models import WideResNet
from nba_scale.training import OptimConfig, cross_entropy, make_accelerator, make_optimizer, train


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


def bench_ours(model, x, y, cfg, acc, loss_fn, epochs):
    times = []

    def tick(epoch, m, opt):
        sync(acc.device)
        times.append(time.perf_counter())

    sync(acc.device)
    times.append(time.perf_counter())
    train(model, x, y, OptimConfig(**{**cfg.__dict__, "epochs": epochs}), acc, loss_fn=loss_fn, flip=True,
          on_epoch_end=tick)
    per_epoch = np.diff(times)[1:]  # drop the warm-up epoch
    return len(x) / per_epoch.mean()


def bench_reference(model, x, y, cfg, device, loss_fn, epochs, workers):
    # Normalisation happens in the transform here, so the model's own is neutralised.
    model.mean.zero_()
    model.std.fill_(1.0)
    tf = T.Compose([T.RandomCrop(32, padding=4), T.RandomHorizontalFlip(), T.ToTensor(),
                    T.Normalize((0.5,) * 3, (0.25,) * 3)])
    loader = torch.utils.data.DataLoader(PILSet(x, y, tf), batch_size=cfg.batch_size, shuffle=True,
                                         num_workers=workers, pin_memory=device.type == "cuda")
    model.to(device).train()
    opt = make_optimizer(model, cfg)
    times = []
    for _ in range(epochs):
        sync(device)
        t0 = time.perf_counter()
        for xb, yb in loader:
            xb, yb = xb.to(device), yb.to(device)
            loss = loss_fn(model, xb, yb)
            opt.zero_grad()
            loss.backward()
            opt.step()
        sync(device)
        times.append(time.perf_counter() - t0)
    return len(x) / np.mean(times[1:])


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="auto")
    p.add_argument("--precision", default="no")
    p.add_argument("--images", type=int, default=4096, help="training images for the backdoor benchmark")
    p.add_argument("--clean", type=int, default=1024, help="clean images for the NBA epoch benchmark")
    p.add_argument("--epochs", type=int, default=3, help="epochs per measurement, the first one a warm-up")
    p.add_argument("--workers", type=int, default=None, help="reference DataLoader workers (default 0 on CPU, 4 on GPU)")
    args = p.parse_args()
    acc = make_accelerator(args.device, args.precision)
    dev = acc.device
    workers = args.workers if args.workers is not None else (4 if dev.type == "cuda" else 0)
    x, y, xt, yt = make_synthetic(args.images, 10, seed=0)
    poisoned = BadNets({}, 10).poison(x, y, xt, yt)
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else f"CPU x{torch.get_num_threads()} threads"
    print(f"device: {name}; torch {torch.__version__}; precision {args.precision}; reference workers {workers}")

    cfg = OptimConfig(epochs=args.epochs, lr=0.1, batch_size=128, weight_decay=5e-4)
    torch.manual_seed(0)
    ours = bench_ours(WideResNet(16, 1, 10, (0.5,) * 3, (0.25,) * 3), poisoned.x_train, poisoned.y_train, cfg, acc,
                      cross_entropy, args.epochs)
    ref = bench_reference(WideResNet(16, 1, 10), poisoned.x_train, poisoned.y_train, cfg, dev, cross_entropy,
                          args.epochs, workers)
    print(f"backdoor training  (WRN-16-1, batch 128): nba_scale {ours:8.0f} img/s   reference {ref:8.0f} img/s   ratio {ours / ref:5.2f}x")

    nba = NBA({})
    cfg_nba = nba.cfg.optim
    teacher = WideResNet(16, 1, 10, (0.5,) * 3, (0.25,) * 3).to(dev).eval()
    ctx = DefenseContext(x[:args.clean], y[:args.clean], 10, True, acc)
    loss = nba.distill_loss(teacher, ctx)
    ours = bench_ours(WideResNet(16, 1, 10, (0.5,) * 3, (0.25,) * 3), x[:args.clean], y[:args.clean], cfg_nba, acc,
                      loss, args.epochs)
    teacher_ref = WideResNet(16, 1, 10).to(dev).eval()
    teacher_ref.mean.zero_()
    teacher_ref.std.fill_(1.0)
    ref = bench_reference(WideResNet(16, 1, 10), x[:args.clean], y[:args.clean], cfg_nba, dev,
                          nba.distill_loss(teacher_ref, ctx), args.epochs, workers)
    print(f"NBA defense epoch  (WRN-16-1, batch 64, PGD 5 steps): nba_scale {ours:8.0f} img/s   reference {ref:8.0f} img/s   ratio {ours / ref:5.2f}x")


if __name__ == "__main__":
    main()
