"""What runs inside one Ray Tune trial: `run_trial` with per-epoch reports and checkpoints.

One code path for every resource shape and every trial: `trial_loop(plan, config, session)`
trains the members `plan.members(config)` names (sweep/plan.py: one, or a pack) with
`trial.run_pack`; only the session differs:

- one process (a CPU trial, a whole GPU, or a fraction such as `--gpus-per-trial 0.25` so that
  several trials share a GPU): the Tune function trainable calls it with Tune's own session;
- several processes (`--gpus-per-trial 2`, or `--workers-per-trial 2` on CPUs): the trainable
  launches a Ray Train `TorchTrainer` whose every worker calls it with Ray Train's session.
  Ray Train sets up `torch.distributed` and the env vars Accelerate reads, so the Accelerate
  loop in `training.train` runs data-parallel unchanged (each rank takes a disjoint shard of the
  batch, the global batch size stays what the config says). Rank 0's reports reach Tune through
  `TuneReportCallback`; the Train run's own checkpoints live under the sweep's `_train/TRIAL_ID`
  so a resumed Tune trial resumes its Train run from the last epoch.

The plan comes through `tune.with_parameters`; Tune's config holds only what Tune chose (a sweep
trial's study and points, a fixed trial's unit). Epoch checkpoints are written when the plan's
`CheckpointPolicy` says (every few minutes or epochs, not every epoch), every member's in one.

Every trial ends by reporting both objectives, always finite: a failed one its worst values
(ASR 1, BA 0), so that Optuna keeps it in the study (see sweep/tune.py). The Parquet row of
that trial holds NaN instead (sweep/store.py): the worst values are for the searcher alone.
"""
from __future__ import annotations

import json
import math
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Optional

from ..config import ConfigError, flatten, merge, nest
from .plan import Member, RunPlan, config_hash
from .search_space import decode
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


def axes(member: Member) -> dict[str, Any]:
    """What partitions a member's row, known before it runs (a failed trial's row needs them)."""
    base = member.config
    attacks = member.study.attacks if member.study else ()
    return {"dataset": base.get("dataset"), "attack": "+".join(attacks) if attacks else base.get("attack"),
            "defense": base.get("defense"), "clean_fraction": base.get("clean_fraction"), "seed": base.get("seed")}


def finish(member: Member, result: dict[str, Any], started: float, workers: int = 1
           ) -> tuple[dict[str, Any], dict[str, float]]:
    """The Parquet row of a finished member and what its searcher is told."""
    row = trial_row(result)
    row.update({"started": started, "finished": time.time(), "workers": workers,
                "config_hash": config_hash(member.config), "node_id": node_id()})
    if row.get("status") == "ok" and not all(math.isfinite(row.get(k, math.nan)) for k in WORST):
        row.update(status="failed", error="the trial's ASR or BA is not a finite number")
    # The searcher sees the selection split's figures where there is one (store.selected).
    return row, {k: (selected(row, k) if row.get("status") == "ok" else worst) for k, worst in WORST.items()}


def node_id() -> Optional[str]:
    """The Ray node the trial ran on (on a cluster: which machine, for a row that looks wrong)."""
    import ray

    return ray.get_runtime_context().get_node_id() if ray.is_initialized() else None


def save_checkpoint(folder: Path, epoch: int, states: dict[int, Any]) -> None:
    """An epoch checkpoint: `state.json` (the epoch, the members) and each member's weights
    (safetensors) and optimiser state in `m<k>/`. No pickle anywhere (checkpoints.py)."""
    import torch

    from ..checkpoints import save_weights

    for k, state in states.items():
        (folder / f"m{k}").mkdir(parents=True, exist_ok=True)
        save_weights(state["model"], folder / f"m{k}" / "model.safetensors")
        torch.save(state["optimizer"], folder / f"m{k}" / "optimizer.pt")
    (folder / "state.json").write_text(json.dumps({"epoch": epoch, "members": sorted(states)}))


