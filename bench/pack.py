"""Trials per hour of packed NBA trials in one process, without Ray: the torch path of `tune --pack`.

    python bench/pack.py --dataset npz:~/.cache/nba_scale/cifar10_jpeg.npz [--packs 1 8 32]
        [--modes stacked loop] [--num-samples 32] [--device auto] [--set data.train_subset=10000 ...] [--json FILE]

`--num-samples` NBA configurations are drawn once (Optuna's random sampler over
search_spaces/nba.yaml, seed 0, the paper default first) and run as packs of K (`trial.run_pack`)
for each K and each `--modes` (`--pack-mode`: stacked, one network for the K members; loop, one
after another; K = 1 once), at `--preset quick` unless `--set` says otherwise. The artifacts are built (or found in
the cache) before the timing. Per K it prints trials/hour, the ratio to K = 1, the defense seconds
per trial and the hypervolume of the (ASR, BA) front: the members of a pack get the results they
would get alone, so the front must not move with K. For a machine without Ray and Optuna (the GPU
image): it needs neither, the points are drawn with numpy.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np

from nba_scale.config import merge, nest, parse_set
from nba_scale.sweep.search_space import decode, load_search_space
from nba_scale.sweep.store import hypervolume
from nba_scale.trial import prepare_artifacts, run_pack, with_preset

REPO = Path(__file__).resolve().parent.parent


def draw(space, n: int, seed: int) -> list[dict]:
    """The default point, then n - 1 random ones (log-uniform where the space says log)."""
    rng = np.random.default_rng(seed)
    points = [space.default_point()]
    for _ in range(n - 1):
        point = {}
        for p in space.params:
            if p.type == "categorical":
                point[p.name] = p.choices[rng.integers(len(p.choices))]
            elif p.log:
                point[p.name] = float(math.exp(rng.uniform(math.log(p.low), math.log(p.high))))
            else:
                point[p.name] = float(rng.uniform(p.low, p.high))
            if p.type == "int":
                point[p.name] = int(round(point[p.name]))
        points.append(point)
    return points


def nba_parser(doc: str, dataset: str, num_samples: int) -> argparse.ArgumentParser:
    """The flags of the NBA trial benchmarks without Ray (this one, bench/shared_device.py)."""
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", default=dataset)
    ap.add_argument("--attack", default="badnets")
    ap.add_argument("--num-samples", type=int, default=num_samples)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--precision", default="no")
    ap.add_argument("--preset", default="quick")
    ap.add_argument("--clean-fraction", type=float, default=0.05)
    ap.add_argument("--set", action="append", default=[])
    ap.add_argument("--json", default=None)
    return ap


def nba_configs(args: argparse.Namespace) -> list[dict]:
    """`--num-samples` NBA trial configs: the paper default, then random points (`draw`)."""
    space = load_search_space(REPO / "search_spaces" / "nba.yaml")
    base = with_preset(merge(nest({"dataset": args.dataset, "attack": args.attack, "defense": "nba",
                                   "device": args.device, "precision": args.precision,
                                   "clean_fraction": args.clean_fraction, **space.fixed}),
                             parse_set(args.set)), args.preset)
    return [merge(base, nest({k: decode(v) for k, v in p.items()})) for p in draw(space, args.num_samples, 0)]


def prepared(configs: list[dict]) -> list[dict]:
    """`configs`, their artifacts built (or found in the cache) before any timing; exits 1 if not."""
    t0 = time.time()
    got = prepare_artifacts(configs[0])
    if got["status"] != "ok":
        print(f"artifacts failed: {got['error']}", file=sys.stderr)
        sys.exit(1)
    print(f"artifacts in {time.time() - t0:.0f}s: backdoored BA {got['ba_before']:.1%} ASR {got['asr_before']:.1%}",
          flush=True)
    return configs


def main() -> int:
    ap = nba_parser(__doc__, "npz:~/.cache/nba_scale/cifar10_jpeg.npz", 32)
    ap.add_argument("--packs", type=int, nargs="+", default=[1, 8, 32])
    ap.add_argument("--modes", nargs="+", choices=("stacked", "loop", "auto"), default=["stacked", "loop"],
                    help="the pack modes to time at each K > 1, in this order")
    args = ap.parse_args()
    configs = prepared(nba_configs(args))

    runs = []
    for k, mode in [(k, m) for k in args.packs for m in (args.modes if k > 1 else ["-"])]:
        t0, results = time.time(), []
        for i in range(0, len(configs), k):
            results += run_pack(configs[i:i + k], pack_mode="loop" if mode == "-" else mode)
            print(f"  K={k} {mode}: {len(results)}/{len(configs)} trials, {time.time() - t0:.0f}s", flush=True)
        wall = time.time() - t0
        ok = [r for r in results if r["status"] == "ok"]
        defense_s = sum(r["timings"].get("defense_s", 0.0) for r in results[::k])  # a pack's time, once
        runs.append({"pack": k, "mode": mode, "ran": sorted({r.get("pack_mode", "-") for r in results}),
                     "wall_s": round(wall, 1), "ok": len(ok), "trials_per_hour": round(len(ok) / wall * 3600, 1),
                     "defense_s_per_trial": round(defense_s / len(results), 3),
                     "hypervolume": round(hypervolume([r["asr"] for r in ok], [r["ba"] for r in ok]), 4),
                     "device": results[0].get("device"), "errors": sorted({r["error"] for r in results if r["status"] != "ok"})})
        print(json.dumps(runs[-1]), flush=True)
        if args.json:  # after each K: a run cut short by its time limit keeps what it measured
            Path(args.json).write_text(json.dumps({"args": vars(args), "runs": runs}, indent=1))

    base_rate = next((r["trials_per_hour"] for r in runs if r["pack"] == 1), None)
    print(f"\n{len(configs)} NBA trials, {args.attack}, --preset {args.preset}, {args.dataset}, {' '.join(args.set)}\n")
    print("| K | mode | wall (s) | ok | trials/hour | vs K=1 | defense s/trial | hypervolume |")
    print("|---|---|---|---|---|---|---|---|")
    for r in runs:
        ratio = f"{r['trials_per_hour'] / base_rate:.2f}x" if base_rate else "-"
        print(f"| {r['pack']} | {r['mode']} | {r['wall_s']:.0f} | {r['ok']}/{len(configs)} | {r['trials_per_hour']:.0f} | {ratio} | "
              f"{r['defense_s_per_trial']:.2f} | {r['hypervolume']:.4f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
