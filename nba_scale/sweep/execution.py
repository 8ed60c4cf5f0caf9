"""How a driver runs many trials through Ray Tune, for sweeps (tune.py) and campaigns
(campaign.py) alike: the artifacts built before the trials, the one Parquet sink, the one
progress line, the logger callbacks (the resources of one trial and Ray's start are in
resources.py, which imports no Ray). Imports Ray: drivers import this module after their input
is checked, so that bad input fails fast."""
from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any, Callable, Optional

import ray.tune as tune

from ..config import ConfigError, nest
from ..provenance import code_version
from .plan import RunPlan
from .resources import CLUSTER_RETRIES, DRIVER_RESOURCE, Shape, default_gpus, driver_resources, start_ray  # noqa: F401
from .store import CURVE_NAMES, column_name, pareto_mask, write_curves, write_row
from .trainable import axes

# What Tune adds to every reported result, and what the scheduler alone reads (`utility`); the
# rest of a final report is the trial's row.
TUNE_RESULT_KEYS = {"utility", "timestamp", "checkpoint_dir_name", "done", "training_iteration", "trial_id", "date",
                    "time_this_iter_s", "time_total_s", "pid", "hostname", "node_ip", "time_since_restore",
                    "iterations_since_restore", "config", "final", "experiment_tag"}


def row_fields(result: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in result.items() if k not in TUNE_RESULT_KEYS and not k.startswith("config/")}


def run_name() -> str:
    """A fresh Tune experiment per run of a driver: earlier runs' folders stay as they are."""
    return f"run-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"


def logger_callbacks(names: list[str], root: Path, experiment: str) -> list:
    """Ray Tune's own logger callbacks for `--callback tensorboard|mlflow|wandb`, offline by
    default: TensorBoard event files in each trial's folder (Tune writes them anyway; named, so
    the command says where), MLflow's file store in DIR/NAME/_mlruns (or MLFLOW_TRACKING_URI),
    Weights & Biases in offline mode (or WANDB_MODE). A missing package is refused in one line."""
    import importlib.util

    out = []
    for name in dict.fromkeys(names):
        package = {"tensorboard": "tensorboardX", "mlflow": "mlflow", "wandb": "wandb"}[name]
        if importlib.util.find_spec(package) is None:
            extra = {"mlflow": "mlflow-skinny"}.get(name, package)
            raise ConfigError(f"--callback {name} needs the {package} package: pip install {extra} "
                              f"(or pip install 'nba_scale[tracking]'), or leave out --callback {name}")
        if name == "tensorboard":
            from ray.tune.logger import TBXLoggerCallback

            out.append(TBXLoggerCallback())
            print(f"TensorBoard: tensorboard --logdir {root / '_tune'}", flush=True)
        elif name == "mlflow":
            from ray.air.integrations.mlflow import MLflowLoggerCallback

            uri = os.environ.get("MLFLOW_TRACKING_URI")
            if not uri:  # MLflow 3 keeps its file store in maintenance mode, behind this switch; a
                # file store needs no server and no database driver (mlflow-skinny has none)
                uri = (root / "_mlruns").resolve().as_uri()
                os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
            out.append(MLflowLoggerCallback(tracking_uri=uri, experiment_name=experiment, save_artifact=False))
            print(f"MLflow: experiment {experiment!r} in {uri}", flush=True)
        else:
            from ray.air.integrations.wandb import WandbLoggerCallback

            mode = os.environ.get("WANDB_MODE", "offline")
            out.append(WandbLoggerCallback(project=experiment, mode=mode, dir=str((root / "_wandb").resolve()),
                                           excludes=["__rows__"]))
            print(f"Weights & Biases: project {experiment!r}, mode {mode}", flush=True)
    return out


def run_config(name: str, storage: Path, callbacks: list, retries: int = 0) -> tune.RunConfig:
    """`retries`: restarts of a trial whose process or node died, each from its last checkpoint
    (Tune hands it to the trainable); a trial that fails by itself (NaN loss) ends with its row."""
    return tune.RunConfig(name=name, storage_path=str(storage), verbose=0, callbacks=callbacks,
                          checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
                          failure_config=tune.FailureConfig(max_failures=retries))


