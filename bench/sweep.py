"""Trials per hour of one fixed sweep, packed (`tune --pack K`) at several K, in one invocation.

    python bench/sweep.py --dataset npz:~/.cache/nba_scale/cifar10_jpeg.npz [--packs 1 4 8 16]
        [--asha-packs 1 8] [--num-samples 16] [--train-subset 10000] [--test-subset 2000] [--slots 2]
        [--gpus-per-trial 0] [--grace-period 2] [--reduction-factor 3] [--results DIR [--reuse]] [--json FILE]
        [--seed 0] [--confirm N] [--min-backdoor-asr 0]

Each K runs the same sweep through the real driver (`python -m nba_scale.tune`, NBA, BadNets,
`--preset quick`, seed 0, a fresh results folder): `--num-samples` trials in ceil(N/K) packs,
`--slots` packs at once (each gets slots/concurrent CPUs, or `--gpus-per-trial`). The artifacts
(backdoored model, teacher) are built once before the first run and come from the cache in every
run, so the table compares what a sweep pays per trial. Wall time counts everything the user
waits for: Ray's start, loading, training, evaluation, rows. Prints a table of trials/hour, the
ratio to K = 1 and the hypervolume of each run's (ASR, BA) front (so a speed-up that loses the
front is visible); `--json FILE` writes the same figures.

Then, for each K of `--asha-packs`, the same sweep with `--scheduler asha` (`--grace-period`,
default 2 epochs, `--reduction-factor`, default 3) on exactly the points the K = 1 run evaluated (`tune --points`), so that the
table also says how many trials ASHA stopped that ran to the end on the K = 1 run's Pareto front.
`--reuse` takes a run whose folder (under `--results`) already holds its figures instead of
running it again.

`--confirm N` passes `tune --confirm N` to the runs (sweep/confirm.py): after the search, its
validation front and the paper's default run again at seeds --seed + 1 ... + N. The table's
throughput counts the search's rows only (the wall time, everything); tune prints the confirmed
front. A confirmation wants a backdoored model to confirm on: `--seed 1 --min-backdoor-asr 0.5`
on CIFAR-10 BadNets at 10,000 images, whose seed-0 model does not implant.
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

from nba_scale.sweep.search_space import load_search_space
from nba_scale.sweep.store import column_name, hypervolume, is_confirm, pareto_mask, read_table

REPO = Path(__file__).resolve().parent.parent


def points_of(rows: list[dict], space) -> list[dict]:
    return [{p.name: r[column_name(p.name)] for p in space.params} for r in rows]


def key(point: dict) -> str:
    return json.dumps({k: round(float(v), 9) for k, v in point.items()}, sort_keys=True)


def measure(args, results: Path, name: str, cmd: list[str], env: dict, space) -> dict:
    """Run one sweep (or reuse its saved figures) and measure it."""
    saved = results / name / "_bench.json"  # the run's exit code and wall time; the rest is in its rows
    if args.reuse and saved.is_file():
        print(f"\n== {name}: reusing {saved}", flush=True)
        rc, wall = (json.loads(saved.read_text())[k] for k in ("rc", "wall_s"))
    else:
        print(f"\n== {name}: {' '.join(cmd)}", flush=True)
        t0 = time.time()
        rc = subprocess.run(cmd, cwd=REPO, env=env).returncode
        wall = time.time() - t0
        saved.parent.mkdir(parents=True, exist_ok=True)
        saved.write_text(json.dumps({"rc": rc, "wall_s": wall, "cmd": cmd}))
    rows = read_table(results / name).to_pylist() if (results / name).is_dir() else []
    confirmed = [r for r in rows if is_confirm(r)]
    rows = [r for r in rows if not is_confirm(r)]  # the search's (sweep/confirm.py)
    ok = [r for r in rows if r.get("status") == "ok"]
    asr, ba = [r["asr"] for r in ok], [r["ba"] for r in ok]
    front = [p for p, keep in zip(points_of(ok, space), pareto_mask(asr, ba)) if keep]
    fig = {"name": name, "rc": rc, "wall_s": round(wall, 1), "rows": len(rows), "ok": len(ok),
           "stopped": points_of([r for r in rows if r.get("status") == "stopped"], space),
           "epochs_run": sum(r.get("stopped_at_epoch") or r.get("epochs") or 0 for r in rows),
           "trials_per_hour": round(len(rows) / wall * 3600, 1),
           "defense_s_per_trial": round(defense_seconds(rows) / timed(rows), 2),
           "hypervolume": round(hypervolume(asr, ba), 4), "front": front, "points": points_of(rows, space),
           "confirm_rows": len(confirmed)}
    return fig


def tune_args(args, results: Path, name: str, pack: int, packs: int) -> list[str]:
    concurrent = max(1, min(args.slots, packs))
    cmd = [sys.executable, "-m", "nba_scale.tune", "--attack", args.attack, "--dataset", args.dataset,
           "--preset", "quick", "--num-samples", str(args.num_samples), "--pack", str(pack),
           "--results", str(results), "--name", name, "--max-concurrent", str(concurrent), "--seed", str(args.seed),
           "--device", args.device,
           # a throughput measure sweeps whatever model the budget gives by default (CIFAR-10 BadNets at
           # seed 0 and 10,000 images does not implant: docs/ATTACKS.md), which a real sweep would refuse
           "--min-backdoor-asr", f"{args.min_backdoor_asr:g}"]
    if args.confirm:
        cmd += ["--confirm", str(args.confirm)]
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


def timed(rows: list[dict]) -> int:
    """Rows whose trial reported its time (a trial stopped by ASHA writes none)."""
    return max(1, sum(1 for r in rows if r.get("time_defense_s") is not None))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="npz:~/.cache/nba_scale/cifar10_jpeg.npz")
    p.add_argument("--attack", default="badnets")
    p.add_argument("--packs", type=int, nargs="+", default=[1, 4, 8, 16])
    p.add_argument("--asha-packs", type=int, nargs="*", default=[1, 8], help="K of the ASHA runs (none: skip them)")
    p.add_argument("--grace-period", type=int, default=2, help="ASHA runs: epochs every trial runs")
    p.add_argument("--reduction-factor", type=float, default=3, help="ASHA runs: keep 1/rf at each rung")
    p.add_argument("--reuse", action="store_true", help="reuse runs whose folder holds their figures")
    p.add_argument("--num-samples", type=int, default=16)
    p.add_argument("--train-subset", type=int, default=10000)
    p.add_argument("--test-subset", type=int, default=2000)
    p.add_argument("--slots", type=int, default=os.cpu_count() or 1, help="CPUs (or GPU trials) to fill")
    p.add_argument("--gpus-per-trial", type=float, default=0.0)
    p.add_argument("--device", default="auto")
    p.add_argument("--set", action="append", default=[], help="extra --set for every run")
    p.add_argument("--results", default=None, help="where the runs' rows go (default: a temp folder)")
    p.add_argument("--json", default=None)
    p.add_argument("--seed", type=int, default=0, help="the search's seed")
    p.add_argument("--confirm", type=int, default=0, metavar="N", help="tune --confirm N (the search's front at N more seeds)")
    p.add_argument("--min-backdoor-asr", type=float, default=0.0, help="tune --min-backdoor-asr (default 0: sweep anyway)")
    args = p.parse_args()
    results = Path(args.results or tempfile.mkdtemp(prefix="nba_bench_sweep_"))
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}

    # The artifacts first, outside the timed runs: a 1-trial sweep builds (or finds) them.
    warm = tune_args(args, results, "warmup", 1, 1)
    warm[warm.index("--num-samples") + 1] = "1"
    if "--confirm" in warm:  # the search's artifacts only; the confirmation's seeds build theirs in the run
        del warm[warm.index("--confirm"):warm.index("--confirm") + 2]
    if not (args.reuse and (results / "warmup").is_dir()):
        print("artifacts (built once, cached for every run):", " ".join(warm), flush=True)
        if subprocess.run(warm, cwd=REPO, env=env).returncode:
            return 1

    space = load_search_space(REPO / "search_spaces" / "nba.yaml")
    figures = []
    for k in args.packs:
        packs = math.ceil(args.num_samples / k)
        fig = measure(args, results, f"pack{k}", tune_args(args, results, f"pack{k}", k, packs), env, space)
        figures.append({**fig, "pack": k, "packs": packs, "scheduler": "none"})
    full = next((f for f in figures if f["pack"] == 1), None)
    if full and args.asha_packs:
        points = results / "_points.json"
        points.write_text(json.dumps(full["points"]))
        on_front = {key(p) for p in full["front"]}
        for k in args.asha_packs:
            packs = math.ceil(args.num_samples / k)
            name = f"asha_pack{k}"
            cmd = tune_args(args, results, name, k, packs) + [
                "--scheduler", "asha", "--grace-period", str(args.grace_period),
                "--reduction-factor", f"{args.reduction_factor:g}", "--points", str(points)]
            fig = measure(args, results, name, cmd, env, space)
            lost = [p for p in fig["stopped"] if key(p) in on_front]
            figures.append({**fig, "pack": k, "packs": packs, "scheduler": "asha", "front_stopped": len(lost)})

    base = full["trials_per_hour"] if full else None
    base_hv = full["hypervolume"] if full else None
    print(f"\n{args.num_samples} NBA trials, {args.attack}, --preset quick, {args.dataset}, "
          f"train subset {args.train_subset}, slots {args.slots}, device {args.device}\n")
    print("| K | scheduler | wall (s) | rows (ok / stopped) | epochs trained | trials/hour | vs K=1 | "
          "defense s/finished trial | hypervolume | vs K=1 | front trials stopped |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for f in figures:
        ratio = f"{f['trials_per_hour'] / base:.2f}x" if base else "-"
        lost = f"{f['front_stopped']} of {len(full['front'])}" if "front_stopped" in f else "-"
        hv = f"{f['hypervolume'] / base_hv - 1:+.1%}" if base_hv else "-"
        print(f"| {f['pack']} | {f['scheduler']} | {f['wall_s']:.0f} | {f['rows']} ({f['ok']} / {len(f['stopped'])}) | "
              f"{f['epochs_run']} | {f['trials_per_hour']:.0f} | {ratio} | {f['defense_s_per_trial']:.1f} | "
              f"{f['hypervolume']:.4f} | {hv} | {lost} |")
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "runs": figures}, indent=1))
    return 0 if all(f["rc"] == 0 for f in figures) else 1


if __name__ == "__main__":
    sys.exit(main())
