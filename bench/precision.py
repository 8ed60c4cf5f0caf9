"""Training-step throughput per architecture, memory layout and precision (fp32 / bf16 autocast).

    python bench/precision.py [--archs wrn-16-1 preact-resnet18 vgg16-bn] [--steps 5] [--batch 64] [--json F]

One SGD step of cross-entropy on random images, after two warm-up steps, in the default layout and
in channels_last, in fp32 and under bf16 autocast: what `--precision bf16` or a stage's
`backdoor.precision=bf16` can buy on this machine (CPUs with AMX/AVX512-BF16 run bf16 convolutions
natively; elsewhere bf16 can be slower than fp32). Not a trial: no data pipeline, no evaluation.
"""
from __future__ import annotations

import argparse
import json
import time

import torch

from nba_scale.models import build_model


def rate(arch: str, channels_last: bool, bf16: bool, steps: int, batch: int, device: str) -> float:
    torch.manual_seed(0)
    model = build_model(arch, 10, (0.5,) * 3, (0.25,) * 3).to(device)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(memory_format=fmt)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x = torch.randn(batch, 3, 32, 32, device=device).contiguous(memory_format=fmt)
    y = torch.randint(0, 10, (batch,), device=device)

    def step():
        with torch.autocast(torch.device(device).type, dtype=torch.bfloat16, enabled=bf16):
            loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for _ in range(2):
        step()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return batch * steps / (time.perf_counter() - t0)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--archs", nargs="+", default=["wrn-16-1", "preact-resnet18", "vgg16-bn"])
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--device", default="cpu")
    p.add_argument("--json", default=None)
    args = p.parse_args()
    rows = []
    print(f"{'arch':16} {'layout':14} {'fp32 img/s':>11} {'bf16 img/s':>11} {'bf16/fp32':>9}")
    for arch in args.archs:
        for cl in (False, True):
            fp32 = rate(arch, cl, False, args.steps, args.batch, args.device)
            bf16 = rate(arch, cl, True, args.steps, args.batch, args.device)
            layout = "channels_last" if cl else "default"
            rows.append({"arch": arch, "layout": layout, "fp32": fp32, "bf16": bf16})
            print(f"{arch:16} {layout:14} {fp32:11.0f} {bf16:11.0f} {bf16 / fp32:8.2f}x", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": args.device, "threads": torch.get_num_threads(), "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