def prebuild(label: str, configs: list[dict[str, Any]], address: str | None = None, gpus: float = 0.0
             ) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """Every distinct backdoored model, and a teacher where some trial's defense needs one, once,
    before the trials start: otherwise the first trials build them while the others wait on the
    cache's lock, holding their share of a CPU or GPU idle. Here (no `address`) with every core;
    on a cluster as Ray tasks, in parallel, each with a whole GPU where the trials get GPUs
    (`gpus`, a trial's share) or the cluster has some up (retried on another node if theirs is
    lost), into the shared `--cache-dir`. On a cold cluster the GPU tasks are what make the
    autoscaler start the GPU workers: asking for none would build every model on a CPU. Returns each
    distinct artifact set's config with what `prepare_artifacts` said of it (its `asr_before`...)."""
    from ..trial import prepare_artifacts

    groups = artifact_groups(configs)
    built = []
    if address is None:
        for i, cfg in enumerate(groups, 1):
            t0 = time.time()
            print(f"[{label}] artifacts {i}/{len(groups)}: {_what(cfg)} (building or loading from the cache) ...",
                  flush=True)
            built.append((cfg, _ready(label, cfg, prepare_artifacts(cfg), t0)))
        return built
    import ray

    gpus = 1 if gpus > 0 or ray.cluster_resources().get("GPU", 0) >= 1 else 0
    task = ray.remote(num_cpus=1, num_gpus=gpus, max_retries=CLUSTER_RETRIES)(prepare_artifacts)
    print(f"[{label}] artifacts: {len(groups)} to build or load, as Ray tasks ({gpus} GPU, 1 CPU each) ...", flush=True)
    t0, pending = time.time(), {task.remote(cfg): cfg for cfg in groups}
    while pending:
        (done,), _ = ray.wait(list(pending), num_returns=1)
        cfg = pending.pop(done)
        built.append((cfg, _ready(label, cfg, ray.get(done), t0)))
    return built


def weak_backdoors(built: list[tuple[dict[str, Any], dict[str, Any]]], min_asr: float) -> list[str]:
    """The prebuilt backdoored models whose ASR is under `min_asr`, each as "ATTACK seed S (ASR x %)":
    a defense cannot remove a backdoor its model never learnt, and every trial against it would
    look like a success."""
    return [f"{cfg['attack']} seed {cfg.get('seed', 0)} (ASR {got['asr_before']:.1%})" for cfg, got in built
            if got.get("asr_before") is not None and got["asr_before"] < min_asr]


def artifact_groups(configs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One config per distinct artifact set (attack, data, seed, ...: all but the defense), one
    whose defense needs a teacher where any does."""
    groups: dict[str, dict[str, Any]] = {}
    for cfg in map(nest, configs):
        key = json.dumps({k: v for k, v in cfg.items() if k not in ("defense", cfg.get("defense"))},
                         sort_keys=True, default=str)
        if key not in groups or (needs_teacher(cfg) and not needs_teacher(groups[key])):
            groups[key] = cfg
    return list(groups.values())


def needs_teacher(cfg: dict[str, Any]) -> bool:
    from ..defenses import get_defense

    return get_defense(cfg.get("defense", "nba")).needs_teacher


def _what(cfg: dict[str, Any]) -> str:
    what = "backdoored model and teacher" if needs_teacher(cfg) else "backdoored model"
    return f"{cfg['attack']} cf {cfg['clean_fraction']:g} seed {cfg.get('seed', 0)}, {what}"


def _ready(label: str, cfg: dict[str, Any], got: dict[str, Any], t0: float) -> dict[str, Any]:
    if got["status"] != "ok":
        raise ConfigError(f"[{label}] could not build the artifacts of {cfg['attack']}: {got['error']}")
    print(f"[{label}]   {_what(cfg)}: ready after {time.time() - t0:.0f}s: backdoored BA {got['ba_before']:.1%}, "
          f"ASR {got['asr_before']:.1%}", flush=True)
    return got


class ParquetSink(tune.Callback):
    """Driver-side: writes each finished trial's rows, one per member, named by the run's plan
    (sweep/plan.py; idempotent per trial id), and its curves: the members' epoch reports (loss and
    its terms, the figures a scheduler scored), one row per member and epoch, in
    DIR/NAME/_curves/ (store.write_curves)."""

    def __init__(self, root: Path, plan: RunPlan):
        self.root, self.plan = root, plan
        self.epochs: dict[str, dict[tuple[int, int], dict[str, Any]]] = {}

    def on_trial_result(self, iteration, trials, trial, result, **info):
        if result.get("final") or "epoch" not in result:
            return
        for k in range(self.plan.size(trial.config)):
            tag = f"_m{k}"
            values = {key[:-len(tag)]: v for key, v in result.items() if key.endswith(tag)}
            if values:  # a retried trial reports its epochs again: the last report of an epoch wins
                self.epochs.setdefault(trial.trial_id, {})[(k, int(result["epoch"]))] = values

    def on_trial_complete(self, iteration, trials, trial, **info):
        r = dict(trial.last_result or {})
        self._curves(trial)  # first: a trial with a row has its curves
        if r.get("final") and "__rows__" in r:
            for k, row in enumerate(json.loads(r["__rows__"])):
                write_row(self.root, {**row, **self.plan.identity(trial.trial_id, trial.config, k)})
        elif r.get("epoch"):  # stopped early by the scheduler (ASHA)
            self._stopped(trial, r)

    def _base_rows(self, trial, status: str, error: str, **extra: Any) -> list[dict[str, Any]]:
        """A row per member of a trial that left none itself: its axes, its point, its names."""
        from .search_space import decode

        return [{**axes(m), **code_version(), "status": status, "error": error, **extra,
                 **{column_name(n): decode(v) for n, v in m.point.items()},
                 **self.plan.identity(trial.trial_id, trial.config, k)}
                for k, m in enumerate(self.plan.members(trial.config))]

    def _stopped(self, trial, r: dict[str, Any]) -> None:
        """A stopped trial's rows (per member): its point, `stopped_at_epoch` and the metrics it
        had there (`asr_at_stop`, ...: on the selection split where the sweep has one, as the
        scheduler saw them). Its ASR/BA stay NaN: they are not a finished defense's."""
        rows = self._base_rows(trial, "stopped", f"stopped by the scheduler after epoch {r['epoch']}",
                               stopped_at_epoch=r["epoch"], finished=time.time())
        for k, row in enumerate(rows):
            write_row(self.root, {**row, **{f"{m}_at_stop": r.get(f"{m}_m{k}") for m in ("asr", "ba", "ra")}})

    def on_trial_error(self, iteration, trials, trial, **info):
        # The worker died (killed, out of memory): the trainable could not write its rows.
        self._curves(trial)
        for row in self._base_rows(trial, "failed", f"trial process died: {trial.error_file or 'no error file'}"):
            write_row(self.root, row)

    def _curves(self, trial) -> None:
        epochs = self.epochs.pop(trial.trial_id, {})
        if not epochs:
            return
        members = self.plan.members(trial.config)
        names = [self.plan.identity(trial.trial_id, trial.config, k) for k in range(len(members))]
        write_curves(self.root, trial.trial_id, [
            {**axes(members[k]), **{n: names[k][n] for n in CURVE_NAMES if n in names[k]}, "member": k, "epoch": epoch,
             **values} for (k, epoch), values in sorted(epochs.items())])


