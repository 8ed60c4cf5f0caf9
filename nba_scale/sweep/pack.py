"""Packed sweeps (`tune --pack K`): one Ray Tune trial trains K configurations together
(`trial.run_pack`), while the Optuna study still sees K ordinary trials.

`PackSearcher` wraps the study's `OptunaSearch`: for each Tune trial it asks the study K times
(the default point and the restarting points first, as `points_to_evaluate` orders them) and puts
the K points in the trial's config as `__pack__`; when the trial ends it tells the study each
member's objectives (`asr_m0`, `ba_m0`, ... in the final report). The members of a pack share the
backdoored model, the teacher, the clean subset, the seed and the batch order: common random
numbers, so differences between members are the configurations', not the data order's.
"""
from __future__ import annotations

import json
from typing import Any, Optional

from ray.tune.search import Searcher

from .trainable import WORST


class PackSearcher(Searcher):
    """Hands out `total` points of `inner`'s study, `size` per Tune trial."""

    def __init__(self, inner: Searcher, size: int, total: int):
        super().__init__(metric=None, mode=None)  # the study's objectives are per member, told by us
        self.inner, self.size, self.left = inner, size, total
        self.members: dict[str, list[str]] = {}

    def set_search_properties(self, metric: Optional[str], mode: Optional[str], config: dict, **spec) -> bool:
        return True  # the inner searcher has its own space, metrics and modes

    def suggest(self, trial_id: str) -> Optional[dict[str, Any]]:
        if self.left <= 0:
            return Searcher.FINISHED
        ids, points = [], []
        for k in range(min(self.size, self.left)):
            point = self.inner.suggest(f"{trial_id}-m{k}")
            if point is None or point == Searcher.FINISHED:
                break
            ids.append(f"{trial_id}-m{k}")
            points.append(point)
        if not points:
            return None
        self.left -= len(points)
        self.members[trial_id] = ids
        return {"__pack__": points}

    def on_trial_complete(self, trial_id: str, result: Optional[dict] = None, error: bool = False) -> None:
        rows = json.loads(result["__rows__"]) if result and "__rows__" in result else []
        for k, member in enumerate(self.members.pop(trial_id, [])):
            told = None
            if result and not error:
                told = {m: result.get(f"{m}_m{k}", worst) for m, worst in WORST.items()}
                if result.get("final"):  # a failed member is infeasible in the study (sweep/study.py)
                    row = rows[k] if k < len(rows) else {"status": "failed", "error": "no row"}
                    told.update(final=True, status=row.get("status"), error=row.get("error"))
            self.inner.on_trial_complete(member, told, error=told is None)

    def save(self, checkpoint_path: str) -> None:
        self.inner.save(checkpoint_path)  # written for Tune's experiment state; resume.py never reads it

    def restore(self, checkpoint_path: str) -> None:
        raise NotImplementedError("packed sweeps continue from their rows (sweep/resume.py)")
