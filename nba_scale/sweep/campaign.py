"""The NBA paper's experiments as campaigns: one command each, run as Ray Tune trials.

    python -m nba_scale.campaign --list
    python -m nba_scale.campaign table2 --dataset synthetic --preset smoke --seeds 0
    python -m nba_scale.campaign table2 --dataset npz:~/.cache/nba_scale/cifar10_jpeg.npz --preset quick \\
        --seeds 0 1 2 --set data.train_subset=10000 --set data.test_subset=2000
    python -m nba_scale.campaign clean-fraction --only attack=badnets,blend --address auto --gpus-per-trial 0.25
    python -m nba_scale.campaign table2 ... --resume        # after an interruption: finished cells are kept
    python -m nba_scale.report nba_results --out report/

A campaign is a grid (search_spaces/campaigns/NAME.yaml, see nba_scale/sweep/grid.py) of
cells, each one trial of `run_trial` through the same trainable, artifact cache and Parquet sink
as a sweep (rows in `--results DIR/NAME/`, trial id = cell id; `nba_scale.compare` runs the
`table2` grid the same way, one cell after the other in this process, without Ray). Before running it prints the plan:
cells, those already finished, and an estimate from the per-trial times measured in DIR's earlier
rows; the same times start the longest cells first. On this machine the backdoored models and
teachers are built first with every core; on a cluster (`--address`) Ray tasks build them, a
whole GPU each, before the cells start.

Resume: a cell is finished when its row says status ok. `--resume` runs every other cell again
from its start (an interrupted cell loses at most one trial's work; failed cells are retried).
Without `--resume`, an existing campaign directory is refused rather than silently mixed.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Optional

from .. import cli
from ..config import ConfigError
from .grid import Campaign, Cell, cell_config, cell_row, list_campaigns, load_campaign


def parse_only(items: list[str]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for item in items:
        key, sep, values = item.partition("=")
        if not sep or not values:
            raise ConfigError(f"--only {item!r}: expected AXIS=V1,V2 (e.g. attack=badnets,blend)")
        out[key.strip()] = [v for v in values.split(",") if v]
    return out


def finished_cells(root: Path) -> dict[str, dict]:
    from .store import read_table

    if not root.exists():
        return {}
    return {r["trial_id"]: r for r in read_table(root).to_pylist() if r.get("status") == "ok"}


def mean_walls(results: Path, dataset: str) -> dict[str, float]:
    """Mean wall time per defense of the earlier ok rows on `dataset` anywhere under `results`."""
    from .store import read_table

    walls: dict[str, list[float]] = {}
    if results.exists():
        for r in read_table(results).to_pylist():
            if r.get("status") == "ok" and r.get("dataset_spec") == dataset and r.get("wall_s"):
                walls.setdefault(r["defense"], []).append(float(r["wall_s"]))
    return {d: statistics.fmean(w) for d, w in walls.items()}


def estimate_s(todo: list[Cell], walls: dict[str, float], concurrency: int) -> Optional[float]:
    """Seconds for `todo` from `mean_walls`, list-scheduled longest first on `concurrency` workers
    as the campaign runs them (so one long cell is never split across workers); None when some
    defense was never measured."""
    if any(c.defense not in walls for c in todo):
        return None
    loads = [0.0] * max(1, concurrency)
    for wall in sorted((walls[c.defense] for c in todo), reverse=True):
        loads[loads.index(min(loads))] += wall
    return max(loads)


def longest_first(todo: list[tuple[Cell, dict]], walls: dict[str, float]) -> list[tuple[Cell, dict]]:
    """The cells in decreasing expected wall time, a defense never measured counting as longest.
    Started in grid order, a campaign ends with its slowest cells (NBA's, 4-5x the others) running
    alone while the other workers idle; started first, the short cells fill in around them."""
    return sorted(todo, key=lambda t: -walls.get(t[0].defense, math.inf))  # stable: grid order otherwise


def _quote(a: str) -> str:
    return a if a and all(ch.isalnum() or ch in "-_=.,:/~+" for ch in a) else json.dumps(a)


@dataclasses.dataclass
class Plan:
    """A campaign's cells with their checked trial configs, where its rows go, and what is left."""
    camp: Campaign
    root: Path
    configs: list[tuple[Cell, dict[str, Any]]]
    done: dict[str, dict]

    @property
    def todo(self) -> list[tuple[Cell, dict[str, Any]]]:
        return [(c, cfg) for c, cfg in self.configs if c.id not in self.done]

    @classmethod
    def make(cls, camp: Campaign, cells: list[Cell], args: argparse.Namespace, root: Path) -> "Plan":
        base, sets = cli.base_config(args, shared_cache=True), cli.user_set(args)
        configs = [(c, cell_config(camp, c, base, sets, args.preset)) for c in cells]
        cli.check_run([cfg for _, cfg in configs], sets, label=lambda i: f"cell {configs[i][0].id}: ")
        return cls(camp, root, configs, finished_cells(root))

    def check_settings(self, args: argparse.Namespace) -> None:
        """A cell id names attack, defense, clean fraction, variant and seed, not the dataset or the
        --set overrides: adding cells under other settings would mix two configurations in one table."""
        path = self.root / "campaign.json"
        if not path.exists():
            return
        old = json.loads(path.read_text())
        for key, now in (("dataset", args.dataset), ("preset", args.preset), ("set", args.set)):
            was = old.get(key)
            if key == "set":
                was, now = sorted(was or []), sorted(now or [])
            if was != now:
                raise ConfigError(f"{self.root} was run with {key} {was!r}, not {now!r}: --resume must keep the "
                                  f"dataset, preset and --set of its finished cells (or use another --name/--name-suffix)")

    def write_manifest(self, args: argparse.Namespace, command: str) -> None:
        """DIR/NAME/campaign.json: the grid and every command that added rows (the report cites them)."""
        from ..atomic import write_json

        path, camp = self.root / "campaign.json", self.camp
        old = json.loads(path.read_text()) if path.exists() else {}
        commands = [c for c in old.get("commands", []) if c != command] + [command]
        write_json(path, {"campaign": camp.name, "file": camp.path, "title": camp.title, "paper": camp.paper,
                          "report": camp.report, "published": camp.published, "dataset": args.dataset,
                          "preset": args.preset, "seeds": sorted(set(old.get("seeds", [])) | set(args.seeds)),
                          "set": args.set, "clean_images": list(dict.fromkeys(
                              (old.get("clean_images") or []) + list(getattr(args, "clean_images", None) or []))),
                          "commands": commands})


def command_line(prog: str, argv: list[str]) -> str:
    return f"python -m {prog} " + " ".join(_quote(a) for a in argv)


def packs_of(cells: list[dict[str, Any]], size: int) -> list[list[dict[str, Any]]]:
    """Cells that differ only in their defense's parameters (variants of one defense against one
    backdoored model, teacher, clean subset and seed), `size` at a time, when the defense packs."""
    from ..config import nest
    from ..defenses import get_defense

    groups: dict[str, list[dict[str, Any]]] = {}
    for cell in cells:
        cfg = nest(cell["config"])
        defense = cfg.get("defense", "nba")
        alone = size <= 1 or not get_defense(defense).packable
        key = cell["id"] if alone else json.dumps({k: v for k, v in cfg.items() if k != defense}, sort_keys=True,
                                                  default=str)
        groups.setdefault(key, []).append(cell)
    return [g[i:i + size] for g in groups.values() for i in range(0, len(g), max(1, size))]


def run_cells(name: str, root: Path, cells: list[dict[str, Any]], shape, concurrency: int, pack: int = 1,
              tune_dir: Optional[Path] = None, sweep: Optional[str] = None, loggers: Optional[list] = None) -> None:
    """Fixed trials, each a cell {"id", "config" (the whole trial config), "row" (its row's
    identity)}, as one Tune run (`tune_dir`, default DIR/NAME/_tune): a campaign's, or a sweep's
    confirmation stage (sweep/confirm.py). Tune's param space enumerates the trials' indices
    alone; the cells travel in the run's plan (sweep/plan.py)."""
    import ray.tune as tune

    from .execution import ParquetSink, Progress, run_config, run_name
    from .plan import CAMPAIGN, CONFIRM, NO_CHECKPOINTS, RunPlan
    from .trainable import trainable

    tune_dir = (tune_dir or root / "_tune").resolve()
    units = packs_of(cells, pack)
    if len(units) < len(cells):
        print(f"[{name}] {len(cells)} cells in {len(units)} trials (packs of up to {pack})", flush=True)
    # a campaign resumes by cell, from its rows: no epoch checkpoint to pay for
    plan = RunPlan(sweep or name, CONFIRM if sweep else CAMPAIGN, units=units, checkpoints=NO_CHECKPOINTS,
                   **shape.plan_fields(tune_dir))
    callbacks = [ParquetSink(root, plan), Progress(name, len(units), lambda t: plan.label(t.trial_id, t.config)),
                 *(loggers or [])]
    tuner = tune.Tuner(
        tune.with_resources(tune.with_parameters(trainable, plan=plan), shape.resources()),
        param_space={"unit": tune.grid_search(list(range(len(units))))},
        tune_config=tune.TuneConfig(reuse_actors=True, max_concurrent_trials=concurrency),
        # a cell whose process died restarts (--max-failures), from the start
        run_config=run_config(run_name(), tune_dir, callbacks, retries=shape.retries))
    tuner.fit()


def build_parser() -> argparse.ArgumentParser:
    p = cli.parser("python -m nba_scale.campaign", __doc__)
    p.add_argument("name", nargs="?", help="a campaign (see --list) or a campaign YAML path")
    p.add_argument("--list", action="store_true", help="print the campaigns and their grids")
    cli.add_trial_flags(p, dataset="cifar10", preset="quick", seeds=True)
    cli.add_sweep_flags(p)
    p.add_argument("--only", action="append", default=[], metavar="AXIS=V1,V2",
                   help="restrict an axis (attack, defense, clean_fraction, variant)")
    p.add_argument("--clean-images", nargs="+", type=cli.clean_count, default=None,
                   help=cli.CLEAN_IMAGES_HELP + "; replaces the campaign's clean fractions (so does the preset's "
                        "clean set: cpu-paper's 'paper')")
    p.add_argument("--name-suffix", default="", help="results go to DIR/<campaign><suffix>")
    p.add_argument("--dry-run", action="store_true", help="print the plan and stop")
    cli.add_config_flags(p)
    return p


def list_all() -> None:
    for n in list_campaigns():
        c = load_campaign(n)
        print(f"{n:16s} {c.paper:14s} {len(c.cells([0]))} cells per seed: {len(c.attacks)} attacks x "
              f"{len(c.defenses)} defenses x {len(c.clean_fractions)} clean fractions x "
              f"{len(c.variants)} variants  - {c.title}")


def run(args: argparse.Namespace) -> int:
    if args.list:
        list_all()
        return 0
    if not args.name:
        raise ConfigError("name a campaign (python -m nba_scale.campaign --list shows them)")
    from .execution import Shape

    shape = Shape.from_args(args)
    camp = load_campaign(args.name)
    if args.list_keys:
        cli.print_keys(camp.attacks, camp.defenses)
        return 0
    fractions = cli.clean_axis(args, None, camp.clean_fractions)
    if fractions != camp.clean_fractions:
        print(f"{camp.name}: clean fractions {', '.join(f'{f:g}' for f in fractions)} in place of the campaign's "
              f"{', '.join(f'{f:g}' for f in camp.clean_fractions)}", flush=True)
        camp = dataclasses.replace(camp, clean_fractions=fractions)
    cells = camp.cells(args.seeds, parse_only(args.only))
    plan = Plan.make(camp, cells, args, Path(args.results) / f"{camp.name}{args.name_suffix}")
    if args.print_config:
        cli.print_configs([(c.id, cfg) for c, cfg in plan.configs])
        return 0
    root, todo = plan.root, plan.todo
    started = root.is_dir() and any(not p.name.startswith(".") for p in root.iterdir())
    if started and not args.resume and not args.dry_run:
        raise ConfigError(f"{root} already holds campaign results; pass --resume to finish it "
                          f"(finished cells are kept) or --name-suffix to start another")
    if args.resume and not started:
        raise ConfigError(f"--resume: there is no campaign {root.name!r} in {args.results} to continue; "
                          f"check --results and --name-suffix, or drop --resume to start it")
    if args.resume:
        plan.check_settings(args)
    cpus = os.cpu_count() or 1
    concurrency = args.max_concurrent or (max(1, int(cpus // args.cpus_per_trial)) if args.address is None
                                          and not shape.gpus else 64)
    walls = mean_walls(Path(args.results), args.dataset)
    todo = longest_first(todo, walls)
    if args.pack > 1 and args.pack_mode == "stacked":  # refused before any model is built
        from ..spec import check_stacked_packs

        check_stacked_packs([[u["config"] for u in unit]
                             for unit in packs_of([{"id": c.id, "config": cfg} for c, cfg in todo], args.pack)])
    est = estimate_s([c for c, _ in todo], walls, concurrency)
    print(f"campaign {camp.name} ({camp.paper or 'beyond the paper'}): {camp.title}\n"
          f"  grid: {len(camp.attacks)} attacks x {len(camp.defenses)} defenses x {len(camp.clean_fractions)} "
          f"clean fractions x {len(camp.variants)} variants x {len(args.seeds)} seeds"
          f"{' restricted by --only ' + ' '.join(args.only) if args.only else ''} -> {len(cells)} cells\n"
          f"  finished already: {len(cells) - len(todo)}; to run: {len(todo)} trials, up to {concurrency} at a time\n"
          f"  estimate: {'%.1f min of trials (from earlier rows in %s; models not yet cached are built before)' % (est / 60, args.results) if est is not None else 'unknown (no earlier rows for these defenses on this dataset); ETA after the first cells'}\n"
          f"  results: {root}", flush=True)
    if args.dry_run or not todo:
        if not todo:
            print(f"nothing to run; report: python -m nba_scale.report {root} --out report/")
        return 0
    from .execution import logger_callbacks, prebuild, start_ray, weak_backdoors
    from .store import compact, driver_lock
    from .tune import MIN_BACKDOOR_ASR

    t0 = time.time()
    with driver_lock(root):
        plan.write_manifest(args, command_line("nba_scale.campaign", args.argv))
        start_ray(args.address)
        weak = weak_backdoors(prebuild(camp.name, [cfg for _, cfg in todo], args.address, shape.gpus), MIN_BACKDOOR_ASR)
        if weak:  # a campaign keeps its grid: said here, and the report's claims leave such attacks out
            print(f"[{camp.name}] note: the backdoored model of {', '.join(weak)} is under {MIN_BACKDOOR_ASR:.0%} ASR: "
                  f"its cells run, but there is little backdoor for their defenses to remove", flush=True)
        run_cells(camp.name, root, [{"id": c.id, "config": cfg, "row": cell_row(camp.name, c)} for c, cfg in todo],
                  shape, concurrency, args.pack, loggers=logger_callbacks(args.callback, root, camp.name))
        compact(root)  # the cells have ended: one file per partition rather than one per row
    rows = finished_cells(root)
    missing = [c.id for c in cells if c.id not in rows]
    print(f"campaign {camp.name}: {len(cells) - len(missing)}/{len(cells)} cells ok in {time.time() - t0:.0f}s"
          + (f"; not ok: {', '.join(missing[:8])}{' ...' if len(missing) > 8 else ''} (--resume retries them)"
             if missing else ""), flush=True)
    print(f"report: python -m nba_scale.report {root} --out report/", flush=True)
    return 0 if not missing else 1


main = cli.entry(build_parser, run)


if __name__ == "__main__":
    sys.exit(main())
