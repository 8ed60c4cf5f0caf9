"""The typed plan of one Tune run: everything its trials need besides what was searched.

Ray Tune's param space holds only what varies from trial to trial and is chosen by Tune: a
sweep trial's config is `{"study": ID, "points": [point, ...]}` (its study, and the points its
searcher chose: one, or K for `--pack K`); a fixed trial's (a campaign's cells, a sweep's
confirmation stage) is `{"unit": i}`, the index of its cells in the plan. The rest is the
`RunPlan`, handed to every trial once by `tune.with_parameters` (sweep/trainable.py): each
study's base config, default point and attacks, the cells, the epochs a scheduler scores, the
epoch checkpoints interrupted trials resume from, the resources of a data-parallel trial and when
a trial checkpoints. `RunPlan.members(config)` turns a trial's config into the members it trains,
an unpacked trial being a pack of one: one code path in the trainable, the sink and resume.

Following a parameter from `--set nba.lambda1=1` to its column: `spec.trial_config` layers it
into a study's base (`tune.plan`) -> `StudyPlan.base` -> `Member.config` (a searched one: the
searcher's point, `search_space.decode`d and merged over the base) -> `trial.run_pack` -> the
result's `config` (`spec.flat_config`) -> `store.trial_row` -> the Parquet column `nba_lambda1`.

Resume reads the plan back as data: Tune writes each trial's config (`params.json`), which is the
study and the points, and each epoch checkpoint names its epoch (sweep/resume.py).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from typing import Any, Optional

from ..config import merge, nest

SEARCH, CONFIRM, CAMPAIGN = "search", "confirm", "campaign"  # a row's `stage` (a campaign's rows have none)


@dataclasses.dataclass(frozen=True)
class StudyPlan:
    """One Optuna study of a sweep: an (attack, clean fraction) pair, or a worst-case study."""
    id: str
    base: dict[str, Any]  # its trials' config before sampling (spec.trial_config, selection split set)
    default: dict[str, Any]  # the search space's default point (the paper's configuration), searcher encoding
    attacks: tuple[str, ...] = ()  # `--objective worst-case`: every trial runs each of these

    def each_attack(self) -> tuple[str, ...]:
        """The attacks its trials run (its own, or a worst-case study's every one)."""
        return self.attacks or (self.base["attack"],)


@dataclasses.dataclass(frozen=True)
class Member:
    """What one member of a trial trains and what names its row."""
    config: dict[str, Any]  # its whole trial config
    point: dict[str, Any]  # what its searcher chose (searcher encoding); {} for a fixed cell
    identity: dict[str, Any]  # its row's names known before it runs (sweep, study, stage; a cell's row)
    study: Optional[StudyPlan] = None  # a sweep trial's study


@dataclasses.dataclass(frozen=True)
class ResumeFrom:
    """An epoch checkpoint an interrupted trial of an earlier run left for one point."""
    checkpoint: str  # its folder
    member: int  # which member of that trial the point was (its subfolder m<k>)
    epoch: int


@dataclasses.dataclass(frozen=True)
class CheckpointPolicy:
    """When a trial writes an epoch checkpoint (`--checkpoint-every`, `--checkpoint-s`): after an
    epoch once `every_s` seconds have passed since its last checkpoint (or its start), or every
    `every_epochs` epochs (0: by time alone); never after its last epoch (its row follows at once).
    Each checkpoint copies every member's weights and optimiser state and writes them, blocking:
    a few per trial bound a spot retry's loss without paying that copy every epoch."""
    every_epochs: int = 0
    every_s: float = 120.0

    def due(self, epoch: int, since_s: float) -> bool:
        return (self.every_epochs > 0 and epoch % self.every_epochs == 0) or since_s >= self.every_s

    @property
    def never(self) -> bool:
        return self.every_epochs <= 0 and math.isinf(self.every_s)


NO_CHECKPOINTS = CheckpointPolicy(0, math.inf)


def config_hash(cfg: dict) -> str:
    return hashlib.sha256(json.dumps(cfg, sort_keys=True, default=str).encode()).hexdigest()[:16]


def resume_key(study: str, point: dict[str, Any]) -> str:
    """What names a point of a study in `RunPlan.resume` (two studies may try the same point)."""
    return config_hash({"study": study, "point": point})


@dataclasses.dataclass
class RunPlan:
    """All a Tune run's trials share; see the module's docstring."""
    sweep: str
    stage: str  # SEARCH, CONFIRM or CAMPAIGN: the rows' `stage` (a campaign's rows name their campaign)
    studies: dict[str, StudyPlan] = dataclasses.field(default_factory=dict)
    units: list[list[dict[str, Any]]] = dataclasses.field(default_factory=list)  # fixed trials: cells each
    epoch_metrics: bool | list[int] = False  # which epochs a trial scores for a scheduler (tune.evaluated_epochs)
    resume: dict[str, ResumeFrom] = dataclasses.field(default_factory=dict)  # resume_key -> checkpoint
    checkpoints: CheckpointPolicy = NO_CHECKPOINTS
    pack: int = 1  # `--pack K`: a sweep's trials are packs (their rows name pack and member, a pack of one too)
    pack_mode: str = "auto"  # `--pack-mode`: how they train (trial.run_pack)
    # a data-parallel trial (sweep/execution.py Shape): its Ray Train workers and where they checkpoint
    workers: int = 1
    cpus: float = 1.0
    gpus: float = 0.0
    train_storage: Optional[str] = None
    max_failures: int = 0

    def members(self, config: dict[str, Any]) -> list[Member]:
        """The members a trial of this run trains, from its Tune config."""
        from .search_space import decode

        if "unit" in config:
            return [Member(cell["config"], {}, self._names(config, k))
                    for k, cell in enumerate(self.units[int(config["unit"])])]
        study = self.studies[config["study"]]
        return [Member(merge(study.base, nest({k: decode(v) for k, v in point.items()})), dict(point),
                       self._names(config, i), study) for i, point in enumerate(config["points"])]

    def size(self, config: dict[str, Any]) -> int:
        """How many members the trial trains."""
        return len(config["points"]) if "points" in config else len(self.units[int(config["unit"])])

    def _names(self, config: dict[str, Any], k: int) -> dict[str, Any]:
        """Member k's row names known before it runs, without building its config."""
        if "unit" in config:
            return dict(self.units[int(config["unit"])][k]["row"])
        study = self.studies[config["study"]]
        return {"sweep": self.sweep, "study": study.id, "stage": self.stage,
                "is_default": config["points"][k] == study.default}

    def identity(self, trial_id: str, config: dict[str, Any], k: int) -> dict[str, Any]:
        """Member k's row names: the plan's, its trial id (a pack member's: the pack's id + `-m<k>`,
        with `pack_id` and `member`)."""
        own = self._names(config, k)
        if not self.packed(config):
            return {"trial_id": trial_id, **own} if "unit" not in config else own
        if "unit" in config:  # a cell keeps its own id; the pack is named beside it
            return {**own, "pack_id": trial_id, "member": k, "pack_size": self.size(config)}
        return {**own, "trial_id": f"{trial_id}-m{k}", "pack_id": trial_id, "member": k,
                "pack_size": self.size(config)}

    def packed(self, config: dict[str, Any]) -> bool:
        """The trial's rows name their pack and member: a pack of several, or any trial of a
        sweep that packs (its last pack may hold one point)."""
        return self.size(config) > 1 or ("points" in config and self.pack > 1)

    def label(self, trial_id: str, config: dict[str, Any]) -> str:
        """How the progress lines name a trial."""
        if "unit" in config:
            return " + ".join(c["id"] for c in self.units[int(config["unit"])])
        return f"{config['study']} {trial_id}" if len(self.studies) > 1 else trial_id

    def resume_from(self, config: dict[str, Any]) -> Optional[list[ResumeFrom]]:
        """The checkpoints the trial's members go on from: one per member, all after the same
        epoch, or None (from the start). A pack whose members were interrupted at different
        epochs, or only some of them, starts again (its members train on shared batches)."""
        if "study" not in config or not self.resume:
            return None
        found = [self.resume.get(resume_key(config["study"], p)) for p in config["points"]]
        if any(f is None for f in found) or len({f.epoch for f in found}) != 1:  # type: ignore[union-attr]
            return None
        return found  # type: ignore[return-value]