def outcomes(result: dict[str, Any]) -> list[dict[str, Any]]:
    """A final result's rows (one for an unpacked trial): status, error, ASR, BA (the test split's)."""
    if "__rows__" not in result:
        return [result]
    return json.loads(result["__rows__"])


class Progress(tune.Callback):
    """One line per finished trial (counts, time, ETA, its ASR/BA or its error) and, while trials
    train, a heartbeat at most every `every_s` seconds with the current Pareto front. Tune's own
    per-trial table is off (verbose=0)."""

    def __init__(self, label: str, total: int, name: Callable[[Any], str], every_s: float = 30.0, unit: str = ""):
        self.label, self.total, self.name, self.every_s, self.unit = label, total, name, every_s, unit
        self.t0, self.last, self.finished_here = time.time(), 0.0, 0
        self.t_first: Optional[float] = None  # the first trial's start: the ETA leaves out Ray's start-up

    def on_trial_start(self, iteration, trials, trial, **info):
        if self.t_first is None:
            self.t_first = time.time()

    def on_step_end(self, iteration, trials, **info):
        if time.time() - self.last >= self.every_s:
            self._print(trials, set(), self._front(trials))

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._finished(trials, trial, trial.last_result or {})

    def on_trial_error(self, iteration, trials, trial, **info):
        self._finished(trials, trial, {"status": "failed", "error": "trial process died"})

    def on_trial_recover(self, iteration, trials, trial, **info):
        epoch = (trial.last_result or {}).get("epoch")
        print(f"[{self.label}] {self.name(trial)}: its process died; starting it again "
              f"{f'after epoch {epoch}' if epoch else 'from the start'} (--max-failures)", flush=True)

    def _finished(self, trials, trial, r: dict[str, Any]) -> None:
        self.finished_here += 1
        if not r.get("final") and r.get("epoch"):
            self._print(trials, {trial.trial_id}, f" | {self.name(trial)}: stopped by the scheduler after epoch {r['epoch']}")
            return
        whats = [f"ASR {m['asr']:.1%} BA {m['ba']:.1%}" if m.get("status") == "ok" else f"FAILED {m.get('error')}"
                 for m in outcomes(r)]
        what = whats[0] if len(whats) == 1 else f"pack of {len(whats)}: " + "; ".join(whats)
        self._print(trials, {trial.trial_id}, f" | {self.name(trial)}: {what}")

    @staticmethod
    def _front(trials) -> str:
        pts = [(m["asr"], m["ba"]) for t in trials if t.status == "TERMINATED"
               for m in outcomes(t.last_result or {}) if m.get("status") == "ok"]
        front = sorted({p for p, keep in zip(pts, pareto_mask([a for a, _ in pts], [b for _, b in pts])) if keep})
        return "; front: " + ", ".join(f"(ASR {a:.1%}, BA {b:.1%})" for a, b in front[:4]) if front else ""

    def _print(self, trials, just_finished: set[str], tail: str) -> None:
        self.last = time.time()
        ended = {t.trial_id for t in trials if t.status in ("TERMINATED", "ERROR")} | just_finished
        failed = sum(1 for t in trials if t.trial_id in ended and (t.status == "ERROR" or (
            (t.last_result or {}).get("final") and (t.last_result or {}).get("status") != "ok")))
        running = sum(1 for t in trials if t.status == "RUNNING" and t.trial_id not in ended)
        elapsed = self.last - self.t0
        line = f"[{self.label}] {len(ended)}/{self.total}{self.unit} done ({failed} failed), {running} running, {elapsed / 60:.1f} min"
        if self.finished_here and len(ended) < self.total:
            rate = (self.last - (self.t_first or self.t0)) / self.finished_here
            line += f", ETA {rate * (self.total - len(ended)) / 60:.1f} min"
        print(line + tail, flush=True)
