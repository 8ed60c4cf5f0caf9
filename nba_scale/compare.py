"""Every defense, with its defaults, against the same backdoored models: the NBA paper's Table 2.

    python -m nba_scale.compare --dataset synthetic --attack badnets --preset smoke --seeds 0 1
    python -m nba_scale.compare --dataset npz:~/.cache/nba_scale/cifar10_jpeg.npz --attack badnets blend \\
        --set data.train_subset=20000 --set backdoor.epochs=20 --seeds 0 1 2

Per (attack, seed) one backdoored model and one teacher are built (or found in the cache) and
every defense repairs a copy. Rows go to Parquet under `--results DIR/NAME/` like a sweep's (one
file per cell, so a rerun with the same name skips the cells it already has); the table shows
ASR and BA per defense as mean ± std over seeds, with "before" = the backdoored model.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Optional

from .config import ConfigError, merge, nest, parse_set

ORDER = ("ft", "fp", "mcr", "nad", "argd", "nba")


def cell_id(attack: str, defense: str, cf: float, seed: int) -> str:
    return f"{attack}-{defense}-cf{cf:g}-s{seed}"


def mean_std(values: list[float]) -> str:
    if not values:
        return "-"
    m = 100 * statistics.fmean(values)
    return f"{m:.2f}" if len(values) == 1 else f"{m:.2f}±{100 * statistics.stdev(values):.2f}"


def table(rows: list[dict], defenses: list[str]) -> str:
    """Markdown, one line per (attack, clean fraction): ASR / BA for before and each defense."""
    groups = sorted({(r["attack"], r["clean_fraction"]) for r in rows})
    head = ["attack", "clean"] + [f"{d} ASR" for d in ["before", *defenses]] + [f"{d} BA" for d in ["before", *defenses]]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for attack, cf in groups:
        ok = [r for r in rows if r["attack"] == attack and r["clean_fraction"] == cf and r.get("status") == "ok"]
        by = {d: [r for r in ok if r["defense"] == d] for d in defenses}
        seen, before = set(), []
        for r in ok:  # one 'before' per backdoored model (seed), whichever defense row carries it
            if r["seed"] not in seen:
                seen.add(r["seed"])
                before.append(r)
        asr = [mean_std([r["asr_before"] for r in before])] + [mean_std([r["asr"] for r in by[d]]) for d in defenses]
        ba = [mean_std([r["ba_before"] for r in before])] + [mean_std([r["ba"] for r in by[d]]) for d in defenses]
        lines.append("| " + " | ".join([attack, f"{cf:g}", *asr, *ba]) + " |")
    walls = {d: [r["time_defense_s"] for r in rows if r["defense"] == d and r.get("time_defense_s") is not None]
             for d in defenses}
    lines.append("")
    lines.append("defense wall time (s, mean per run): " + ", ".join(
        f"{d} {statistics.fmean(w):.1f}" for d, w in walls.items() if w))
    return "\n".join(lines)


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m nba_scale.compare", description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--dataset", default="synthetic")
    p.add_argument("--attack", nargs="+", default=["badnets"])
    p.add_argument("--defenses", nargs="+", default=["all"], help=f"all = {' '.join(ORDER)}")
    p.add_argument("--clean-fraction", nargs="+", type=float, default=[0.05])
    p.add_argument("--seeds", nargs="+", type=int, default=[0])
    p.add_argument("--preset", default=None, help="smoke | quick | paper")
    p.add_argument("--results", default="nba_results")
    p.add_argument("--name", default=None, help="default: compare_<dataset>")
    p.add_argument("--device", default=None)
    p.add_argument("--cache-dir", default=None)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = p.parse_args(argv)
    try:
        return _main(args)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


def _main(args) -> int:
    from .attacks import get_attack
    from .defenses import get_defense
    from .results_store import partition_value, read_table, trial_row, write_row
    from .trial import parse_config, run_trial, with_preset

    defenses = list(ORDER) if args.defenses == ["all"] else args.defenses
    for d in defenses:
        get_defense(d)
    for a in args.attack:
        get_attack(a)
    name = args.name or f"compare_{partition_value(args.dataset)}"
    root = Path(args.results) / name
    fixed = {"dataset": args.dataset, **({"device": args.device} if args.device else {}),
             **({"cache_dir": args.cache_dir} if args.cache_dir else {})}
    cells = [(a, cf, s, d) for a in args.attack for cf in args.clean_fraction for s in args.seeds for d in defenses]
    done = set()
    if root.exists():
        done = {r["trial_id"] for r in read_table(root).to_pylist() if r.get("status") == "ok"}
    todo = [c for c in cells if cell_id(c[0], c[3], c[1], c[2]) not in done]
    print(f"{name}: {len(cells)} cells ({len(cells) - len(todo)} already in {root})", flush=True)
    for k, (attack, cf, seed, defense) in enumerate(todo, 1):
        cfg = with_preset(merge(nest({**fixed, "attack": attack, "defense": defense, "clean_fraction": cf,
                                      "seed": seed}), parse_set(args.set)), args.preset)
        cfg = {k2: v for k2, v in cfg.items() if k2 not in ORDER or k2 == defense}  # other defenses' sections
        parse_config(cfg)
        t0 = time.time()
        r = run_trial(cfg)
        tid = cell_id(attack, defense, cf, seed)
        write_row(root, {**trial_row(r), "sweep": name, "study": f"{attack}-cf{cf:g}", "trial_id": tid,
                         "started": t0, "finished": time.time()})
        status = "ok" if r["status"] == "ok" else f"FAILED {r['error']}"
        extra = f"ASR {r['asr']:.1%} BA {r['ba']:.1%}" if r["status"] == "ok" else ""
        print(f"[{k}/{len(todo)}] {tid}: {status} {extra} ({time.time() - t0:.0f}s)", flush=True)
    rows = [r for r in read_table(root).to_pylist() if r["trial_id"] in {cell_id(a, d, cf, s) for a, cf, s, d in cells}]
    print(table(rows, defenses))
    print(f"rows in {root} (python -m nba_scale.results {root})")
    return 0 if all(r.get("status") == "ok" for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
