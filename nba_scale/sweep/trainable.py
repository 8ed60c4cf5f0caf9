"""What runs inside one Ray Tune trial: `run_trial` with per-epoch reports and checkpoints.

One code path for every resource shape. `trial_loop(config, session)` is the trial; only the
session differs:

- one process (a CPU trial, a whole GPU, or a fraction such as `--gpus-per-trial 0.25` so that
  several trials share a GPU): the Tune function trainable calls it with Tune's own session;
- several processes (`--gpus-per-trial 2`, or `--workers-per-trial 2` on CPUs): the trainable
  launches a Ray Train `TorchTrainer` whose every worker calls it with Ray Train's session.
  Ray Train sets up `torch.distributed` and the env vars Accelerate reads, so the Accelerate
  loop in `training.train` runs data-parallel unchanged (each rank takes a disjoint shard of the
  batch, the global batch size stays what the config says). Rank 0's reports reach Tune through
  `TuneReportCallback`; the Train run's own checkpoints live under the sweep's `_train/TRIAL_ID`
  so a resumed Tune trial resumes its Train run from the last epoch.

A trial's config holds either `__base__` (a sweep: the study's base config, plus the parameters
its searcher sampled as top-level dotted keys) or `cell` (a campaign: the cell's whole config
and the identity of its row; no per-epoch checkpoints, a campaign resumes by cell).

Every trial ends by reporting both objectives, always finite: a failed one its worst values
(ASR 1, BA 0), so that Optuna keeps it in the study (see sweep/tune.py). The Parquet row of
that trial holds NaN instead (sweep/store.py): the worst values are for the searcher alone.
"""
from __future__ import annotations

import hashlib
import json
import math
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Optional

from ..config import ConfigError, flatten, merge, nest
from .store import selected, trial_row

WORST = {"asr": 1.0, "ba": 0.0}


def utility(asr: float, ba: float) -> float:
    """What an early-stopping scheduler ranks trials by (`tune --scheduler asha`): BA - ASR."""
    return ba - asr


def scored(metrics: dict[str, float]) -> dict[str, float]:
    """An epoch report's utility, where the epoch was evaluated (`__epoch_metrics__`)."""
    return {"utility": utility(metrics["asr"], metrics["ba"])} if "asr" in metrics else {}


class Session:
    """Where a trial reads its last checkpoint and sends its reports (Tune or Train)."""

    def __init__(self, get_checkpoint: Callable[[], Any], report: Callable[..., None], checkpoint_cls,
                 is_main: bool = True):
        self.get_checkpoint, self._report, self.checkpoint_cls, self.is_main = (
            get_checkpoint, report, checkpoint_cls, is_main)

    def report(self, metrics: dict, checkpoint_dir: Optional[str] = None) -> None:
        ckpt = self.checkpoint_cls.from_directory(checkpoint_dir) if checkpoint_dir else None
        self._report(metrics, checkpoint=ckpt)

    @classmethod
    def tune(cls) -> "Session":
        import ray.tune as tune

        return cls(tune.get_checkpoint, tune.report, tune.Checkpoint)

    @classmethod
    def train(cls) -> "Session":
        import ray.train as train

        return cls(train.get_checkpoint, train.report, train.Checkpoint,
                   is_main=train.get_context().get_world_rank() == 0)


def unit(config: dict[str, Any]) -> dict[str, Any]:
    """A campaign trial's config with its grid value (`unit`: a `cell`, or the `cells` of a pack)
    in place: the keys every reader of a trial's config expects."""
    return {**{k: v for k, v in config.items() if k != "unit"}, **config.get("unit", {})}


def config_hash(cfg: dict) -> str:
    return hashlib.sha256(json.dumps(cfg, sort_keys=True, default=str).encode()).hexdigest()[:16]


def trial_base(config: dict[str, Any]) -> dict[str, Any]:
    """The trial's config before sampling: a campaign cell's, or a sweep study's base."""
    return config["cell"]["config"] if "cell" in config else config["__base__"]


def sampled(config: dict[str, Any]) -> dict[str, Any]:
    """The parameters the searcher chose for this trial (dotted keys, searcher encoding)."""
    return {k: v for k, v in config.items() if not k.startswith("__") and k != "cell"}


def trial_axes(config: dict[str, Any]) -> dict[str, Any]:
    """What partitions the trial's row, known before it runs (a failed trial's row needs them)."""
    base = trial_base(config) if "cells" not in config else config["cells"][0]["config"]
    attacks = config.get("__attacks__")
    return {"dataset": base.get("dataset"), "attack": "+".join(attacks) if attacks else base.get("attack"),
            "defense": base.get("defense"), "clean_fraction": base.get("clean_fraction"), "seed": base.get("seed")}


