"""Look at an attack: a grid of clean vs poisoned training images (the NBA paper's Fig. 5), or
every attack with its defaults.

    python -m nba_scale.show --list
    python -m nba_scale.show --attack all --dataset synthetic --preset smoke --out attacks.png
    python -m nba_scale.show --attack refool --dataset npz:~/.cache/nba_scale/cifar10_jpeg.npz --out r.png

TrojanNN and CLA learn from a clean model: the first call trains one (the backdoor recipe,
`--preset`/`--set backdoor.epochs=N` to shorten it) and caches it with the attack's outputs.
"""
from __future__ import annotations

import dataclasses
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

from . import cli
from .config import ConfigError


def describe_all() -> str:
    from .attacks import ATTACKS

    lines = []
    for name in ATTACKS.names():
        cls = ATTACKS.get(name)
        kind = "clean-label" if cls.clean_label else "poison-label"
        doc = " ".join((sys.modules[cls.__module__].__doc__ or "").strip().split("\n\n")[0].split())
        lines.append(f"{name} ({kind}): {doc}")
        for f in dataclasses.fields(cls.Params):
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            lines.append(f"    {name}.{f.name} = {default!r}")
    return "\n".join(lines)


def poisoned_examples(config: dict, n: int = 6):
    """(attack name, clean images, poisoned images) for `n` of the training images it poisons."""
    from .trial import poison_only

    _, ds, attack, p, _ = poison_only(config)
    idx = p.poison_index[:n]
    return attack.name, ds.x_train[p.train_index[idx]], p.x_train[idx]


def draw(rows: list[tuple[str, "torch.Tensor", "torch.Tensor"]], out: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .atomic import save_figure

    n = max(len(c) for _, c, _ in rows)
    fig, axes = plt.subplots(2 * len(rows), n, figsize=(1.1 * n, 2.3 * len(rows)), squeeze=False)
    for r, (name, clean, poisoned) in enumerate(rows):
        for k in range(n):
            for j, (label, imgs) in enumerate((("clean", clean), ("poisoned", poisoned))):
                ax = axes[2 * r + j][k]
                ax.axis("off")
                if k < len(imgs):
                    ax.imshow(imgs[k].permute(1, 2, 0).numpy(), interpolation="nearest")
                if k == 0:
                    ax.set_title(f"{name}: {label}", fontsize=7, loc="left")
    fig.tight_layout()
    save_figure(fig, out, dpi=110)


def run(args) -> int:
    from .attacks import ATTACKS

    if args.list:
        print(describe_all())
        return 0
    if not args.out:
        raise ConfigError("pass --out FILE.png (or --list)")
    names = ATTACKS.names() if args.attack == ["all"] else args.attack
    base, sets = cli.base_config(args), cli.user_set(args)
    rows = []
    for name in names:
        trial = {"attack": name, "seed": args.seed, "defense": "none"}
        rows.append(poisoned_examples(cli.trial_config(base, trial, sets, preset=args.preset), args.n))
        print(f"{name}: {len(rows[-1][1])} poisoned training images", flush=True)
    draw(rows, args.out)
    print(f"wrote {args.out}")
    return 0


def build_parser():
    ap = cli.parser("python -m nba_scale.show", __doc__)
    ap.add_argument("--list", action="store_true", help="print every attack with its defaults")
    ap.add_argument("--attack", nargs="+", default=["all"], help="names, or all")
    cli.add_trial_flags(ap, dataset="synthetic")
    ap.add_argument("--n", type=int, default=6, help="images per attack")
    ap.add_argument("--out", default=None, help="PNG file to write")
    return ap


main = cli.entry(build_parser, run)


if __name__ == "__main__":
    sys.exit(main())
