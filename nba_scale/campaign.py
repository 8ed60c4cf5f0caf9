"""The NBA paper's experiments as campaigns: one command each, run as Ray Tune trials.

    python -m nba_scale.campaign --list
    python -m nba_scale.campaign table2 --dataset synthetic --preset smoke --seeds 0
    python -m nba_scale.campaign table2 --dataset npz:~/.cache/nba_scale/cifar10_jpeg.npz --preset quick \\
        --seeds 0 1 2 --set data.train_subset=10000 --set data.test_subset=2000
    python -m nba_scale.campaign clean-fraction --only attack=badnets,blend --address auto --gpus-per-trial 0.25
    python -m nba_scale.campaign table2 ... --resume        # after an interruption: finished cells are kept
    python -m nba_scale.report nba_results --out report/

A campaign is a grid (search_spaces/campaigns/NAME.yaml, see nba_scale/campaign_grid.py) of
cells, each one trial of `run_trial` through the same trainable, artifact cache and Parquet sink
as a sweep (rows in `--results DIR/NAME/`, trial id = cell id). Before running it prints the plan:
cells, those already finished, and an estimate from the per-trial times measured in DIR's earlier
rows. On this machine the backdoored models and teachers are built first with every core; on a
cluster (`--address`) the first trial that needs one builds it and the others wait on its lock.

Resume: a cell is finished when its row says status ok. `--resume` runs every other cell again
from its start (an interrupted cell loses at most one trial's work; failed cells are retried).
Without `--resume`, an existing campaign directory is refused rather than silently mixed.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Optional

from .campaign_grid import Campaign, Cell, cell_config, list_campaigns, load_campaign
from .config import ConfigError, parse_set

log = logging.getLogger("nba_scale")


def parse_only(items: list[str]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for item in items:
        key, sep, values = item.partition("=")
        if not sep or not values:
            raise ConfigError(f"--only {item!r}: expected AXIS=V1,V2 (e.g. attack=badnets,blend)")
        out[key.strip()] = [v for v in values.split(",") if v]
    return out


def finished_cells(root: Path) -> dict[str, dict]:
    from .results_store import read_table

    if not root.exists():
        return {}
    return {r["trial_id"]: r for r in read_table(root).to_pylist() if r.get("status") == "ok"}


def estimate_s(todo: list[Cell], results: Path, dataset: str, concurrency: int) -> Optional[float]:
    """Seconds for `todo` from the mean wall time of earlier ok rows (same dataset, per defense)
    anywhere under `results`; None when some defense was never measured there."""
    from .results_store import read_table

    if not results.exists():
        return None
    walls: dict[str, list[float]] = {}
    for r in read_table(results).to_pylist():
        if r.get("status") == "ok" and r.get("dataset_spec") == dataset and r.get("wall_s"):
            walls.setdefault(r["defense"], []).append(float(r["wall_s"]))
    if any(c.defense not in walls for c in todo):
        return None
    return sum(statistics.fmean(walls[c.defense]) for c in todo) / max(1, concurrency)


def write_manifest(root: Path, camp: Campaign, args: argparse.Namespace, argv: list[str]) -> None:
    """DIR/NAME/campaign.json: the grid and every command that added rows (the report cites them)."""
    from .checkpoints import atomic_write_json

    path = root / "campaign.json"
    old = json.loads(path.read_text()) if path.exists() else {}
    cmd = "python -m nba_scale.campaign " + " ".join(_quote(a) for a in argv)
    commands = [c for c in old.get("commands", []) if c != cmd] + [cmd]
    atomic_write_json(path, {"campaign": camp.name, "file": camp.path, "title": camp.title, "paper": camp.paper,
                             "report": camp.report, "published": camp.published, "dataset": args.dataset,
                             "preset": args.preset, "seeds": args.seeds, "set": args.set, "commands": commands})


def check_same_settings(root: Path, args: argparse.Namespace) -> None:
    """A cell id names attack, defense, clean fraction, variant and seed, not the dataset or the
    --set overrides: resuming under other settings would mix two configurations in one table."""
    path = root / "campaign.json"
    if not path.exists():
        return
    old = json.loads(path.read_text())
    for key, now in (("dataset", args.dataset), ("preset", args.preset), ("set", args.set)):
        was = old.get(key)
        if key == "set":
            was, now = sorted(was or []), sorted(now or [])
        if was != now:
            raise ConfigError(f"{root} was run with {key} {was!r}, not {now!r}: --resume must keep the dataset, "
                              f"preset and --set of its finished cells (or use --name-suffix for a new campaign)")


def _quote(a: str) -> str:
    return a if a and all(ch.isalnum() or ch in "-_=.,:/~+" for ch in a) else json.dumps(a)


class CampaignProgress:
    """A line per finished cell: counts, the cell's ASR/BA, and an ETA from the cells so far."""

    def __init__(self, name: str, total: int, concurrency: int):
        import ray.tune as tune

        self.name, self.total, self.concurrency = name, total, concurrency
        self.done, self.failed, self.t0 = 0, 0, time.time()
        outer = self

        class _CB(tune.Callback):
            def on_trial_complete(self, iteration, trials, trial, **info):
                outer.finished(trial.config["cell"]["id"], trial.last_result or {})

            def on_trial_error(self, iteration, trials, trial, **info):
                outer.finished(trial.config["cell"]["id"], {"status": "failed", "error": "trial process died"})

        self.callback = _CB()

    def finished(self, cell_id: str, r: dict) -> None:
        self.done += 1
        ok = r.get("status") == "ok"
        self.failed += not ok
        elapsed = time.time() - self.t0
        eta = elapsed / self.done * (self.total - self.done)
        what = f"ASR {r['asr']:.1%} BA {r['ba']:.1%}" if ok else f"FAILED {r.get('error')}"
        print(f"[{self.name}] {self.done}/{self.total} cells ({self.failed} failed), {elapsed / 60:.1f} min, "
              f"ETA {eta / 60:.1f} min | {cell_id}: {what}", flush=True)


