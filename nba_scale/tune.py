"""Multi-objective hyper-parameter search of a defense with Ray Tune + Optuna (ASR down, BA up).

    python -m nba_scale.tune --attack badnets --dataset synthetic --preset quick

    python -m nba_scale.tune --attack badnets blend --clean-fraction 0.05 0.1 --num-samples 32 \\
        --dataset npz:~/.cache/nba_scale/cifar10_jpeg.npz --gpus-per-trial 0.25 --address auto

Each (attack, clean fraction) pair is its own Optuna study and Pareto group. Every study
evaluates the search space's default point (the paper's configuration) first. Rows land in
Parquet under `--results DIR/NAME/` (see nba_scale/results_store.py); `--resume` continues an
interrupted sweep with Ray Tune's own restore (finished trials are kept, interrupted ones go on
from their last epoch checkpoint, the searcher keeps what it learned). Read the results with
`python -m nba_scale.results DIR/NAME --pareto`.

Resources: `--gpus-per-trial 0.25` lets four trials share a GPU; `--gpus-per-trial 2` runs each
trial data-parallel on two GPUs (a Ray Train TorchTrainer around the same Accelerate loop; see
nba_scale/tune_trainable.py); `--workers-per-trial 2` does the same with CPU processes.

Traps in OptunaSearch this module designs around: metric and mode lists go to OptunaSearch, not
TuneConfig; with several objectives it ignores intermediate results, so nothing is pruned; a final
result missing an objective (or NaN) makes the trial silently vanish from the study, so every
trial ends by reporting both objectives, a failed one its worst values (ASR 1, BA 0, and
status/error in the row); the space is a dict of Optuna distributions, not a closure, so the
searcher pickles for restore.
"""
from __future__ import annotations

import argparse
import logging
import math
import os
import re
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Optional

from .config import ConfigError, merge, nest, parse_set
from .tune_trainable import WORST, trainable

log = logging.getLogger("nba_scale")

# Budgets per preset, on top of nba_scale.trial.PRESETS (which sets the trial's own budgets).
TUNE_PRESETS = {
    "smoke": {"num_samples": 3, "max_concurrent": 2},
    "quick": {"num_samples": 8, "max_concurrent": 2},
    "paper": {"num_samples": 64, "max_concurrent": 8},
}
OBJECTIVES = ["asr", "ba"]
MODES = ["min", "max"]


# ---------------------------------------------------------------------------------------------
# driver


def study_id(attack: str, clean_fraction: float) -> str:
    return f"{attack}-cf{clean_fraction:g}"


def default_name(args: argparse.Namespace) -> str:
    ds = re.sub(r"[^A-Za-z0-9]+", "-", Path(args.dataset[4:]).stem if args.dataset.startswith("npz:") else args.dataset)
    cfs = "-".join(f"{c:g}" for c in args.clean_fraction)
    worst = "_worst" if getattr(args, "objective", "") == "worst-case" else ""
    return f"{args.defense}_{ds}_{'-'.join(args.attack)}_cf{cfs}_{args.preset}_s{args.seed}{worst}"


class Progress:
    """One line per change of counts, at most every `every_s` seconds: done/running/failed and the
    current Pareto front; Tune's own per-trial table is switched off."""

    def __init__(self, label: str, total: int, every_s: float = 30.0):
        import ray.tune as tune

        outer = self

        class _CB(tune.Callback):
            def on_step_end(self, iteration, trials, **info):  # a heartbeat while trials train
                outer.maybe_print(trials)

            def on_trial_result(self, iteration, trials, trial, result, **info):
                outer.maybe_print(trials)

            def on_trial_complete(self, iteration, trials, trial, **info):
                outer.maybe_print(trials, force=True)

            def on_trial_error(self, iteration, trials, trial, **info):
                outer.maybe_print(trials, force=True)

        self.callback = _CB()
        self.label, self.total, self.every_s, self.last = label, total, every_s, 0.0

    def maybe_print(self, trials, force: bool = False) -> None:
        now = time.time()
        if not force and now - self.last < self.every_s:
            return
        self.last = now
        from .results_store import pareto_mask

        done = [t for t in trials if t.status == "TERMINATED"]
        failed = sum(1 for t in trials if t.status == "ERROR" or (t.last_result or {}).get("status") == "failed")
        running = sum(1 for t in trials if t.status == "RUNNING")
        pts = [(t.last_result["asr"], t.last_result["ba"]) for t in done if "asr" in (t.last_result or {})]
        front = sorted({p for p, keep in zip(pts, pareto_mask([a for a, _ in pts], [b for _, b in pts])) if keep})
        line = f"[{self.label}] {len(done)}/{self.total} done, {running} running, {failed} failed"
        if front:
            line += "; front: " + ", ".join(f"(ASR {a:.1%}, BA {b:.1%})" for a, b in front[:4])
        print(line, flush=True)


