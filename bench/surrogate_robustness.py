"""How robust is each cached attacker surrogate? Clean and PGD accuracy of every `clean` artifact
(the attacker's standard clean model and any adversarially trained variant, `cla.surrogate_eps`)
built for one `.npz`, seed and 10,000-image subset: the check that adversarial training took.

    python bench/surrogate_robustness.py ~/.cache/nba_scale/gtsrb32.npz 0 [--cache DIR] [--n 1000]

PGD: L∞ 8/255, 10 steps of 2/255 from a random start, on the first n test images of the subset.
Prints one JSON line per model. Measured figures: docs/FIDELITY.md section 7.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from nba_scale.adversarial import pgd_untargeted
from nba_scale.checkpoints import load_weights
from nba_scale.data import DataConfig, load_dataset
from nba_scale.models import build_model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("npz")
    ap.add_argument("seed", type=int)
    ap.add_argument("--cache", default=str(Path.home() / ".cache/nba_scale/artifacts"))
    ap.add_argument("--train-subset", type=int, default=10000)
    ap.add_argument("--test-subset", type=int, default=2000)
    ap.add_argument("--n", type=int, default=1000)
    args = ap.parse_args()
    ds = load_dataset("npz:" + args.npz, DataConfig(train_subset=args.train_subset, test_subset=args.test_subset),
                      args.seed)
    x, y = ds.x_test[:args.n].float() / 255, ds.y_test[:args.n]
    for meta in sorted((Path(args.cache) / "clean").glob("*.json")):
        spec = json.loads(meta.read_text())["spec"]
        if spec.get("seed") != args.seed or spec["data"].get("train_subset") != args.train_subset:
            continue
        model = build_model(spec["arch"], ds.num_classes, ds.mean, ds.std)
        try:
            model.load_state_dict(load_weights(meta.with_suffix(".safetensors")))
        except RuntimeError:  # another dataset's class count
            continue
        model.eval().requires_grad_(False)
        torch.manual_seed(0)
        adv = pgd_untargeted(model, x, y, 8 / 255, 10, 2 / 255, batch_size=256)
        with torch.no_grad():
            clean, robust = ((model(v).argmax(1) == y).float().mean().item() for v in (x, adv))
        print(json.dumps({"key": meta.stem[:12], "variant": spec.get("variant"), "clean_acc": round(clean, 4),
                          "pgd_acc": round(robust, 4)}), flush=True)


if __name__ == "__main__":
    main()
