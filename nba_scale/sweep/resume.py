"""What a sweep's study continues from, read as data only.

The study's Parquet rows are the record of what ran. Continuing a study (`tune --resume`, also
after its Tune state was deleted or lost) reads:

- its rows, which the Optuna study is brought level with (sweep/study.py: `continue_study`),
  so that the sampler learns from every trial that has one;
- the trials that started but left no row (the driver died): their sampled parameters from the
  `params.json` Tune wrote for each trial, and their last epoch checkpoint (safetensors, an
  optimizer state through `torch.load(weights_only=True)`, a JSON epoch), so that they restart
  where they stopped rather than from scratch; a pack's checkpoint holds each member's
  (`m<k>/`), and its points go on from it when they form a pack again (sweep/plan.py
  `RunPlan.resume_from`).

Tune's own experiment state (`tuner.pkl`, `searcher-state-*.pkl`, the trials' `params.pkl`) is
pickles, and a results folder may come from someone else: nothing here reads it, and nothing
calls `Tuner.restore`. A study ends with one row per planned trial: trials are counted by rows,
and an interrupted trial whose parameters already have a row is not run again.
"""
from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any, Optional

from .search_space import SearchSpace, encode
from .store import column_name, is_confirm, read_table, selected
from .plan import config_hash

def study_rows(root: Path, study: str) -> list[dict[str, Any]]:
    """The study's search rows (a `--confirm` stage's rows share its study but are no trials of
    its searcher: sweep/confirm.py)."""
    if not root.exists():
        return []
    return [r for r in read_table(root).to_pylist() if r.get("study") == study and not is_confirm(r)]


def point_of_row(space: SearchSpace, row: dict[str, Any]) -> Optional[dict[str, Any]]:
    """The row's sampled parameters in the searcher's encoding (None when a column is missing)."""
    point = {}
    for p in space.params:
        value = row.get(column_name(p.name))
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return None
        if p.type == "categorical" and isinstance(value, str) and value[:1] in "[{":
            value = json.loads(value)  # lists travel through Parquet as JSON
        point[p.name] = encode(value) if p.type == "categorical" else (int(value) if p.type == "int" else float(value))
    return point


def objectives(row: dict[str, Any]) -> list[float]:
    """What the searcher was told when the trial ended: its ASR and BA, those it had when the
    scheduler stopped it, the worst if it failed."""
    from .trainable import WORST

    # A stopped trial's figures at its stop are its epoch report's, on the selection split where
    # it has one; a finished trial's, the selection split's where it has one (store.selected).
    values = {k: row.get(k + "_at_stop") if row.get("status") == "stopped" else selected(row, k) for k in WORST}
    # (not `row.get(k) or nan`: an ASR of exactly 0 is the best there is, not a missing value)
    ok = row.get("status") in ("ok", "stopped") and all(
        isinstance(v, (int, float)) and math.isfinite(v) for v in values.values())
    return [values[k] if ok else worst for k, worst in WORST.items()]


@dataclasses.dataclass
class Interrupted:
    point: dict[str, Any]  # sampled parameters, searcher encoding
    checkpoint: Optional[Path]  # its last epoch checkpoint folder, if it saved one
    epoch: int  # epochs that checkpoint holds (0: none)
    member: int = 0  # which member of its trial it was (the checkpoint's m<k>)


def _trial_id(trial_dir: Path) -> Optional[str]:
    result = trial_dir / "result.json"
    if result.is_file():
        for line in result.read_text().splitlines():
            try:
                return str(json.loads(line)["trial_id"])
            except (ValueError, KeyError, TypeError):
                continue
    parts = trial_dir.name.split("_")  # trainable_<trial id>_<n>_...
    return parts[1] if len(parts) > 2 else None


def _last_checkpoint(members: int, *folders: Path) -> tuple[Optional[Path], int]:
    """The trial's latest epoch checkpoint holding each of its `members` (sweep/trainable.py
    `save_checkpoint`; one from before packs kept checkpoints holds its one member at its top)."""
    best: tuple[Optional[Path], int] = (None, 0)
    for folder in folders:
        for ckpt in folder.glob("checkpoint_*") if folder.is_dir() else []:
            try:
                epoch = int(json.loads((ckpt / "state.json").read_text())["epoch"])
            except (OSError, ValueError, KeyError, TypeError):
                continue
            held = all((ckpt / f"m{k}" / "model.safetensors").is_file() for k in range(members)) or (
                members == 1 and (ckpt / "model.safetensors").is_file())
            if held and epoch > best[1]:
                best = (ckpt, epoch)
    return best


def _trial_points(tune_dir: Path, params: Path, config: dict[str, Any]) -> tuple[Optional[str], list[dict]]:
    """(its study, its points) from a trial's `params.json`: the plan's `{"study", "points"}`
    (sweep/plan.py), or what a sweep wrote before its studies ran as one Tune run (in
    `_tune/<study>/`: the sampled keys at the top, or a pack's `__pack__`)."""
    if isinstance(config.get("points"), list):
        return config.get("study"), config["points"]
    study = params.relative_to(tune_dir).parts[0]
    if isinstance(config.get("__pack__"), list):
        return study, config["__pack__"]
    return study, [config]


def interrupted_trials(tune_dir: Path, study: str, space: SearchSpace, rows: list[dict[str, Any]]) -> list[Interrupted]:
    """Trials of `study` in earlier runs of the sweep that left no row, one per distinct parameter
    point (the one that got furthest), minus points that have a row."""
    names = {p.name for p in space.params}
    done = {r.get("trial_id") for r in rows}
    done_points = {config_hash(p) for p in (point_of_row(space, r) for r in rows) if p is not None}
    found: dict[str, Interrupted] = {}
    for params in sorted(tune_dir.rglob("params.json")) if tune_dir.is_dir() else []:
        trial_dir = params.parent
        if {"_train", "_confirm"} & set(trial_dir.relative_to(tune_dir).parts):
            continue
        try:
            config = json.loads(params.read_text())
        except (OSError, ValueError):
            continue
        if not isinstance(config, dict):
            continue
        its_study, points = _trial_points(tune_dir, params, config)
        if its_study != study:
            continue
        trial_id = _trial_id(trial_dir)
        points = [{k: v for k, v in p.items() if k in names} for p in points if isinstance(p, dict)]
        ckpt, epoch = _last_checkpoint(len(points), trial_dir, tune_dir / "_train" / str(trial_id))
        for k, point in enumerate(points):
            key = config_hash(point)
            own_id = trial_id if len(points) == 1 else f"{trial_id}-m{k}"
            if own_id in done or set(point) != names or key in done_points:
                continue
            if key not in found or epoch > found[key].epoch:
                found[key] = Interrupted(point, ckpt, epoch, k)
    return list(found.values())