def load_checkpoint(folder: Path, member: int) -> dict[str, Any]:
    """Member `member`'s state in an epoch checkpoint (`save_checkpoint`; one written before packs
    kept checkpoints holds one member's files at its top)."""
    from ..checkpoints import CheckpointError, load_tensors, load_weights

    try:
        epoch = int(json.loads((folder / "state.json").read_text())["epoch"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise CheckpointError(f"unreadable epoch checkpoint {folder / 'state.json'} ({type(e).__name__})") from None
    d = folder / f"m{member}" if (folder / f"m{member}").is_dir() else folder
    return {"epoch": epoch, "model": load_weights(d / "model.safetensors"), "optimizer": load_tensors(d / "optimizer.pt")}


def trial_loop(plan: RunPlan, config: dict[str, Any], session: Session) -> None:
    """One Tune trial: its members (`plan.members`: one, or a pack) trained together by
    `trial.run_pack`. Each epoch's report carries every member's figures (`asr_m0`, `loss_m0`,
    `loss_ce_m0`, ...; `utility`, the best member's, where a scheduler scores the epoch) and, when
    the plan's checkpoint policy says so, an epoch checkpoint of every member. The final report
    carries each member's objectives (`asr_m<k>`, `ba_m<k>`) and its row (`__rows__`, JSON). The
    driver keeps the epoch reports as the trial's curves (execution.ParquetSink)."""
    from ..trial import run_pack

    members = plan.members(config)
    pending: dict[str, Any] = {}
    states: dict[int, Any] = {}
    clock: dict[str, Any] = {"last": time.time(), "due": False}

    def flush() -> None:
        if not pending:
            return
        scores = [utility(pending[f"asr_m{k}"], pending[f"ba_m{k}"]) for k in range(len(members))
                  if f"asr_m{k}" in pending]  # a pack goes on while one of its members is promising
        metrics = {**pending, **({"utility": max(scores)} if scores else {}), "final": False}
        pending.clear()
        if states and session.is_main:
            with tempfile.TemporaryDirectory() as d:
                save_checkpoint(Path(d), metrics["epoch"], states)
                states.clear()
                session.report(metrics, checkpoint_dir=d)
            clock["last"] = time.time()
        else:
            states.clear()
            session.report(metrics)

    def report(epoch: int, state, member: int = 0, **metrics: float) -> None:  # a pack of one: no member
        if pending.get("epoch") != epoch:
            flush()
            clock["due"] = (epoch < max_epochs and not plan.checkpoints.never
                            and plan.checkpoints.due(epoch, time.time() - clock["last"]))
        if clock["due"]:  # copied now (trial.EpochState): training goes on after this call
            states[member] = {"model": state["model"], "optimizer": state["optimizer"]}
        pending.update({"epoch": epoch, **{f"{k}_m{member}": v for k, v in metrics.items()}})

    def resume_states() -> Optional[list[dict[str, Any]]]:
        ckpt = session.get_checkpoint()
        if ckpt is not None:  # Tune or Ray Train restarting this trial (--max-failures)
            with ckpt.as_directory() as d:
                return [load_checkpoint(Path(d), k) for k in range(len(members))]
        found = plan.resume_from(config)  # a trial of an interrupted run
        return [load_checkpoint(Path(f.checkpoint), f.member) for f in found] if found else None

    from ..defenses import get_defense
    from ..spec import parse_config

    started = time.time()
    try:
        attacks = members[0].study.attacks if members[0].study else ()
        if attacks:  # its attacks one after the other, no epoch reports (run_across_attacks)
            results = [run_across_attacks(members[0].config, list(attacks))]
        else:
            max_epochs = max(get_defense(c.defense)(c.defense_params).epochs for c in map(parse_config, (
                m.config for m in members)))
            results = run_pack([m.config for m in members], report=report, resume=resume_states(),
                               epoch_metrics=plan.epoch_metrics, pack_mode=plan.pack_mode)
    except ConfigError as e:
        # A sampled value the trial rejects, or an epoch checkpoint it must not load (tampered,
        # truncated): a failed row per member with the reason and the parameters, so that the sweep
        # goes on and a later --resume counts the point as done instead of retrying it.
        results = [{**axes(m), "status": "failed", "error": f"{type(e).__name__}: {e}",
                    "config": flatten(nest({k: decode(v) for k, v in m.point.items()}))} for m in members]
    flush()
    final: dict[str, Any] = {"final": True}
    rows = []
    for k, (m, result) in enumerate(zip(members, results)):
        row, told = finish(m, result, started, plan.workers)
        row = {k2: v for k2, v in row.items() if v is not None}
        rows.append({**row, "member": k, "pack_size": len(members)} if plan.packed(config) else row)
        final.update({f"{name}_m{k}": v for name, v in told.items()})
        final["utility"] = max(final.get("utility", -math.inf), utility(told["asr"], told["ba"]))
    final["status"] = "ok" if any(r["status"] == "ok" for r in rows) else "failed"
    final["error"] = next((r.get("error") for r in rows if r["status"] != "ok"), None)
    session.report({**final, "__rows__": json.dumps(rows, default=str)})


def run_across_attacks(cfg: dict[str, Any], attacks: list[str]) -> dict[str, Any]:
    """One configuration against several attacks (`tune --objective worst-case`): the trial's
    objectives are the worst ASR and the mean BA over them, with each attack's own ASR and BA as
    `asr_<attack>` / `ba_<attack>` columns. Each attack's trial keeps its own `--set` section
    (`spec.drop_unused_sections`); the row's config holds them all. No per-epoch checkpoints: a
    resumed trial restarts."""
    import statistics

    from ..spec import drop_unused_sections
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


def _train_worker(loop_config: dict[str, Any]) -> None:
    trial_loop(loop_config["plan"], loop_config["config"], Session.train())


def trainable(config: dict[str, Any], plan: RunPlan) -> None:
    """The Ray Tune trainable (`tune.with_parameters(trainable, plan=...)`): runs the trial here,
    or across the plan's Ray Train workers."""
    if plan.workers <= 1:
        trial_loop(plan, config, Session.tune())
        return
    import ray.tune as tune
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer
    from ray.tune.integration.ray_train import TuneReportCallback

    per_worker = {"CPU": plan.cpus / plan.workers, **({"GPU": plan.gpus / plan.workers} if plan.gpus else {})}
    trainer = TorchTrainer(
        _train_worker, train_loop_config={"plan": plan, "config": config},
        scaling_config=ScalingConfig(num_workers=plan.workers, use_gpu=plan.gpus > 0, resources_per_worker=per_worker),
        run_config=RunConfig(name=tune.get_context().get_trial_id(), storage_path=plan.train_storage,
                             callbacks=[TuneReportCallback()],
                             failure_config=FailureConfig(max_failures=plan.max_failures),
                             checkpoint_config=CheckpointConfig(num_to_keep=1)))
    trainer.fit()