def cell_trainable(config: dict[str, Any]) -> None:
    """One cell as a Tune trial: the sweep trainable with the cell's whole config as its base."""
    from .tune_trainable import trainable

    trainable({**{k: v for k, v in config.items() if k != "cell"}, "__base__": config["cell"]["config"],
               "__default__": {}, "__cell__": config["cell"]["id"]})


def run_cells(name: str, root: Path, todo: list[tuple[Cell, dict]], resources: dict[str, float],
              concurrency: int) -> None:
    import ray.tune as tune

    from .results_store import write_row
    from .tune import _row_fields

    class Sink(tune.Callback):
        def on_trial_complete(self, iteration, trials, trial, **info):
            r, cell = dict(trial.last_result or {}), trial.config["cell"]
            if r.get("final"):
                write_row(root, {**_row_fields(r), **cell["row"]})

        def on_trial_error(self, iteration, trials, trial, **info):
            cell = trial.config["cell"]
            cfg = cell["config"]
            write_row(root, {"dataset": cfg.get("dataset"), "attack": cfg["attack"], "defense": cfg["defense"],
                             "clean_fraction": cfg["clean_fraction"], "seed": cfg["seed"], "status": "failed",
                             "error": f"trial process died: {trial.error_file or 'no error file'}", **cell["row"]})

    resources = dict(resources)
    workers = int(resources.pop("workers", 1))
    consts: dict[str, Any] = {"__workers__": workers}
    storage = (root / "_tune").resolve()
    if workers > 1:
        consts.update({"__cpus__": resources["cpu"], "__gpus__": resources["gpu"],
                       "__train_storage__": str(storage / "_train")})
        resources = {"cpu": 0.01}
    cells = [{"id": c.id, "config": cfg,
              "row": {"sweep": name, "campaign": name, "study": f"{c.attack}-cf{c.clean_fraction:g}",
                      "trial_id": c.id, "variant": c.variant, "seed": c.seed,
                      "is_default": c.variant in ("default", "cfg0"),
                      "variant_overrides": json.dumps(dict(c.overrides), sort_keys=True)}}
             for c, cfg in todo]
    progress = CampaignProgress(name, len(cells), concurrency)
    run = f"run-{time.strftime('%Y%m%d-%H%M%S')}"  # a fresh Tune experiment per invocation
    tuner = tune.Tuner(
        tune.with_resources(cell_trainable, resources),
        param_space={**consts, "cell": tune.grid_search(cells)},
        tune_config=tune.TuneConfig(reuse_actors=True, max_concurrent_trials=concurrency),
        run_config=tune.RunConfig(name=run, storage_path=str(storage), verbose=0,
                                  callbacks=[Sink(), progress.callback],
                                  checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
                                  failure_config=tune.FailureConfig(max_failures=0)))
    tuner.fit()


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m nba_scale.campaign", description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("name", nargs="?", help="a campaign (see --list) or a campaign YAML path")
    p.add_argument("--list", action="store_true", help="print the campaigns and their grids")
    p.add_argument("--dataset", default="cifar10")
    p.add_argument("--seeds", nargs="+", type=int, default=[0])
    p.add_argument("--preset", default="quick", help="smoke | quick | paper (trial budgets)")
    p.add_argument("--only", action="append", default=[], metavar="AXIS=V1,V2",
                   help="restrict an axis (attack, defense, clean_fraction, variant)")
    p.add_argument("--results", default="nba_results")
    p.add_argument("--name-suffix", default="", help="results go to DIR/<campaign><suffix>")
    p.add_argument("--resume", action="store_true")
    p.add_argument("--dry-run", action="store_true", help="print the plan and stop")
    p.add_argument("--address", default=None, help="Ray cluster (auto, ray://host:10001); default: start Ray here")
    p.add_argument("--cpus-per-trial", type=float, default=1.0)
    p.add_argument("--gpus-per-trial", type=float, default=0.0, help="a fraction (0.25) shares a GPU")
    p.add_argument("--workers-per-trial", type=int, default=None)
    p.add_argument("--max-concurrent", type=int, default=None, help="default: what the resources allow")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override for every cell")
    p.add_argument("--cache-dir", default=None)
    p.add_argument("--data-dir", default=None)
    p.add_argument("--device", default=None)
    return p


