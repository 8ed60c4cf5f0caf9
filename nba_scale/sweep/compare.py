"""Every defense, with its defaults, against the same backdoored models: the NBA paper's Table 2.

    python -m nba_scale.compare --dataset synthetic --attack badnets --preset smoke --seeds 0 1
    python -m nba_scale.compare --dataset npz:~/.cache/nba_scale/cifar10_jpeg.npz --attack badnets blend \\
        --set data.train_subset=20000 --set backdoor.epochs=20 --seeds 0 1 2

The `table2` campaign's grid (search_spaces/campaigns/table2.yaml) with its attacks, defenses and
clean fractions set by the flags, run one cell after the other in this process, without Ray: per
(attack, seed) one backdoored model and one teacher are built (or found in the cache) and every
defense repairs a copy. Rows go to Parquet under `--results DIR/NAME/` like a campaign's (one file
per cell, so a rerun with the same name skips the cells it already has, and refuses other
settings than theirs); the table is the report's (`python -m nba_scale.report DIR/NAME` draws its
figures): ASR / BA per defense, mean over seeds ± its 95 % t interval, "before" = the backdoored model.
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

from .. import cli
from ..config import ConfigError


def build_parser() -> argparse.ArgumentParser:
    p = cli.parser("python -m nba_scale.compare", __doc__)
    cli.add_trial_flags(p, dataset="synthetic", seeds=True)
    p.add_argument("--attack", nargs="+", default=["badnets"])
    p.add_argument("--defenses", nargs="+", default=["all"], help="all = the table2 grid's defenses")
    p.add_argument("--clean-fraction", nargs="+", type=float, default=None, help="default 0.05")
    p.add_argument("--clean-images", nargs="+", type=cli.clean_count, default=None, help=cli.CLEAN_IMAGES_HELP)
    p.add_argument("--results", default="nba_results")
    p.add_argument("--name", default=None, help="default: compare_<dataset>")
    return p


def run(args: argparse.Namespace) -> int:
    from ..attacks import get_attack
    from ..defenses import get_defense
    from ..trial import run_trial
    from .campaign import Plan, command_line
    from .grid import cell_row, load_campaign
    from .store import driver_lock, partition_value, read_table, trial_row, write_row
    from .tables import grouped_tables

    table2 = load_campaign("table2")
    defenses = table2.defenses if args.defenses == ["all"] else args.defenses
    for name in defenses:
        get_defense(name)
    for name in args.attack:
        get_attack(name)
    args.clean_fraction = cli.clean_axis(args, args.clean_fraction, [0.05])
    if not all(0 < cf <= 1 for cf in args.clean_fraction):
        raise ConfigError(f"--clean-fraction {args.clean_fraction}: each must be in (0, 1]")
    camp = dataclasses.replace(table2, attacks=list(args.attack), defenses=list(defenses),
                               clean_fractions=list(args.clean_fraction))
    name = args.name or f"compare_{partition_value(args.dataset)}"
    plan = Plan.make(camp, camp.cells(args.seeds), args, Path(args.results) / name)
    plan.check_settings(args)
    todo = plan.todo
    print(f"{name}: {len(plan.configs)} cells ({len(plan.configs) - len(todo)} already in {plan.root})", flush=True)
    with driver_lock(plan.root):
        plan.write_manifest(args, command_line("nba_scale.compare", args.argv))
        for k, (cell, cfg) in enumerate(todo, 1):
            t0 = time.time()
            r = run_trial(cfg)
            write_row(plan.root, {**trial_row(r), **cell_row(name, cell), "started": t0, "finished": time.time()})
            what = f"ok ASR {r['asr']:.1%} BA {r['ba']:.1%}" if r["status"] == "ok" else f"FAILED {r['error']}"
            print(f"[{k}/{len(todo)}] {cell.id}: {what} ({time.time() - t0:.0f}s)", flush=True)
    ids = {c.id for c, _ in plan.configs}
    rows = [r for r in read_table(plan.root).to_pylist() if r["trial_id"] in ids]
    orders = {"attack": camp.attacks, "defense": camp.defenses}
    print("\n".join(grouped_tables([r for r in rows if r.get("status") == "ok"], "attack", "defense", orders)))
    print(f"rows in {plan.root} (python -m nba_scale.results {plan.root}; "
          f"figures: python -m nba_scale.report {plan.root})")
    return 0 if all(r.get("status") == "ok" for r in rows) else 1


main = cli.entry(build_parser, run)


if __name__ == "__main__":
    sys.exit(main())