class ParquetSink:
    """Driver-side: writes each finished trial's row (idempotent per trial id) into the sweep."""

    def __init__(self, root: Path, sweep: str, study: str):
        import ray.tune as tune

        from .results_store import write_row

        class _CB(tune.Callback):
            def on_trial_complete(self, iteration, trials, trial, **info):
                r = dict(trial.last_result or {})
                if r.get("final"):
                    write_row(root, {**_row_fields(r), "sweep": sweep, "study": study, "trial_id": trial.trial_id})

            def on_trial_error(self, iteration, trials, trial, **info):
                # The worker died (killed, out of memory): the trainable could not write its row.
                base = trial.config.get("__base__", {})
                err = f"trial process died: {trial.error_file or 'no error file'}"
                write_row(root, {"dataset": base.get("dataset"), "attack": base.get("attack"),
                                 "defense": base.get("defense"), "clean_fraction": base.get("clean_fraction"),
                                 "sweep": sweep, "study": study, "trial_id": trial.trial_id, "status": "failed",
                                 "error": err, **WORST})

        self.callback = _CB()


TUNE_RESULT_KEYS = {"timestamp", "checkpoint_dir_name", "done", "training_iteration", "trial_id", "date",
                    "time_this_iter_s", "time_total_s", "pid", "hostname", "node_ip", "time_since_restore",
                    "iterations_since_restore", "config", "final", "experiment_tag"}


def _row_fields(result: dict) -> dict:
    return {k: v for k, v in result.items() if k not in TUNE_RESULT_KEYS and not k.startswith("config/")}


def make_searcher(space, sampler: str, seed: int):
    import optuna
    from ray.tune.search.optuna import OptunaSearch

    samplers = {"tpe": lambda: optuna.samplers.TPESampler(seed=seed, multivariate=True),
                "nsga2": lambda: optuna.samplers.NSGAIISampler(seed=seed)}
    if sampler not in samplers:
        raise ConfigError(f"unknown sampler {sampler!r}; known: {', '.join(samplers)}")
    return OptunaSearch(space=space.optuna_space(), metric=OBJECTIVES, mode=MODES,
                        points_to_evaluate=[space.default_point()], sampler=samplers[sampler](), seed=seed)


def run_study(base: dict[str, Any], space, *, root: Path, sweep: str, study: str, num_samples: int,
              max_concurrent: int, resources: dict[str, float], sampler: str = "tpe", seed: int = 0,
              resume: bool = False, progress_every_s: float = 30.0, attacks: Optional[list[str]] = None):
    """Run (or resume) one Optuna study as a Ray Tune experiment; returns (ResultGrid, searcher)."""
    import ray.tune as tune
    from ray.tune.search import ConcurrencyLimiter

    storage = (root / "_tune").resolve()
    exp_dir = storage / study
    progress = Progress(f"{study}", num_samples, progress_every_s)
    sink = ParquetSink(root, sweep, study)
    run_config = tune.RunConfig(name=study, storage_path=str(storage), verbose=0,
                                callbacks=[sink.callback, progress.callback],
                                checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
                                failure_config=tune.FailureConfig(max_failures=0))
    resources = dict(resources)
    workers = int(resources.pop("workers", 1))
    consts = {"__base__": base, "__default__": space.default_point(), "__workers__": workers}
    if attacks:
        consts["__attacks__"] = list(attacks)
    if workers > 1:
        # The Tune trial only drives a Ray Train run whose workers hold the CPUs and GPUs; Tune
        # refuses an empty request, so the driver takes a token share of a CPU.
        consts.update({"__cpus__": resources["cpu"], "__gpus__": resources["gpu"],
                       "__train_storage__": str(storage / "_train")})
        resources = {"cpu": 0.01}
    fn = tune.with_resources(trainable, resources)
    if resume and tune.Tuner.can_restore(str(exp_dir)):
        print(f"[{study}] resuming from {exp_dir}", flush=True)
        tuner = tune.Tuner.restore(str(exp_dir), trainable=fn, resume_unfinished=True, resume_errored=True,
                                   param_space=consts)
        searcher = None
    else:
        if exp_dir.exists():
            if not resume:
                raise ConfigError(f"sweep {sweep!r} already has study {study} in {root}; "
                                  f"pass --resume to continue it, or choose another --name")
            shutil.rmtree(exp_dir)  # killed before Tune saved any state: start the study over
        _drop_rows(root, study)
        searcher = make_searcher(space, sampler, seed)
        tuner = tune.Tuner(
            fn, param_space=consts,
            tune_config=tune.TuneConfig(search_alg=ConcurrencyLimiter(searcher, max_concurrent=max_concurrent),
                                        num_samples=num_samples, reuse_actors=True),
            run_config=run_config)
    return tuner.fit(), searcher


