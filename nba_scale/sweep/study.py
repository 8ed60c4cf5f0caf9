"""The Optuna study behind each of a sweep's studies: where it is stored, its sampler, and how
trials enter it.

Storage (`tune --storage`): by default an Optuna journal file beside the rows,
`DIR/NAME/_optuna.journal` (on a cluster, on the shared filesystem with the rows), so that
`optuna-dashboard DIR/NAME/_optuna.journal`, `optuna.load_study(...).best_trials` and the
hypervolume history work while the sweep runs and after it. `--storage sqlite:///studies.db`
(or any SQLAlchemy URL Optuna accepts) puts the studies in a database instead; `--storage memory`
keeps them in the driver only. Study names are `SWEEP/STUDY`, e.g. `nba_cifar10_badnets_.../badnets-cf0.05`.

The Parquet rows stay the record (sweep/resume.py): a study is rebuilt from them on `--resume`
wherever it lacks them (a row told to no study, a study in memory), and the trials a dead driver
had asked for but never told are closed as FAIL, so a sampler does not count them as running.

Failed trials: a trial that failed (NaN loss, a rejected sampled value, a dead worker) is told
with the worst objectives (ASR 1, BA 0; Ray's OptunaSearch drops a trial told without values)
and the constraint `trial_failed = 1`, which Optuna's multi-objective samplers (TPE and NSGA-II)
rank below every feasible trial and which `best_trials` leaves out; ok and stopped trials have
`trial_failed = 0`. Each Optuna trial carries its Tune trial id (user attribute `trial_id`), the
id of its Parquet row.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Optional

from ray.tune.search.optuna import OptunaSearch

from ..config import ConfigError
from .resume import objectives, point_of_row
from .search_space import SearchSpace

OBJECTIVES = ["asr", "ba"]
MODES = ["min", "max"]
DIRECTIONS = ["minimize", "maximize"]
FAILED = "trial_failed"  # the constraint: > 0 for a failed trial
JOURNAL = "_optuna.journal"  # "_" first: Parquet readers of the results folder skip it


def check_storage(spec: Optional[str]) -> None:
    """`--storage` is "journal", "memory", a URL (scheme://...) or a plain path; anything that
    looks like a URL but is not one (`mysql:/host/db`, `sqlite:studies.db`) is refused rather
    than taken as a file name in the working folder."""
    if spec in (None, "journal", "memory") or "://" in spec:
        return
    if re.match(r"^[A-Za-z][A-Za-z0-9+.-]+:", spec):
        scheme = spec.split(":", 1)[0]
        raise ConfigError(f"--storage {spec}: neither a database URL nor a plain path; a URL is {scheme}://..., "
                          f"e.g. sqlite:///studies.db (or give a journal file path, or journal, or memory)")


def open_storage(spec: Optional[str], root: Path):
    """The Optuna storage `--storage` names: "journal" (default: DIR/NAME/_optuna.journal), a
    journal file path, an RDB URL (sqlite:///..., postgresql://...), or "memory"."""
    import optuna
    from optuna.storages.journal import JournalFileBackend, JournalFileOpenLock

    check_storage(spec)
    if spec == "memory":
        return optuna.storages.InMemoryStorage()
    if spec and "://" in spec:
        try:
            return optuna.storages.RDBStorage(spec)
        except Exception as e:  # a bad URL, a missing driver, an unreachable server
            raise ConfigError(f"--storage {spec}: Optuna cannot open it ({type(e).__name__}: {str(e)[:200]}); "
                              f"use a journal file (the default) or a reachable database URL") from None
    path = root / JOURNAL if spec in (None, "journal") else Path(spec).expanduser()
    path.parent.mkdir(parents=True, exist_ok=True)
    # The open(O_EXCL) lock works on NFS v3+, where a cluster's shared filesystem keeps the journal.
    return optuna.storages.JournalStorage(JournalFileBackend(str(path), lock_obj=JournalFileOpenLock(str(path))))


def tpe_startup_trials(budget: int) -> int:
    """Random trials before TPE models the results: a quarter of the budget, 2 to 10. Optuna's
    default, 10, made the 8-trial `quick` sweep a random search (`bench/sampler.py`)."""
    return max(2, min(10, budget // 4))


class StudySearch(OptunaSearch):
    """Ray's OptunaSearch, whose Optuna trials name their Tune trial and mark failures as
    infeasible (the module's docstring)."""

    def suggest(self, trial_id: str) -> Optional[dict]:
        config = super().suggest(trial_id)
        ot_trial = self._ot_trials.get(trial_id)
        if ot_trial is not None and "trial_id" not in ot_trial.user_attrs:
            ot_trial.set_user_attr("trial_id", trial_id)
        return config

    def on_trial_complete(self, trial_id: str, result: Optional[dict] = None, error: bool = False) -> None:
        ot_trial = self._ot_trials.get(trial_id)
        if ot_trial is not None and trial_id not in self._completed_trials:
            failed = error or not result or (bool(result.get("final")) and result.get("status") != "ok")
            ot_trial.set_constraint(FAILED, 1.0 if failed else 0.0)
            if failed and result and result.get("error"):
                ot_trial.set_user_attr("error", str(result["error"])[:500])
        super().on_trial_complete(trial_id, result, error)


def make_searcher(space, sampler: str, seed: int, study_name: str, storage, points: list[dict[str, Any]],
                  budget: int = 100, concurrent: int = 1) -> StudySearch:
    """A searcher over `space` in the Optuna study `study_name` of `storage` (created, or loaded
    with the trials told so far), evaluating `points` first. `budget`: the study's trials (TPE's
    random start scales with it); `concurrent`: trials asked before earlier ones are told (Tune's
    concurrency times the pack size): TPE then uses the constant liar, as Optuna advises for
    parallel trials. (With Optuna 5.0's two-objective multivariate TPE and Ray's eager `ask`, it
    drew the same points as without: `bench/sampler.py` shows no difference; it costs nothing.)"""
    import optuna

    samplers = {"tpe": lambda: optuna.samplers.TPESampler(seed=seed, multivariate=True,
                                                          n_startup_trials=tpe_startup_trials(budget),
                                                          constant_liar=concurrent > 1),
                "nsga2": lambda: optuna.samplers.NSGAIISampler(seed=seed)}
    if sampler not in samplers:
        raise ConfigError(f"unknown sampler {sampler!r}; known: {', '.join(samplers)}")
    return StudySearch(space=space.optuna_space(), metric=OBJECTIVES, mode=MODES, points_to_evaluate=points or None,
                       sampler=samplers[sampler](), seed=seed, study_name=study_name, storage=storage)


def continue_study(space: SearchSpace, rows: list[dict[str, Any]], study_name: str, storage) -> tuple[int, int, int]:
    """Create or load the Optuna study `study_name` in `storage` and bring it level with the rows:
    close the trials an earlier driver asked for and never told (RUNNING, or WAITING points it
    had queued) as FAIL, and tell every row the study does not hold yet (matched by trial id).
    Returns (rows the study holds, of them told now, stale trials closed). A row whose parameters
    today's space cannot hold stays a row, untold."""
    import optuna
    from optuna.trial import TrialState

    study = optuna.create_study(storage=storage, study_name=study_name, directions=DIRECTIONS, load_if_exists=True)
    held, closed = set(), 0
    for t in study.get_trials(deepcopy=False):
        if t.state in (TrialState.RUNNING, TrialState.WAITING):
            storage.set_trial_state_values(t._trial_id, TrialState.FAIL)
            closed += 1
        elif t.state == TrialState.COMPLETE:
            held.add(t.user_attrs.get("trial_id"))
    dists, told, holds = space.optuna_space(), 0, 0
    for row in rows:
        point = point_of_row(space, row)
        if point is None:
            continue
        if row.get("trial_id") in held:
            holds += 1
            continue
        failed = row.get("status") not in ("ok", "stopped")
        try:
            study.add_trial(optuna.trial.create_trial(
                params=point, distributions=dists, values=objectives(row),
                user_attrs={"trial_id": row.get("trial_id"), **({"error": str(row.get("error"))[:500]} if failed else {})},
                system_attrs={f"constraints:{FAILED}": 1.0 if failed else 0.0}))
        except ValueError:
            continue
        told += 1
    return holds + told, told, closed