def finish(config: dict[str, Any], cfg: dict[str, Any], result: dict[str, Any], started: float,
           point: dict[str, Any]) -> tuple[dict[str, Any], dict[str, float]]:
    """The Parquet row of a finished trial (or pack member) and what its searcher is told."""
    row = trial_row(result)
    row.update({"started": started, "finished": time.time(), "workers": int(config.get("__workers__", 1)),
                "config_hash": config_hash(cfg), "node_id": node_id()})
    if "cell" not in config and "cells" not in config:
        row["is_default"] = point == config.get("__default__")
    if row.get("status") == "ok" and not all(math.isfinite(row.get(k, math.nan)) for k in WORST):
        row.update(status="failed", error="the trial's ASR or BA is not a finite number")
    # The searcher sees the selection split's figures where there is one (store.selected).
    return row, {k: (selected(row, k) if row.get("status") == "ok" else worst) for k, worst in WORST.items()}


def node_id() -> Optional[str]:
    """The Ray node the trial ran on (on a cluster: which machine, for a row that looks wrong)."""
    import ray

    return ray.get_runtime_context().get_node_id() if ray.is_initialized() else None


def pack_loop(config: dict[str, Any], session: Session) -> None:
    """A pack, trained together (`trial.run_pack`): the K points of `__pack__` (`tune --pack K`)
    or the K campaign cells of `cells` (`campaign --pack K`). Each epoch's report carries every
    member's metrics (`asr_m0`, `ba_m0`, ...); the final one, every member's objectives and its
    row (`__rows__`, JSON). A pack restarts from scratch."""
    from ..trial import run_pack
    from .search_space import decode

    if "cells" in config:
        cfgs = [c["config"] for c in config["cells"]]
        points: list[dict[str, Any]] = [{} for _ in cfgs]
    else:
        points = config["__pack__"]
        cfgs = [merge(trial_base(config), nest({k: decode(v) for k, v in p.items()})) for p in points]
    pending: dict[str, Any] = {}

    def flush() -> None:
        if pending:  # a pack goes on while one of its members is promising
            scores = [utility(pending[f"asr_m{k}"], pending[f"ba_m{k}"]) for k in range(len(points))
                      if f"asr_m{k}" in pending]
            session.report({**pending, **({"utility": max(scores)} if scores else {}), "final": False})
            pending.clear()

    def report(epoch: int, state: dict, member: int = 0, **metrics: float) -> None:  # a pack of one: no member
        if pending.get("epoch") != epoch:
            flush()
        pending.update({"epoch": epoch, **{f"{k}_m{member}": v for k, v in metrics.items()}})

    started = time.time()
    try:
        results = run_pack(cfgs, report=None if "cells" in config else report,
                           epoch_metrics=config.get("__epoch_metrics__", True))
    except ConfigError as e:  # sampled values the pack rejects: recorded, the sweep goes on
        results = [{**trial_axes(config), "status": "failed", "error": f"ConfigError: {e}",
                    "config": {k: decode(v) for k, v in p.items()}} for p in points]
    flush()
    final: dict[str, Any] = {"final": True, "pack_size": len(points)}
    rows = []
    for k, (p, cfg, result) in enumerate(zip(points, cfgs, results)):
        row, told = finish(config, cfg, result, started, p)
        rows.append({**row, "member": k, "pack_size": len(points)})
        final.update({f"{m}_m{k}": v for m, v in told.items()})
        final["utility"] = max(final.get("utility", -math.inf), utility(told["asr"], told["ba"]))
    final["status"] = "ok" if any(r["status"] == "ok" for r in rows) else "failed"
    final["error"] = next((r.get("error") for r in rows if r["status"] != "ok"), None)
    session.report({**final, "__rows__": json.dumps(rows, default=str)})


def trial_loop(config: dict[str, Any], session: Session) -> None:
    config = unit(config)
    if "__pack__" in config or "cells" in config:
        return pack_loop(config, session)
    import torch

    from ..checkpoints import CheckpointError, load_tensors, load_weights, save_weights
    from ..trial import run_trial
    from .search_space import decode

    params = {k: decode(v) for k, v in sampled(config).items()}
    cfg = merge(trial_base(config), nest(params))

    def load_state(d: Path) -> dict[str, Any]:  # no pickle: safetensors, weights_only, JSON
        try:
            epoch = int(json.loads((d / "state.json").read_text())["epoch"])
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise CheckpointError(f"unreadable epoch checkpoint {d / 'state.json'} ({type(e).__name__})") from None
        return {"epoch": epoch, "model": load_weights(d / "model.safetensors"),
                "optimizer": load_tensors(d / "optimizer.pt")}

    def resume_state() -> Optional[dict[str, Any]]:
        ckpt = session.get_checkpoint()
        if ckpt is not None:  # Ray Train restarting this run's own workers
            with ckpt.as_directory() as d:
                return load_state(Path(d))
        where = config.get("__resume__", {}).get(config_hash(sampled(config)))
        return load_state(Path(where)) if where else None  # a trial of an interrupted run, or a fresh one

    def report(epoch: int, state: dict, **metrics: float) -> None:
        if not session.is_main:  # every rank reports (Train's barrier); rank 0 alone writes
            session.report({"epoch": epoch, **metrics, **scored(metrics), "final": False})
            return
        with tempfile.TemporaryDirectory() as d:
            save_weights(state["model"], Path(d) / "model.safetensors")
            torch.save(state["optimizer"], Path(d) / "optimizer.pt")
            (Path(d) / "state.json").write_text(json.dumps({"epoch": epoch}))
            session.report({"epoch": epoch, **metrics, **scored(metrics), "final": False}, checkpoint_dir=d)

    started = time.time()
    try:
        if config.get("__attacks__"):
            result = run_across_attacks(cfg, config["__attacks__"])
        else:
            # Campaigns resume by cell, not by epoch: no per-epoch evaluation or checkpoint to pay for.
            result = run_trial(cfg, report=None if "cell" in config else report, resume=resume_state(),
                               epoch_metrics=config.get("__epoch_metrics__", True))
    except ConfigError as e:
        # A sampled value the trial rejects, or an epoch checkpoint it must not load (tampered,
        # truncated): one failed row with the reason and the parameters, so that the sweep goes on
        # and a later --resume counts the point as done instead of retrying it.
        result = {**trial_axes(config), "status": "failed", "error": f"{type(e).__name__}: {e}",
                  "config": flatten(nest(params))}
    row, objectives = finish(config, cfg, result, started, sampled(config))
    row = {k: v for k, v in row.items() if v is not None}
    # The searcher reads `asr`/`ba` of the report: the selection split's figures (`objectives`);
    # the row itself travels whole in `__rows__`, as a pack's do, with the test split's.
    session.report({**row, **objectives, "utility": utility(objectives["asr"], objectives["ba"]), "final": True,
                    "__rows__": json.dumps([row], default=str)})


