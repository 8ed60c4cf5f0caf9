"""A sweep's studies in one Ray Tune run: one searcher and one scheduler per study behind the
single searcher and scheduler Tune takes.

`StudiesSearcher` holds each study's Optuna searcher (sweep/study.py) and how many trials it has
left. Asked for a trial, it takes the next study in turn that has points to give and asks its
searcher for up to `pack` of them (`tune --pack K`: K points trained together in one trial,
while the Optuna study still sees K ordinary trials); the trial's config is
`{"study": ID, "points": [...]}` (sweep/plan.py). When the trial ends it tells that study's
searcher each point's objectives (`asr_m<k>`, `ba_m<k>` of the final report). So Tune's
`--max-concurrent` fills the machine or the cluster across every (attack, clean fraction) study at
once, rather than one study after another, each with its idle tail and the next one's artifacts
built in between.

`StudiesScheduler` gives each study its own early-stopping scheduler (a fresh ASHA per study, as
before): ASHA ranks trials by BA - ASR, which is not comparable between attacks.

The members of a pack share the backdoored model, the teacher, the clean subset, the seed and
the batch order: common random numbers, so differences between members are the configurations',
not the data order's.
"""
from __future__ import annotations

import json
from typing import Any, Callable, Optional

from ray.tune.schedulers import FIFOScheduler, TrialScheduler
from ray.tune.search import Searcher

from .trainable import WORST


class StudiesSearcher(Searcher):
    """Hands out each study's `budget` points, `pack` per Tune trial, the studies in turn."""

    def __init__(self, searchers: dict[str, Searcher], budgets: dict[str, int], pack: int = 1):
        super().__init__(metric=None, mode=None)  # each study's searcher has its own metrics, told by us
        self.searchers, self.left, self.pack = searchers, dict(budgets), pack
        self.members: dict[str, tuple[str, list[str]]] = {}
        self.turn = 0

    def set_search_properties(self, metric: Optional[str], mode: Optional[str], config: dict, **spec) -> bool:
        return True  # the inner searchers have their own spaces, metrics and modes

    def suggest(self, trial_id: str) -> Optional[dict[str, Any]]:
        studies = [s for s in self.searchers if self.left[s] > 0]
        if not studies:
            return Searcher.FINISHED
        for i in range(len(studies)):
            study = studies[(self.turn + i) % len(studies)]
            ids, points = [], []
            for k in range(min(self.pack, self.left[study])):
                # the Optuna trial names the row's trial id (plan.RunPlan.identity): a pack's members `<id>-m<k>`
                member = f"{trial_id}-m{k}" if self.pack > 1 else trial_id
                point = self.searchers[study].suggest(member)
                if point is None or point == Searcher.FINISHED:
                    break
                ids.append(member)
                points.append(point)
            if points:
                self.turn = (self.turn + i + 1) % max(1, len(studies))
                self.left[study] -= len(points)
                self.members[trial_id] = (study, ids)
                return {"study": study, "points": points}
        return None  # every study with points left is waiting (Optuna's constant liar, a limiter)

    def on_trial_complete(self, trial_id: str, result: Optional[dict] = None, error: bool = False) -> None:
        study, ids = self.members.pop(trial_id, (None, []))
        rows = json.loads(result["__rows__"]) if result and "__rows__" in result else []
        for k, member in enumerate(ids):
            told = None
            if result and not error:
                told = {m: result.get(f"{m}_m{k}", worst) for m, worst in WORST.items()}
                if result.get("final"):  # a failed member is infeasible in the study (sweep/study.py)
                    row = rows[k] if k < len(rows) else {"status": "failed", "error": "no row"}
                    told.update(final=True, status=row.get("status"), error=row.get("error"))
            self.searchers[study].on_trial_complete(member, told, error=told is None)

    def save(self, checkpoint_path: str) -> None:
        pass  # a sweep continues from its rows (sweep/resume.py), never from Tune's searcher state

    def restore(self, checkpoint_path: str) -> None:
        raise NotImplementedError("sweeps continue from their rows (sweep/resume.py)")


class StudiesScheduler(FIFOScheduler):
    """One scheduler per study (`make(study)` builds it at the study's first trial), each seeing
    only its own study's trials; trials run in Tune's order (FIFO), as ASHA's own do."""

    def __init__(self, make: Callable[[str], TrialScheduler]):
        super().__init__()
        self.make, self.inner = make, {}
        self.metric_mode: Optional[tuple] = None

    def _of(self, trial) -> TrialScheduler:
        study = trial.config["study"]
        if study not in self.inner:
            self.inner[study] = self.make(study)
        return self.inner[study]

    def on_trial_add(self, tune_controller, trial):
        self._of(trial).on_trial_add(tune_controller, trial)

    def on_trial_error(self, tune_controller, trial):
        self._of(trial).on_trial_error(tune_controller, trial)

    def on_trial_result(self, tune_controller, trial, result: dict) -> str:
        return self._of(trial).on_trial_result(tune_controller, trial, result)

    def on_trial_complete(self, tune_controller, trial, result: dict):
        self._of(trial).on_trial_complete(tune_controller, trial, result)

    def on_trial_remove(self, tune_controller, trial):
        self._of(trial).on_trial_remove(tune_controller, trial)

    def debug_string(self) -> str:
        return "; ".join(f"{s}: {sch.debug_string()}" for s, sch in self.inner.items())
