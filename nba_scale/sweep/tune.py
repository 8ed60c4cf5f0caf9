"""Multi-objective hyper-parameter search of a defense with Ray Tune + Optuna (ASR down, BA up).

    python -m nba_scale.tune --attack badnets --dataset synthetic --preset quick

    python -m nba_scale.tune --attack badnets blend --clean-fraction 0.05 0.1 --num-samples 32 \\
        --dataset npz:~/.cache/nba_scale/cifar10_jpeg.npz --gpus-per-trial 0.25 --address auto

Each (attack, clean fraction) pair is its own Optuna study and Pareto group, and every study of
a sweep runs in one Ray Tune experiment (sweep/multiplex.py: one searcher per study behind one),
so `--max-concurrent` trials run across the studies at once; the artifacts of every study are
built first, together. Every study evaluates the search space's default point (the paper's
configuration) first. The searcher and the scheduler see each trial's figures on a selection
split (`--val-size`, data.selection_split), the rows and the front report the test split's beside
them (`with_selection_split`). Rows land in Parquet under `--results DIR/NAME/` (see
nba_scale/sweep/store.py), each trial's loss curves beside them (`_curves/`, `results --curves`,
`_curves.png`); `--callback tensorboard|mlflow|wandb` also feeds Ray Tune's logger callbacks.
`--resume` continues an interrupted sweep from its rows (sweep/resume.py: finished trials are
kept and told to the searcher again, interrupted ones go on from their last epoch checkpoint,
written every `--checkpoint-s` seconds or `--checkpoint-every` epochs). `--pack K` trains K
configurations per Tune trial together (`trial.run_pack`): same results, one teacher pass per
batch. What each trial reads besides its searched point is the run's typed plan (sweep/plan.py).
Read the results with `python -m nba_scale.results DIR/NAME --pareto`; the Optuna studies persist
beside the rows in `DIR/NAME/_optuna.journal` (`--storage`, sweep/study.py: `optuna-dashboard`,
`optuna.load_study`).

Resources: `--gpus-per-trial 0.25` lets four trials share a GPU; `--gpus-per-trial 2` runs each
trial data-parallel on two GPUs (a Ray Train TorchTrainer around the same Accelerate loop; see
nba_scale/sweep/trainable.py); `--workers-per-trial 2` does the same with CPU processes.

Traps in OptunaSearch this module designs around: metric and mode lists go to OptunaSearch, not
TuneConfig; with several objectives it ignores intermediate results, so nothing is pruned; a final
result missing an objective (or NaN) makes the trial silently vanish from the study, so every
trial ends by reporting both objectives, a failed one its worst values (ASR 1, BA 0, and the
constraint that makes it infeasible, sweep/study.py; its Parquet row holds NaN and
status/error); the space is a dict of Optuna distributions, not a closure, so the
searcher pickles for restore.
"""
from __future__ import annotations

import argparse
import json
import math
import re
import sys
import time
from pathlib import Path
from typing import Any, Callable, Optional

from .. import cli
from ..config import ConfigError, flatten, merge, nest
from .plan import SEARCH, CheckpointPolicy, ResumeFrom, RunPlan, StudyPlan, resume_key
from .store import study_id

# When a sweep's trial writes an epoch checkpoint (--checkpoint-every / --checkpoint-s): every two
# minutes of training, so that a spot retry or a --resume loses at most that much of a trial.
CHECKPOINTS = CheckpointPolicy(every_epochs=0, every_s=120.0)

# Budgets per preset, on top of nba_scale.trial.PRESETS (which sets the trial's own budgets).
TUNE_PRESETS = {
    "smoke": {"num_samples": 3, "max_concurrent": 2},
    "quick": {"num_samples": 8, "max_concurrent": 2},
    "paper": {"num_samples": 64, "max_concurrent": 8},
}


def default_name(args: argparse.Namespace) -> str:
    ds = args.dataset
    if ds.startswith(("npz:", "folder:")):
        ds = Path(ds.partition(":")[2].rstrip("/")).stem
    ds = re.sub(r"[^A-Za-z0-9]+", "-", ds)
    cfs = "-".join(f"{c:g}" for c in args.clean_fraction)
    worst = "_worst" if args.objective == "worst-case" else ""
    return f"{args.defense}_{ds}_{'-'.join(args.attack)}_cf{cfs}_{args.preset}_s{args.seed}{worst}"