def run_across_attacks(cfg: dict[str, Any], attacks: list[str]) -> dict[str, Any]:
    """One configuration against several attacks (`tune --objective worst-case`): the trial's
    objectives are the worst ASR and the mean BA over them, with each attack's own ASR and BA as
    `asr_<attack>` / `ba_<attack>` columns. Each attack's trial keeps its own `--set` section
    (`cli.drop_unused_sections`); the row's config holds them all. No per-epoch checkpoints: a
    resumed trial restarts."""
    import statistics

    from ..cli import drop_unused_sections
    from ..trial import run_trial

    parts = [run_trial(drop_unused_sections(merge(cfg, {"attack": a}))) for a in attacks]
    config: dict[str, Any] = {}
    for p in parts:
        config.update(p.get("config") or {})
    # A worst or mean over attacks is no one proportion of test images: no counts, no binomial interval.
    figures = {f"{v}{m}{b}" for v in ("", "val_") for m in ("asr", "ba", "ra") for b in ("", "_before")}
    single = {k for k in parts[0] if k.rsplit("_", 1)[-1] in ("lo", "hi", "k", "n") and k.rsplit("_", 1)[0] in figures}
    out = {**{k: v for k, v in parts[0].items() if k not in single}, "attack": "+".join(attacks), "artifacts": None, "config": config,
           "wall_s": round(sum(p["wall_s"] for p in parts), 3),
           "timings": {"defense_s": round(sum(p.get("timings", {}).get("defense_s", 0.0) for p in parts), 3)}}
    bad = [p for p in parts if p["status"] != "ok"]
    if bad:
        out.update(status="failed", error=f"{bad[0]['attack']}: {bad[0]['error']}")
        return out
    for key, agg in (("asr", max), ("ba", statistics.fmean), ("ra", statistics.fmean),
                     ("asr_before", max), ("ba_before", statistics.fmean)):
        out[key] = agg(p[key] for p in parts)
        if all(f"val_{key}" in p for p in parts):  # the selection split's, aggregated alike
            out[f"val_{key}"] = agg(p[f"val_{key}"] for p in parts)
    for p in parts:
        out[f"asr_{p['attack']}"], out[f"ba_{p['attack']}"] = p["asr"], p["ba"]
    return out


def _train_worker(config: dict[str, Any]) -> None:  # trial_loop unpacks the campaign's unit
    trial_loop(config, Session.train())


def trainable(config: dict[str, Any]) -> None:
    """The Ray Tune trainable: runs the trial here, or across `__workers__` Ray Train workers."""
    workers = int(config.get("__workers__", 1))
    if workers <= 1:
        trial_loop(config, Session.tune())
        return
    import ray.tune as tune
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer
    from ray.tune.integration.ray_train import TuneReportCallback

    gpus, cpus = float(config.get("__gpus__", 0)), float(config.get("__cpus__", 1))
    per_worker = {"CPU": cpus / workers, **({"GPU": gpus / workers} if gpus else {})}
    trainer = TorchTrainer(
        _train_worker, train_loop_config=config,
        scaling_config=ScalingConfig(num_workers=workers, use_gpu=gpus > 0, resources_per_worker=per_worker),
        run_config=RunConfig(name=tune.get_context().get_trial_id(), storage_path=config["__train_storage__"],
                             callbacks=[TuneReportCallback()],
                             failure_config=FailureConfig(max_failures=int(config.get("__max_failures__", 0))),
                             checkpoint_config=CheckpointConfig(num_to_keep=1)))
    trainer.fit()