def _drop_rows(root: Path, study: str) -> None:
    from .results_store import parquet_files
    import pyarrow.parquet as pq

    for f in parquet_files(root):
        if "study" in pq.read_schema(f).names and pq.read_table(f, columns=["study"])["study"][0].as_py() == study:
            os.unlink(f)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m nba_scale.tune", description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--attack", nargs="+", required=True)
    p.add_argument("--dataset", default="cifar10")
    p.add_argument("--defense", default="nba")
    p.add_argument("--clean-fraction", nargs="+", type=float, default=[0.05])
    p.add_argument("--space", default=None, help="search space YAML (default search_spaces/<defense>.yaml)")
    p.add_argument("--num-samples", type=int, default=None, help="trials per study (preset default)")
    p.add_argument("--max-concurrent", type=int, default=None)
    p.add_argument("--cpus-per-trial", type=float, default=1.0)
    p.add_argument("--gpus-per-trial", type=float, default=0.0,
                   help="a fraction (0.25) shares a GPU between trials; 2 or more runs a trial data-parallel")
    p.add_argument("--workers-per-trial", type=int, default=None,
                   help="data-parallel processes per trial (default: the whole GPUs per trial, or 1)")
    p.add_argument("--results", default="nba_results")
    p.add_argument("--name", default=None)
    p.add_argument("--resume", action="store_true")
    p.add_argument("--objective", default="per-attack", choices=["per-attack", "worst-case"],
                   help="per-attack: one study per attack; worst-case: one study whose trials run every "
                        "--attack and score worst ASR and mean BA over them")
    p.add_argument("--preset", default="quick", choices=sorted(TUNE_PRESETS))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--sampler", default="tpe", help="tpe | nsga2")
    p.add_argument("--address", default=None, help="Ray cluster (auto, ray://host:10001); default: start Ray here")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="fixed trial-config override")
    p.add_argument("--cache-dir", default=None, help="artifact cache shared by all trials")
    p.add_argument("--data-dir", default=None, help="where real datasets live (default $NBA_DATA_DIR)")
    p.add_argument("--device", default=None, help="auto | cpu | cuda")
    return p


def find_space(defense: str, given: Optional[str]) -> Path:
    if given:
        return Path(given)
    for base in (Path.cwd(), Path(__file__).resolve().parent.parent):
        if (base / "search_spaces" / f"{defense}.yaml").is_file():
            return base / "search_spaces" / f"{defense}.yaml"
    raise ConfigError(f"no search space for defense {defense!r}: pass --space PATH.yaml")