def run_studies(studies: list[StudyPlan], space, *, root: Path, sweep: str, num_samples: int, max_concurrent: int,
                shape, sampler: str = "tpe", seed: int = 0, resume: bool = False, progress_every_s: float = 30.0,
                storage=None, pack: int = 1, scheduler: Optional[Callable[[StudyPlan], Any]] = None,
                extra_points: Optional[list[dict[str, Any]]] = None, checkpoints: CheckpointPolicy = CHECKPOINTS,
                loggers: Optional[list] = None):
    """Run, or continue (`resume`), a sweep's Optuna studies as one Ray Tune experiment, until each
    study has `num_samples` rows: one searcher per study behind one multiplexing searcher
    (sweep/multiplex.py), so that `max_concurrent` trials run across every study at once.
    Continuing reads only data (sweep/resume.py): the rows, which each Optuna study is brought
    level with, and the trials that left no row, which restart from their last epoch checkpoint.
    `storage`: the Optuna storage of the studies (`study.open_storage`; default: in memory),
    brought level with the rows before the run.
    `pack`: points per Tune trial, trained together (`trial.run_pack`); one row each.
    `scheduler(study)`: a fresh Tune scheduler (ASHA) for each study, that may stop its trials early.
    `extra_points`: points evaluated after the default and the restarting ones (`--points`).
    `checkpoints`: when a trial writes an epoch checkpoint (plan.CheckpointPolicy).
    `loggers`: more Tune callbacks (`--callback`: execution.logger_callbacks)."""
    import optuna
    import ray.tune as tune
    from ray.tune.search import ConcurrencyLimiter

    from .execution import ParquetSink, Progress, run_config, run_name
    from .multiplex import StudiesScheduler, StudiesSearcher
    from .resume import interrupted_trials, point_of_row, study_rows
    from .study import continue_study, make_searcher
    from .trainable import trainable

    tune_dir = (root / "_tune").resolve()
    rows_of = {s.id: study_rows(root, s.id) for s in studies}
    if not resume and (any(rows_of.values()) or tune_dir.exists()):
        raise ConfigError(f"sweep {sweep!r} already has results in {root}; pass --resume to continue it, "
                          f"or choose another --name")
    storage = storage if storage is not None else optuna.storages.InMemoryStorage()
    # A seeded sampler told the same rows would draw the points of the run it continues again,
    # some of them the restarting trials': each run of a sweep samples with its own seed.
    earlier_runs = len(list(tune_dir.glob("run-*")) + list(tune_dir.glob("*/run-*"))) if tune_dir.is_dir() else 0
    searchers, budgets, restarts = {}, {}, {}
    for study in studies:
        rows = rows_of[study.id]
        todo = num_samples - len(rows)
        if todo <= 0:
            print(f"[{study.id}] {len(rows)} trials have rows (of {num_samples} planned): nothing to run", flush=True)
            continue
        held, told, closed = continue_study(space, rows, f"{sweep}/{study.id}", storage)
        # Every study evaluates the paper's configuration first; then the interrupted trials.
        found = sorted(interrupted_trials(tune_dir, study.id, space, rows), key=lambda r: r.point != study.default)
        fresh_default = not any(r.get("is_default") for r in rows) and not any(r.point == study.default for r in found)
        restart = found[:todo - fresh_default]
        points = [study.default] * fresh_default + [r.point for r in restart]
        ran = {json.dumps(p, sort_keys=True) for p in [*points, *(point_of_row(space, r) for r in rows)] if p}
        points += [p for p in extra_points or [] if json.dumps(p, sort_keys=True) not in ran][:max(0, todo - len(points))]
        if rows or restart:
            print(f"[{study.id}] continuing: {len(rows)} trials have rows ({held} in the Optuna study, {told} told "
                  f"now; {closed} unfinished Optuna trials closed), {len(restart)} interrupted restart "
                  f"({sum(r.checkpoint is not None for r in restart)} from an epoch checkpoint), {todo - len(restart)} "
                  f"to run in all", flush=True)
        restarts.update({resume_key(study.id, r.point): ResumeFrom(str(r.checkpoint), r.member, r.epoch)
                         for r in restart if r.checkpoint})
        searchers[study.id] = make_searcher(space, sampler, seed + earlier_runs, f"{sweep}/{study.id}", storage, points,
                                            budget=num_samples, concurrent=max_concurrent * pack)
        budgets[study.id] = todo
    if not searchers:
        return None
    plan = RunPlan(sweep, SEARCH, studies={s.id: s for s in studies}, resume=restarts, checkpoints=checkpoints, pack=pack,
                   epoch_metrics=evaluated_epochs(scheduler(studies[0]) if scheduler else None),
                   **shape.plan_fields(tune_dir))
    trials = sum(-(-todo // pack) for todo in budgets.values())
    unit = " packs" if pack > 1 else ""
    print(f"[{sweep}] {sum(budgets.values())} trials of {len(searchers)} studies, as one Tune run of {trials}"
          f"{unit or ' trials'}{f' (packs of up to {pack})' if pack > 1 else ''}, up to {max_concurrent} at a time",
          flush=True)
    callbacks = [ParquetSink(root, plan),
                 Progress(sweep, trials, lambda t: plan.label(t.trial_id, t.config), progress_every_s, unit=unit),
                 *(loggers or [])]
    by_id = {s.id: s for s in studies}
    tuner = tune.Tuner(
        tune.with_resources(tune.with_parameters(trainable, plan=plan), shape.resources()),
        tune_config=tune.TuneConfig(
            search_alg=ConcurrencyLimiter(StudiesSearcher(searchers, budgets, pack), max_concurrent=max_concurrent),
            scheduler=StudiesScheduler(lambda s: scheduler(by_id[s])) if scheduler else None,
            num_samples=trials, reuse_actors=True),
        # a new Tune experiment per run, beside the earlier ones (which resume.py reads, as data)
        run_config=run_config(run_name(), tune_dir, callbacks, retries=shape.retries))
    return tuner.fit()


def build_parser() -> argparse.ArgumentParser:
    p = cli.parser("python -m nba_scale.tune", __doc__)
    p.add_argument("--attack", nargs="+", required=True)
    cli.add_trial_flags(p, dataset="cifar10", preset="quick")
    cli.add_sweep_flags(p)
    p.add_argument("--defense", default="nba")
    p.add_argument("--clean-fraction", nargs="+", type=float, default=None,
                   help="the defender's clean subset(s) of the training set, one study each (default 0.05)")
    p.add_argument("--clean-images", nargs="+", type=cli.clean_count, default=None, help=cli.CLEAN_IMAGES_HELP)
    p.add_argument("--space", default=None, help="search space YAML (default search_spaces/<defense>.yaml)")
    p.add_argument("--num-samples", type=cli.count, default=None, help="trials per study (preset default)")
    p.add_argument("--name", default=None)
    p.add_argument("--objective", default="per-attack", choices=["per-attack", "worst-case"],
                   help="per-attack: one study per attack; worst-case: one study whose trials run every "
                        "--attack and score worst ASR and mean BA over them")
    p.add_argument("--sampler", default="tpe", choices=["tpe", "nsga2"], help="Optuna's sampler (default tpe)")
    p.add_argument("--storage", default="journal",
                   help="where the Optuna studies live: journal (DIR/NAME/_optuna.journal, for optuna-dashboard and "
                        "optuna.load_study), a journal file path, a database URL (sqlite:///studies.db), or memory")
    p.add_argument("--scheduler", default="none", choices=["none", "asha"],
                   help="asha: stop unpromising trials early (Ray Tune's ASHA on BA - ASR at its rungs); "
                        "their rows say stopped_at_epoch")
    p.add_argument("--grace-period", type=cli.count, default=2, help="ASHA: epochs every trial runs")
    p.add_argument("--reduction-factor", type=cli.count, default=3, help="ASHA: 1/factor of the trials go on at each rung")
    p.add_argument("--val-size", type=int, default=None, metavar="N",
                   help="images of the selection split the searcher and the scheduler score (disjoint from the "
                        "training subset, the clean set and the test split; data.val_size): default 2,000 for "
                        "real data, as many as the synthetic test split for synthetic data; 0: select on the "
                        "test split, as before 2026-12-05")
    p.add_argument("--min-backdoor-asr", type=cli.fraction, default=None, metavar="F",
                   help="stop, once the artifacts are built, if a backdoored model's ASR is under F (default 0.5; "
                        "not checked at --preset smoke, whose models train too briefly to implant): a sweep over a "
                        "model without a backdoor shows every trial removing it; 0 sweeps anyway")
    p.add_argument("--confirm", type=int, default=0, metavar="N",
                   help="when the search ends, run each point of every study's validation front, and the paper's "
                        "default, again at N fresh seeds (--seed + 1 ... + N, each its own backdoored model and "
                        "teacher, the same for every point), and print the front confirmed over them "
                        "(sweep/confirm.py); rows say stage = confirm")
    p.add_argument("--checkpoint-every", type=cli.count, default=None, metavar="N",
                   help="write a trial's epoch checkpoint every N epochs (default: by time, --checkpoint-s)")
    p.add_argument("--checkpoint-s", type=float, default=None, metavar="S",
                   help="write a trial's epoch checkpoint once S seconds of training have passed since its last "
                        "(default 120; inf: none): what a spot retry or --resume may lose of a trial, against "
                        "the copy and write each checkpoint costs")
    cli.add_config_flags(p)
    p.add_argument("--points", default=None,
                   help="JSON file: a list of points ({parameter: value}) to evaluate after the default")
    return p


MIN_BACKDOOR_ASR = 0.5


def min_backdoor_asr(args: argparse.Namespace) -> float:
    """The ASR under which a backdoored model counts as not backdoored (`--min-backdoor-asr`)."""
    if args.min_backdoor_asr is not None:
        return args.min_backdoor_asr
    return 0.0 if args.preset == "smoke" else MIN_BACKDOOR_ASR


VAL_SIZE = 2000  # real data: the noise of 2,000 images, as the test subsets of the docs' runs


def with_selection_split(cfg: dict[str, Any], val_size: Optional[int]) -> dict[str, Any]:
    """A sweep's trial config with its selection split (`data.val_size`): `--val-size`, or a
    `--set data.val_size` the user gave, or the default: 2,000 images of real data, as many as
    the synthetic test split of synthetic data."""
    from ..data import DataConfig, SYNTHETIC_STYLES

    data = dict(cfg.get("data") or {})
    if val_size is not None:
        data["val_size"] = val_size
    elif "val_size" not in data:
        synthetic = cfg.get("dataset") in SYNTHETIC_STYLES
        data["val_size"] = data.get("synthetic_test", DataConfig.synthetic_test) if synthetic else VAL_SIZE
    return {**cfg, "data": data}


def plan(args: argparse.Namespace, space) -> list[StudyPlan]:
    """The sweep's studies (sweep/plan.py), every trial config checked."""
    base = cli.base_config(args, shared_cache=True)
    sets = cli.user_set(args)
    worst = args.objective == "worst-case"
    if worst and len(args.attack) < 2:
        raise ConfigError("--objective worst-case needs two or more --attack names")
    studies, checked = [], []
    default = space.default_point()
    if args.clean_fraction is None:  # `run` resolves it first (the sweep's name needs it); a caller may not
        args.clean_fraction = cli.clean_axis(args, None, [0.05])
    for cf in args.clean_fraction:
        per_attack = [with_selection_split(cli.trial_config(
            base, {"defense": args.defense, "seed": args.seed}, space.fixed, {"attack": a, "clean_fraction": cf},
            sets, preset=args.preset, keep_sections=worst), args.val_size) for a in args.attack]
        checked += [merge(cli.drop_unused_sections(c), nest(space.default_config())) for c in per_attack]
        if worst:  # one study per clean fraction, its trials over every attack
            studies.append(StudyPlan(study_id("worst-" + "+".join(args.attack), cf), per_attack[0], default,
                                     tuple(args.attack)))
        else:
            studies += [StudyPlan(study_id(a, cf), c, default) for a, c in zip(args.attack, per_attack)]
    cli.check_run(checked, sets)
    return studies


def at_default(base: dict[str, Any], attack: str, space) -> dict[str, Any]:
    """A study's trial config for one of its attacks at the search space's default point: what
    its artifacts are built for and what `--print-config` shows (the searcher samples the rest)."""
    return merge(cli.drop_unused_sections(merge(base, {"attack": attack})), nest(space.default_config()))


def make_scheduler(args: argparse.Namespace, base: dict[str, Any]):
    """ASHA on BA - ASR (scored at its rungs only, `asha_rungs`), with the trial's epochs as its budget; a
    fresh one per study."""
    if args.scheduler == "none":
        return None
    from ray.tune.schedulers import ASHAScheduler

    from ..defenses import get_defense
    from ..trial import parse_config

    cfg = parse_config(base)
    epochs = int(get_defense(cfg.defense)(cfg.defense_params).epochs)
    if epochs <= args.grace_period:
        raise ConfigError(f"--scheduler asha: the defense trains {epochs} epochs, no more than --grace-period "
                          f"{args.grace_period}: nothing to stop early; lower --grace-period")
    scheduler = ASHAScheduler(metric="utility", mode="max", time_attr="epoch", max_t=epochs,
                              grace_period=args.grace_period, reduction_factor=args.reduction_factor,
                              stop_last_trials=False)  # else it stops a trial at its last epoch, before its final report
    scheduler.rung_epochs = asha_rungs(epochs, args.grace_period, args.reduction_factor)
    return scheduler


def asha_rungs(max_t: int, grace_period: int, reduction_factor: float) -> list[int]:
    """The epochs at which ASHA (one bracket, as `make_scheduler` builds it) compares trials:
    grace * rf^k, by the formula of Ray's `_Bracket`, before the last epoch. Ray also places a
    rung at max_t when grace * rf^k equals it, where it would stop a trial that has trained
    every epoch, before its final report: the last epoch is never scored for the scheduler."""
    n = int(math.log(max_t / grace_period) / math.log(reduction_factor) + 1)
    return sorted(m for m in (int(grace_period * reduction_factor ** k) for k in range(n)) if m < max_t)


def evaluated_epochs(scheduler) -> bool | list[int]:
    """Which epochs a trial scores for `scheduler`: none without one; for ASHA only its rungs, the
    results it reads (scoring every epoch was 44 % of an NBA trial's defense time on the CPU);
    every epoch for any other scheduler."""
    if scheduler is None:
        return False
    return getattr(scheduler, "rung_epochs", True)


def read_points(path: str, space) -> list[dict[str, Any]]:
    """`--points FILE`: a JSON list of {parameter: value} holding every searched parameter."""
    from .search_space import encode

    try:
        points = json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        raise ConfigError(f"--points {path}: not a readable JSON file ({e})") from None
    names = {p.name for p in space.params}
    if not isinstance(points, list) or not all(isinstance(p, dict) and set(p) == names for p in points):
        raise ConfigError(f"--points {path}: expected a JSON list of objects with exactly the keys "
                          f"{', '.join(sorted(names))}")
    params = {p.name: p for p in space.params}
    for i, point in enumerate(points):
        for k, v in point.items():
            why = params[k].refuses(v)
            if why:
                raise ConfigError(f"--points {path}: point {i + 1}, {k}={json.dumps(v)}: {why}")
    cast = {"categorical": encode, "int": int, "float": float}
    return [{k: cast[params[k].type](v) for k, v in p.items()} for p in points]


def checkpoint_policy(args: argparse.Namespace) -> CheckpointPolicy:
    """`--checkpoint-every N` epochs and/or `--checkpoint-s S` seconds (default: every 120 s)."""
    if args.checkpoint_s is not None and args.checkpoint_s <= 0:
        raise ConfigError(f"--checkpoint-s {args.checkpoint_s:g}: give a number of seconds > 0, or 'inf' for none")
    every_s = args.checkpoint_s if args.checkpoint_s is not None else (
        math.inf if args.checkpoint_every else CHECKPOINTS.every_s)
    return CheckpointPolicy(args.checkpoint_every or 0, every_s)


def search_space(args: argparse.Namespace):
    """The sweep's search space, without the parameters a --set fixes (the user's value wins over
    the searcher's, and the row shows it)."""
    from .search_space import find_space, load_search_space

    space = load_search_space(find_space(args.defense, args.space))
    if space.defense != args.defense:
        raise ConfigError(f"{space.path} is a space for {space.defense!r}, not --defense {args.defense}")
    fixed = set(flatten(cli.user_set(args))) & {p.name for p in space.params}
    if fixed:
        space = space.fixing(fixed)
        if not space.params:
            raise ConfigError(f"--set fixes every parameter of {space.path} ({', '.join(sorted(fixed))}); "
                              f"nothing is left to search: use python -m nba_scale.run for one configuration")
        print(f"--set fixes {', '.join(sorted(fixed))}: not searched (the search space samples the rest)", flush=True)
    return space


def run(args: argparse.Namespace) -> int:
    if args.list_keys:
        cli.print_keys(args.attack, [args.defense])
        return 0
    space = search_space(args)
    args.clean_fraction = cli.clean_axis(args, args.clean_fraction, [0.05])
    from .execution import Shape

    shape = Shape.from_args(args)
    budget = TUNE_PRESETS.get(args.preset or "quick", TUNE_PRESETS["quick"])
    num_samples = args.num_samples or budget["num_samples"]
    max_concurrent = args.max_concurrent or budget["max_concurrent"]
    name = args.name or default_name(args)
    root = Path(args.results) / name
    if args.resume and not root.is_dir():
        raise ConfigError(f"--resume: there is no sweep {name!r} in {args.results} to continue; "
                          f"check --name and --results, or drop --resume to start it")
    from .study import check_storage

    check_storage(args.storage)
    studies = plan(args, space)
    if args.print_config:  # each study's trial at the search space's default point (the rest samples)
        cli.print_configs([(f"{s.id}, {a}, at the search space's default point", at_default(s.base, a, space))
                           for s in studies for a in s.each_attack()])
        return 0
    points = read_points(args.points, space) if args.points else None
    if args.scheduler != "none" and args.objective == "worst-case":
        raise ConfigError("--scheduler asha needs per-epoch results, and a worst-case trial runs its attacks one after "
                          "another without them: use --objective per-attack, or no scheduler")
    for s in studies:
        make_scheduler(args, s.base)  # its budget checked before Ray starts
    if args.pack > 1:
        from ..spec import check_packable, parse_config

        check_packable(args.defense, [p.name for p in space.params], pack_mode=args.pack_mode,
                       arch=parse_config(studies[0].base).arch)
        if args.objective == "worst-case":  # refused before Ray starts and the models are built
            raise ConfigError("--objective worst-case runs each trial over several attacks, one after the other; "
                              "it does not pack: use --pack 1")
    checkpoints = checkpoint_policy(args)
    from .confirm import check as check_confirm

    check_confirm(args)

    from .execution import logger_callbacks, prebuild, start_ray, weak_backdoors
    from .results import load, plot, print_pareto
    from .store import compact, driver_lock, read_table
    from .study import JOURNAL, open_storage

    t0 = time.time()
    with driver_lock(root):
        storage = open_storage(args.storage, root)
        start_ray(args.address)
        print(f"sweep {name}: {len(studies)} studies x {num_samples} trials, results in {root}", flush=True)
        if args.storage != "memory":
            where = root / JOURNAL if args.storage == "journal" else args.storage
            print(f"Optuna studies ({name}/<study>) in {where}: optuna-dashboard {where}", flush=True)
        # Every distinct artifact of every study before the trials, rather than in the first of
        # them while the others wait on its lock.
        built = prebuild(name, [at_default(s.base, a, space) for s in studies for a in s.each_attack()], args.address,
                         shape.gpus)
        weak = weak_backdoors(built, min_backdoor_asr(args))
        if weak:
            raise ConfigError(
                f"[{name}] the backdoored model of {', '.join(weak)} is under --min-backdoor-asr "
                f"{min_backdoor_asr(args):.0%}: there is no backdoor to remove, and every trial would look like "
                f"a success; implant it (a larger budget, a higher poison rate; Refool: docs/FIDELITY.md "
                f"section 4) or pass --min-backdoor-asr 0 to sweep anyway")
        run_studies(studies, space, root=root, sweep=name, num_samples=num_samples, max_concurrent=max_concurrent,
                    shape=shape, sampler=args.sampler, seed=args.seed, resume=args.resume, pack=args.pack,
                    scheduler=(lambda s: make_scheduler(args, s.base)) if args.scheduler != "none" else None,
                    extra_points=points, storage=storage, checkpoints=checkpoints,
                    loggers=logger_callbacks(args.callback, root, name))
        if args.confirm:
            from . import confirm

            confirm.run(args, studies, space, root, name, shape, max_concurrent)
        compact(root)  # the trials have ended: one file per partition rather than one per row
    print(f"done in {time.time() - t0:.0f}s: {read_table(root).num_rows} rows in {root}", flush=True)
    print_pareto(root)
    # "_" first: Parquet readers of the folder (pyarrow.dataset, hive partitioning) skip it.
    png = root / "_pareto.png"
    plot(load(root), ["attack", "clean_fraction"], str(png))
    print(f"front plot: {png}\nthe rows: python -m nba_scale.results {root}", flush=True)
    from .curves import plot_dir

    if plot_dir(root, str(root / "_curves.png")):
        print(f"how each trial trained (loss terms per epoch): {root / '_curves.png'}; "
              f"python -m nba_scale.results {root} --curves", flush=True)
    if args.confirm:
        from .confirm import report

        report(root, min_backdoor_asr(args), plot_path=root / "_confirmed.png")
    return 0


main = cli.entry(build_parser, run)


if __name__ == "__main__":
    sys.exit(main())
