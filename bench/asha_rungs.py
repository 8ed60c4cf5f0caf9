"""Which rung would ASHA have cut well? Replays one finished sweep whose trials scored every epoch.

    python bench/asha_rungs.py RESULTS/NAME [--reduction-factor 3]

Reads the per-epoch reports Ray Tune kept for each trial (`RESULTS/NAME/_tune/*/run-*/*/progress.csv`:
epoch, ba, asr; a sweep run with `--scheduler asha` at a grace period it never reached, or one
from before per-epoch scores became scheduler-only) and the final (ASR, BA) of each trial. For each
epoch e it prints how many of the trials on the final Pareto front the top 1/rf by BA - ASR at e
would keep, beside what ranking by the final BA - ASR would keep (the best any rung on that scalar
could do), and what ranking by Pareto rank at e (non-dominated sorting of (ASR, BA), ties by
BA - ASR, as multi-objective ASHA does) would keep.
"""
from __future__ import annotations

import argparse
import csv
import math
from pathlib import Path

from nba_scale.sweep.store import pareto_mask


def read_runs(folder: Path) -> dict[str, list[dict[str, float]]]:
    runs = {}
    for f in sorted(folder.glob("_tune/*/run-*/*/progress.csv")):
        with f.open() as fh:
            rows = [r for r in csv.DictReader(fh) if r.get("ba") and r.get("asr")]
        if rows:
            runs[f.parent.name] = [{k: float(r[k]) if r[k] not in ("", None) else math.nan for k in ("epoch", "ba", "asr")}
                                   for r in rows]
    return runs


def pareto_ranks(points: dict[str, tuple[float, float]]) -> dict[str, int]:
    """Non-dominated sorting of (ASR, BA) points: 0 for the front, 1 for the front without it, ..."""
    rank, left, r = {}, dict(points), 0
    while left:
        names = list(left)
        for n, keep in zip(names, pareto_mask([left[n][0] for n in names], [left[n][1] for n in names]), strict=True):
            if keep:
                rank[n] = r
                del left[n]
        r += 1
    return rank


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", type=Path, help="RESULTS/NAME of a sweep whose trials scored every epoch")
    p.add_argument("--reduction-factor", type=float, default=3)
    args = p.parse_args()
    runs = read_runs(args.run)
    final = {k: rows[-1] for k, rows in runs.items() if math.isnan(rows[-1]["epoch"])}  # the final report
    if not final:
        raise SystemExit(f"{args.run}: no trial with per-epoch scores and a final report (progress.csv)")
    names = sorted(final)
    front = {n for n, keep in zip(names, pareto_mask([final[n]["asr"] for n in names],
                                                     [final[n]["ba"] for n in names]), strict=True) if keep}
    keep = max(1, round(len(names) / args.reduction_factor))
    ideal = sorted(names, key=lambda n: final[n]["ba"] - final[n]["asr"], reverse=True)[:keep]
    print(f"{len(names)} trials, {len(front)} on the final front; a rung keeps the top {keep} by BA - ASR")
    print(f"ranked by the final BA - ASR: keeps {len(front & set(ideal))} of {len(front)} front trials")
    print("| rung epoch | front trials kept: top by BA - ASR | by Pareto rank, then BA - ASR |")
    print("|---|---|---|")
    epochs = sorted({int(r["epoch"]) for n in names for r in runs[n] if not math.isnan(r["epoch"])})
    for e in epochs:
        at = {n: next(((r["asr"], r["ba"]) for r in runs[n] if r["epoch"] == e), (1.0, 0.0)) for n in names}
        top = sorted(names, key=lambda n: at[n][1] - at[n][0], reverse=True)[:keep]
        rank = pareto_ranks(at)
        nds = sorted(names, key=lambda n: (rank[n], at[n][0] - at[n][1]))[:keep]
        print(f"| {e} | {len(front & set(top))} of {len(front)} | {len(front & set(nds))} of {len(front)} |")

if __name__ == "__main__":
    main()