def main(argv: Optional[list[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    try:
        return _main(args)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


def _main(args: argparse.Namespace) -> int:
    from .results_store import parquet_files
    from .search_space import load_search_space
    from .trial import with_preset

    space = load_search_space(find_space(args.defense, args.space))
    if space.defense != args.defense:
        raise ConfigError(f"{space.path} is a space for {space.defense!r}, not --defense {args.defense}")
    workers = args.workers_per_trial or max(1, math.ceil(args.gpus_per_trial))
    if args.gpus_per_trial > 1 and args.gpus_per_trial % workers:
        raise ConfigError(f"--gpus-per-trial {args.gpus_per_trial:g} does not split evenly over "
                          f"{workers} workers; use a whole number of GPUs per worker")
    if workers > 1 and args.gpus_per_trial and args.gpus_per_trial < workers:
        raise ConfigError(f"--workers-per-trial {workers} needs at least one GPU each; "
                          f"pass --gpus-per-trial {workers} (or 0 for CPU workers)")
    preset = TUNE_PRESETS[args.preset]
    num_samples = args.num_samples or preset["num_samples"]
    max_concurrent = args.max_concurrent or preset["max_concurrent"]
    name = args.name or default_name(args)
    root = Path(args.results) / name
    fixed = {"dataset": args.dataset, "defense": args.defense, "seed": args.seed}
    for key, value in (("cache_dir", args.cache_dir), ("device", args.device), ("data.data_dir", args.data_dir)):
        if value is not None:
            fixed[key] = value
    if args.cache_dir is None:
        from .artifacts import default_cache_dir

        fixed["cache_dir"] = str(default_cache_dir())  # workers on this machine share one cache
    fixed = merge(merge(nest(fixed), nest(space.fixed)), parse_set(args.set))
    from .attacks import get_attack

    studies = []
    from .trial import parse_config

    for attack in args.attack:
        get_attack(attack)  # unknown name: one line listing the known ones, before Ray starts
        for cf in args.clean_fraction:
            base = with_preset(merge(fixed, {"attack": attack, "clean_fraction": cf}), args.preset)
            checked = parse_config(merge(base, nest(space.default_config())))  # fail fast, before Ray starts
            studies.append((study_id(attack, cf), base, [attack]))
    worst = args.objective == "worst-case"
    if worst:  # one study per clean fraction, over every attack
        if len(args.attack) < 2:
            raise ConfigError("--objective worst-case needs two or more --attack names")
        first_attack = studies[:len(args.clean_fraction)]  # (attack 0, each clean fraction)
        studies = [(study_id("worst-" + "+".join(args.attack), cf), base, list(args.attack))
                   for (_, base, _), cf in zip(first_attack, args.clean_fraction)]
    from .data import load_dataset

    load_dataset(checked.dataset, checked.data, checked.seed)  # offline without the files: one line, now

    import ray

    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "1")  # experiment state saved often: see --resume
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")  # we snapshot often on purpose
    t0 = time.time()
    ray.init(address=args.address, include_dashboard=False, configure_logging=False, log_to_driver=False,
             ignore_reinit_error=True)
    print(f"sweep {name}: {len(studies)} studies x {num_samples} trials, results in {root}", flush=True)
    resources = {"cpu": args.cpus_per_trial, "gpu": args.gpus_per_trial, "workers": workers}
    from .trial import prepare_artifacts

    for study, base, attacks in studies:
        for attack in attacks if args.address is None else []:
            # Here, with every core, rather than in the first trial (one core, others waiting on
            # its lock). On a cluster the first trial that needs an artifact builds it on a GPU.
            t1 = time.time()
            print(f"[{study}] {attack}: backdoored model and teacher: building or loading from the cache ...",
                  flush=True)
            got = prepare_artifacts(merge(merge(base, {"attack": attack}), nest(space.default_config())))
            if got["status"] != "ok":
                raise ConfigError(f"[{study}] could not build its artifacts: {got['error']}")
            print(f"[{study}] artifacts ready in {time.time() - t1:.0f}s: backdoored BA {got['ba_before']:.1%}, "
                  f"ASR {got['asr_before']:.1%}", flush=True)
        run_study(base, space, root=root, sweep=name, study=study, num_samples=num_samples,
                  max_concurrent=max_concurrent, resources=resources, sampler=args.sampler, seed=args.seed,
                  resume=args.resume, attacks=attacks if worst else None)
    wall = time.time() - t0
    rows = len(parquet_files(root))
    print(f"done in {wall:.0f}s: {rows} rows in {root} (python -m nba_scale.results {root} --pareto)", flush=True)
    from .results import print_pareto

    print_pareto(root)
    return 0


if __name__ == "__main__":
    sys.exit(main())