def main(argv: Optional[list[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    try:
        return _main(args, argv)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


def _main(args: argparse.Namespace, argv: list[str]) -> int:
    import math

    if args.list:
        for n in list_campaigns():
            c = load_campaign(n)
            print(f"{n:16s} {c.paper:14s} {len(c.cells([0]))} cells per seed: {len(c.attacks)} attacks x "
                  f"{len(c.defenses)} defenses x {len(c.clean_fractions)} clean fractions x "
                  f"{len(c.variants)} variants  - {c.title}")
        return 0
    if not args.name:
        raise ConfigError("name a campaign (python -m nba_scale.campaign --list shows them)")
    camp = load_campaign(args.name)
    cells = camp.cells(args.seeds, parse_only(args.only))
    base: dict[str, Any] = {"dataset": args.dataset}
    for key, value in (("device", args.device), ("data.data_dir", args.data_dir)):
        if value is not None:
            base[key] = value
    from .artifacts import default_cache_dir

    base["cache_dir"] = args.cache_dir or str(default_cache_dir())  # every trial shares one cache
    user_set = parse_set(args.set)
    from .trial import parse_config

    configs = [(c, cell_config(camp, c, base, user_set, args.preset)) for c in cells]
    for c, cfg in configs:
        try:
            parse_config(cfg)
        except ConfigError as e:
            raise ConfigError(f"cell {c.id}: {e}") from None
    root = Path(args.results) / f"{camp.name}{args.name_suffix}"
    done = finished_cells(root)
    if root.exists() and any(root.iterdir()) and not args.resume and not args.dry_run:
        raise ConfigError(f"{root} already holds campaign results; pass --resume to finish it "
                          f"(finished cells are kept) or --name-suffix to start another")
    if args.resume:
        check_same_settings(root, args)
    todo = [(c, cfg) for c, cfg in configs if c.id not in done]
    workers = args.workers_per_trial or max(1, math.ceil(args.gpus_per_trial))
    cpus = os.cpu_count() or 1
    concurrency = args.max_concurrent or (max(1, int(cpus // args.cpus_per_trial)) if args.address is None
                                          and not args.gpus_per_trial else 64)
    est = estimate_s([c for c, _ in todo], Path(args.results), args.dataset, concurrency)
    print(f"campaign {camp.name} ({camp.paper or 'beyond the paper'}): {camp.title}\n"
          f"  grid: {len(camp.attacks)} attacks x {len(camp.defenses)} defenses x {len(camp.clean_fractions)} "
          f"clean fractions x {len(camp.variants)} variants x {len(args.seeds)} seeds"
          f"{' restricted by --only ' + ' '.join(args.only) if args.only else ''} -> {len(cells)} cells\n"
          f"  finished already: {len(cells) - len(todo)}; to run: {len(todo)} trials, up to {concurrency} at a time\n"
          f"  estimate: {'%.1f min (from earlier rows in %s)' % (est / 60, args.results) if est is not None else 'unknown (no earlier rows for these defenses on this dataset); ETA after the first cells'}\n"
          f"  results: {root}", flush=True)
    if args.dry_run or not todo:
        if not todo:
            print(f"nothing to run; report: python -m nba_scale.report {root} --out report/")
        return 0
    from .data import load_dataset

    first = parse_config(todo[0][1])
    load_dataset(first.dataset, first.data, first.seed)  # offline without the files: one line, now
    root.mkdir(parents=True, exist_ok=True)
    write_manifest(root, camp, args, argv)

    import ray

    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")  # per-epoch checkpoints
    t0 = time.time()
    ray.init(address=args.address, include_dashboard=False, configure_logging=False, log_to_driver=False,
             ignore_reinit_error=True)
    if args.address is None:
        prebuild(camp.name, todo)
    run_cells(camp.name, root, todo, {"cpu": args.cpus_per_trial, "gpu": args.gpus_per_trial, "workers": workers},
              concurrency)
    rows = finished_cells(root)
    missing = [c.id for c in cells if c.id not in rows]
    print(f"campaign {camp.name}: {len(cells) - len(missing)}/{len(cells)} cells ok in {time.time() - t0:.0f}s"
          + (f"; not ok: {', '.join(missing[:8])}{' ...' if len(missing) > 8 else ''} (--resume retries them)"
             if missing else ""), flush=True)
    print(f"report: python -m nba_scale.report {root} --out report/", flush=True)
    return 0 if not missing else 1


def prebuild(name: str, todo: list[tuple[Cell, dict]]) -> None:
    """Backdoored models and teachers, once each, here with every core, before the trials start
    (otherwise the first trials build them on one core each while the others wait on the lock)."""
    from .trial import prepare_artifacts

    groups: dict[str, dict] = {}
    for c, cfg in todo:
        key = json.dumps({k: v for k, v in cfg.items() if k not in ("defense", c.defense)}, sort_keys=True, default=str)
        groups.setdefault(key, {**{k: v for k, v in cfg.items() if k != c.defense}, "defense": "nba"})
    for i, cfg in enumerate(groups.values(), 1):
        t0 = time.time()
        print(f"[{name}] artifacts {i}/{len(groups)}: {cfg['attack']} cf {cfg['clean_fraction']:g} seed {cfg['seed']} "
              f"(building or loading from the cache) ...", flush=True)
        got = prepare_artifacts(cfg)
        if got["status"] != "ok":
            raise ConfigError(f"[{name}] could not build the artifacts of {cfg['attack']}: {got['error']}")
        print(f"[{name}]   ready in {time.time() - t0:.0f}s: backdoored BA {got['ba_before']:.1%}, "
              f"ASR {got['asr_before']:.1%}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
