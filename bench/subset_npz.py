"""A class-stratified subset of an npz dataset, small enough to carry to a GPU machine (64 MiB).

    python bench/subset_npz.py ~/.cache/nba_scale/cifar10_jpeg.npz .gpu_data/cifar10_10k.npz --train 10000 --test 2000
"""
import argparse
from pathlib import Path

import numpy as np
import torch

from nba_scale.atomic import atomic_write
from nba_scale.data import stratified_indices


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("src")
    p.add_argument("dst")
    p.add_argument("--train", type=int, default=10000)
    p.add_argument("--test", type=int, default=2000)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    with np.load(Path(a.src).expanduser(), allow_pickle=False) as z:
        out = {k: z[k] for k in z.files}
    for split, n in (("train", a.train), ("test", a.test)):
        idx = stratified_indices(torch.as_tensor(out[f"y_{split}"]), count=n, seed=a.seed).numpy()
        out[f"x_{split}"], out[f"y_{split}"] = out[f"x_{split}"][idx], out[f"y_{split}"][idx]
    Path(a.dst).parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(Path(a.dst)) as tmp:
        with open(tmp, "wb") as f:
            np.savez_compressed(f, **out)
    print(f"{a.dst}: {len(out['x_train'])} train, {len(out['x_test'])} test images, "
          f"{Path(a.dst).stat().st_size / 2**20:.1f} MiB")


if __name__ == "__main__":
    main()
