"""Trials per hour of one fixed sweep, packed (`tune --pack K`) at several K, in one invocation.

    python bench/sweep.py --dataset npz:~/.cache/nba_scale/cifar10_jpeg.npz [--packs 1 4 8 16]
        [--num-samples 16] [--train-subset 10000] [--test-subset 2000] [--slots 2] [--gpus-per-trial 0]

Each K runs the same sweep through the real driver (`python -m nba_scale.tune`, NBA, BadNets,
`--preset quick`, seed 0, a fresh results folder): `--num-samples` trials in ceil(N/K) packs,
`--slots` packs at once (each gets slots/concurrent CPUs, or `--gpus-per-trial`). The artifacts
(backdoored model, teacher) are built once before the first run and come from the cache in every
run, so the table compares what a sweep pays per trial. Wall time counts everything the user
waits for: Ray's start, loading, training, evaluation, rows. Prints a table of trials/hour, the
ratio to K = 1 and the hypervolume of each run's (ASR, BA) front (so a speed-up that loses the
front is visible); `--json FILE` writes the same figures.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from nba_scale.sweep.store import hypervolume, pareto_mask, read_table

REPO = Path(__file__).resolve().parent.parent


def tune_args(args, results: Path, name: str, pack: int, packs: int) -> list[str]:
    concurrent = max(1, min(args.slots, packs))
    cmd = [sys.executable, "-m", "nba_scale.tune", "--attack", args.attack, "--dataset", args.dataset,
           "--preset", "quick", "--num-samples", str(args.num_samples), "--pack", str(pack),
           "--results", str(results), "--name", name, "--max-concurrent", str(concurrent), "--seed", "0",
           "--device", args.device]
    if args.gpus_per_trial:
        cmd += ["--gpus-per-trial", f"{args.gpus_per_trial:g}", "--cpus-per-trial", "1"]
    else:
        cmd += ["--cpus-per-trial", f"{args.slots / concurrent:g}"]
    for key, value in (("data.train_subset", args.train_subset), ("data.test_subset", args.test_subset)):
        if value:
            cmd += ["--set", f"{key}={value}"]
    return cmd + sum((["--set", s] for s in args.set), [])


def defense_seconds(rows: list[dict]) -> float:
    """Training time of the run: a pack's members carry their pack's time, counted once."""
    packs = {r.get("pack_id") or r["trial_id"]: r.get("time_defense_s") or 0.0 for r in rows}
    return sum(packs.values())


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="npz:~/.cache/nba_scale/cifar10_jpeg.npz")
    p.add_argument("--attack", default="badnets")
    p.add_argument("--packs", type=int, nargs="+", default=[1, 4, 8, 16])
    p.add_argument("--num-samples", type=int, default=16)
    p.add_argument("--train-subset", type=int, default=10000)
    p.add_argument("--test-subset", type=int, default=2000)
    p.add_argument("--slots", type=int, default=os.cpu_count() or 1, help="CPUs (or GPU trials) to fill")
    p.add_argument("--gpus-per-trial", type=float, default=0.0)
    p.add_argument("--device", default="auto")
    p.add_argument("--set", action="append", default=[], help="extra --set for every run")
    p.add_argument("--results", default=None, help="where the runs' rows go (default: a temp folder)")
    p.add_argument("--json", default=None)
    args = p.parse_args()
    results = Path(args.results or tempfile.mkdtemp(prefix="nba_bench_sweep_"))
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}

    # The artifacts first, outside the timed runs: a 1-trial sweep builds (or finds) them.
    warm = tune_args(args, results, "warmup", 1, 1)
    warm[warm.index("--num-samples") + 1] = "1"
    print("artifacts (built once, cached for every run):", " ".join(warm), flush=True)
    if subprocess.run(warm, cwd=REPO, env=env).returncode:
        return 1

    figures = []
    for k in args.packs:
        packs = math.ceil(args.num_samples / k)
        cmd = tune_args(args, results, f"pack{k}", k, packs)
        print(f"\n== K = {k}: {' '.join(cmd)}", flush=True)
        t0 = time.time()
        rc = subprocess.run(cmd, cwd=REPO, env=env).returncode
        wall = time.time() - t0
        rows = read_table(results / f"pack{k}").to_pylist() if (results / f"pack{k}").is_dir() else []
        ok = [r for r in rows if r.get("status") == "ok"]
        asr, ba = [r["asr"] for r in ok], [r["ba"] for r in ok]
        front = [(a, b) for a, b, keep in zip(asr, ba, pareto_mask(asr, ba)) if keep]
        figures.append({"pack": k, "packs": packs, "rc": rc, "wall_s": round(wall, 1), "rows": len(rows),
                        "ok": len(ok), "trials_per_hour": round(len(ok) / wall * 3600, 1),
                        "defense_s_per_trial": round(defense_seconds(rows) / max(1, len(rows)), 2),
                        "hypervolume": round(hypervolume(asr, ba), 4), "front": sorted(front)})
        print(json.dumps(figures[-1]), flush=True)

    base = next((f["trials_per_hour"] for f in figures if f["pack"] == 1), None)
    print(f"\n{args.num_samples} NBA trials, {args.attack}, --preset quick, {args.dataset}, "
          f"train subset {args.train_subset}, slots {args.slots}, device {args.device}\n")
    print("| K | packs | wall (s) | rows ok | trials/hour | vs K=1 | defense s/trial | hypervolume |")
    print("|---|---|---|---|---|---|---|---|")
    for f in figures:
        ratio = f"{f['trials_per_hour'] / base:.2f}x" if base else "-"
        print(f"| {f['pack']} | {f['packs']} | {f['wall_s']:.0f} | {f['ok']}/{args.num_samples} | "
              f"{f['trials_per_hour']:.0f} | {ratio} | {f['defense_s_per_trial']:.1f} | {f['hypervolume']:.4f} |")
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "runs": figures}, indent=1))
    return 0 if all(f["rc"] == 0 for f in figures) else 1


if __name__ == "__main__":
    sys.exit(main())
