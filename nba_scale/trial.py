"""`run_trial(config, report=None) -> dict`: one attack, one defense, scored before and after.

spec -> artifacts (attack -> backdoored model -> teacher, from the cache) -> defense -> metrics.

Config (nested dict or dotted keys). Plug-in parameters live in a section named after the
plug-in in use: `{"attack": "badnets", "badnets": {"rate": 0.05}, "defense": "nba", "nba": {"beta": 1}}`
(CLI: `--set badnets.rate=0.05 --set nba.beta=1`).

Backdoored model (`backdoor.*`): 100 epochs, SGD lr 0.1 nesterov momentum 0.9, weight decay
5e-4, batch 128, cosine decay, crop + flip augmentation: the standard WRN CIFAR recipe, cosine
instead of step decay to avoid tuning milestones per budget; augmentation on purpose (NAD's
models were trained without it, which its authors later named as why plain fine-tuning looked so
strong). Teacher (`teacher.*`): the backdoored model fine-tuned, all layers, on the clean subset
for 10 epochs (NAD: 5-10) with the NAD defense schedule: lr 0.1 for 2 epochs then 0.01, nesterov,
weight decay 1e-4, batch 64, augmentation. A gentler constant lr 0.01 left the backdoor in the
teacher (ASR 85 % on synthetic data, vs 0 % with this schedule), and a teacher that keeps the
backdoor gives NBA nothing to align to.
"""
from __future__ import annotations

import copy
import dataclasses
import hashlib
import logging
import math
import time
import traceback
from pathlib import Path
from typing import Any, Callable, Literal, Optional

import torch

from . import __version__
from .artifacts import ArtifactCache
from .attacks import AttackContext, get_attack
from .checkpoints import load_into, save_weights
from .config import ConfigError, build, flatten, merge, nest, require
from .data import DataConfig, load_dataset, stratified_indices
from .defenses import DefenseContext, get_defense
from .metrics import score
from .models import build_model
from .training import OptimConfig, make_accelerator, plain_progress, setup_run, train

log = logging.getLogger("nba_scale")


def backdoor_optim() -> OptimConfig:
    return OptimConfig(epochs=100, lr=0.1, batch_size=128, weight_decay=5e-4, schedule="cosine")


def teacher_optim() -> OptimConfig:
    return OptimConfig(epochs=10, lr=0.1, batch_size=64, weight_decay=1e-4, schedule="step", milestones=(2,))


@dataclasses.dataclass
class TrialConfig:
    dataset: str = "synthetic"  # synthetic | cifar10 | gtsrb | npz:PATH
    attack: str = "badnets"
    defense: str = "nba"
    clean_fraction: float = 0.05  # the defender's stratified clean subset of the training set
    seed: int = 0
    arch: str = "wrn-16-1"
    device: str = "auto"  # auto | cpu | cuda
    precision: Literal["no", "bf16", "fp16"] = "no"
    cache_dir: Optional[str] = None  # artifact cache (default $NBA_CACHE_DIR or ~/.cache/nba_scale/artifacts)
    model_path: Optional[str] = None  # defend these weights (safetensors / state_dict) instead of training one
    save_path: Optional[str] = None  # write the repaired model here (.safetensors)
    eval_exclude_target: bool = False  # NAD's clean accuracy drops target-class test images
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    backdoor: OptimConfig = dataclasses.field(default_factory=backdoor_optim)
    teacher: OptimConfig = dataclasses.field(default_factory=teacher_optim)
    attack_params: dict = dataclasses.field(default_factory=dict)  # from the section named after the attack
    defense_params: dict = dataclasses.field(default_factory=dict)  # from the section named after the defense

    def validate(self) -> None:
        require(0 < self.clean_fraction <= 1, f"clean_fraction={self.clean_fraction} must be in (0, 1]")


# Budgets, applied under the user's own overrides. `smoke`: seconds, for tests and CI; `quick`:
# minutes on one GPU (or a CPU subset); `paper`: the defaults above. `defense.` keys apply to the
# defense in use, when it trains (all but `none`).
PRESETS: dict[str, dict[str, Any]] = {
    "smoke": {"data.synthetic_train": 1000, "data.synthetic_test": 300, "backdoor.epochs": 4,
              "teacher.epochs": 2, "defense.optim.epochs": 2, "clean_fraction": 0.1},
    "quick": {"backdoor.epochs": 30, "teacher.epochs": 10, "defense.optim.epochs": 10},
    "paper": {},
}


def with_preset(config: dict[str, Any], preset: Optional[str]) -> dict[str, Any]:
    if not preset:
        return config
    if preset not in PRESETS:
        raise ConfigError(f"unknown preset {preset!r}; known: {', '.join(PRESETS)}")
    cfg = nest(config)
    defense = cfg.get("defense", "nba")
    trains = any(f.name == "optim" for f in dataclasses.fields(get_defense(defense).Config))
    base = {}
    for k, v in PRESETS[preset].items():
        if k.startswith("defense."):
            if not trains:
                continue
            k = defense + k[len("defense"):]
        base[k] = v
    return merge(nest(base), cfg)


def parse_config(config: dict[str, Any]) -> TrialConfig:
    """Nested or dotted dict -> TrialConfig; plug-in sections move into attack/defense_params."""
    cfg = nest(config)
    attack, defense = cfg.get("attack", "badnets"), cfg.get("defense", "nba")
    for key, name in (("attack_params", attack), ("defense_params", defense)):
        if isinstance(name, str) and isinstance(cfg.get(name), dict):
            cfg[key] = {**cfg.get(key, {}), **cfg.pop(name)}
    return build(TrialConfig, cfg)


def _fingerprint(x: torch.Tensor, y: torch.Tensor) -> str:
    h = hashlib.sha256()
    h.update(str(tuple(x.shape)).encode())
    h.update(y.numpy().tobytes())
    h.update(x[:: max(1, len(x) // 512)].numpy().tobytes())  # a sparse content sample, cheap on 50k images
    return h.hexdigest()[:16]


def prepare_artifacts(config: dict[str, Any]) -> dict[str, Any]:
    """Build (or find) the trial's backdoored model and teacher without defending: a sweep driver
    calls this once per study so that its trials all start from the cache. Its stderr is often a
    log file: epoch lines, not the terminal's bar, show that the minutes of training progress."""
    with plain_progress():
        return run_trial(config, artifacts_only=True)


def run_trial(config: dict[str, Any], report: Optional[Callable[..., None]] = None,
              resume: Optional[dict[str, Any]] = None, artifacts_only: bool = False) -> dict[str, Any]:
    """Run one trial; never raises for failures inside training (status "failed" + error), only
    for bad configuration (`ConfigError`, one line naming the fix).

    `report(epoch=, ba=, asr=, ra=, state=)` is called after each defense epoch when given;
    `state` = {"epoch", "model", "optimizer"} (state dicts) is what `resume` takes back to
    continue an interrupted defense after that epoch.
    """
    t_start = time.time()
    cfg = parse_config(config)
    attack_cls, defense_cls = get_attack(cfg.attack), get_defense(cfg.defense)
    defense = defense_cls(cfg.defense_params)
    ds = load_dataset(cfg.dataset, cfg.data, cfg.seed)
    attack = attack_cls(cfg.attack_params, ds.num_classes, cfg.seed,
                        class_counts=torch.bincount(ds.y_train, minlength=ds.num_classes))
    result: dict[str, Any] = {
        "dataset": cfg.dataset, "attack": cfg.attack, "defense": cfg.defense,
        "clean_fraction": cfg.clean_fraction, "seed": cfg.seed,
        "config": flatten({k: v for k, v in dataclasses.asdict(cfg).items()
                           if k not in ("attack_params", "defense_params")}
                          | {cfg.attack: dataclasses.asdict(attack.params), cfg.defense: dataclasses.asdict(defense.cfg)}),
        "version": __version__, "status": "ok", "error": None,
    }
    try:
        result.update(_pipeline(cfg, ds, attack, defense, report, resume, artifacts_only))
    except ConfigError:
        raise
    except Exception as e:  # NaN losses, OOM, a broken plug-in: the trial fails, the caller goes on
        log.debug("trial failed:\n%s", traceback.format_exc())
        result.update(status="failed", error=f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}")
    result["wall_s"] = round(time.time() - t_start, 3)
    return result


def dataset_spec(cfg: TrialConfig, ds) -> dict[str, Any]:
    # An npz is keyed by its content, not its path: the same file elsewhere hits the same artifacts.
    return {"dataset": "npz" if cfg.dataset.startswith("npz:") else cfg.dataset,
            "fingerprint": _fingerprint(ds.x_train, ds.y_train),
            "test_fingerprint": _fingerprint(ds.x_test, ds.y_test),
            "data": {k: v for k, v in dataclasses.asdict(cfg.data).items() if k != "data_dir"}}


def attack_context(cfg: TrialConfig, ds, data_spec: dict, attack, acc, cache: ArtifactCache,
                   new_model: Callable[[], torch.nn.Module]) -> AttackContext:
    """The attacker's side of the cache: a clean model (the backdoor recipe on clean data, the
    surrogate TrojanNN and CLA learn from) and the attack's own computed tensors."""
    clean_spec = {**data_spec, "arch": cfg.arch, "train": dataclasses.asdict(cfg.backdoor),
                  "seed": cfg.seed, "precision": cfg.precision}

    def clean_model() -> torch.nn.Module:
        def build():
            setup_run(cfg.seed + 7)
            m = new_model()
            train(m, ds.x_train, ds.y_train, cfg.backdoor, acc, flip=ds.flip, seed=cfg.seed + 7, desc="clean model")
            return m.state_dict(), {}

        state, meta, _ = cache.get_or_build("clean", clean_spec, build, acc)
        m = new_model().to(acc.device)
        m.load_state_dict(state)
        for q in m.parameters():  # the attacker only reads it (gradients w.r.t. inputs)
            q.requires_grad_(False)
        return m.eval()

    def artifact(what: str, build: Callable[[], dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        spec = {**clean_spec, "attack": attack.describe(), "what": what}
        return cache.get_or_build(f"attack-{attack.name}", spec, lambda: (build(), {}), acc)[0]

    return AttackContext(clean_model, artifact, acc.device)


def poison_only(config: dict[str, Any]):
    """The attack alone, no training of the attacked model: (cfg, dataset, attack, poisoned data,
    attack context). For looking at poisons (attacks.show) and measuring a clean model's ASR."""
    cfg = parse_config(config)
    ds = load_dataset(cfg.dataset, cfg.data, cfg.seed)
    attack = get_attack(cfg.attack)(cfg.attack_params, ds.num_classes, cfg.seed,
                                    class_counts=torch.bincount(ds.y_train, minlength=ds.num_classes))
    acc = make_accelerator(cfg.device, cfg.precision)
    ctx = attack_context(cfg, ds, dataset_spec(cfg, ds), attack, acc, ArtifactCache(cfg.cache_dir),
                         lambda: build_model(cfg.arch, ds.num_classes, ds.mean, ds.std))
    return cfg, ds, attack, attack.poison(ds.x_train, ds.y_train, ds.x_test, ds.y_test, ctx), ctx


def _pipeline(cfg: TrialConfig, ds, attack, defense, report, resume, artifacts_only=False) -> dict[str, Any]:
    setup_run(cfg.seed)
    acc = make_accelerator(cfg.device, cfg.precision)
    dev = acc.device
    cache = ArtifactCache(cfg.cache_dir)
    timings: dict[str, float] = {}
    new_model = lambda: build_model(cfg.arch, ds.num_classes, ds.mean, ds.std)  # noqa: E731
    data_spec = dataset_spec(cfg, ds)
    ctx = attack_context(cfg, ds, data_spec, attack, acc, cache, new_model)
    poisoned = attack.poison(ds.x_train, ds.y_train, ds.x_test, ds.y_test, ctx)

    def evaluate(model) -> dict[str, float]:
        return score(model, ds.x_test, ds.y_test, poisoned, dev, attack.params.target)

    def pick(metrics: dict[str, float]) -> dict[str, float]:
        ba = metrics["ba_nontarget"] if cfg.eval_exclude_target else metrics["ba"]
        return {"ba": ba, "asr": metrics["asr"], "ra": metrics["ra"]}

    bd_spec = {**data_spec, "attack": attack.describe(), "arch": cfg.arch,
               "train": dataclasses.asdict(cfg.backdoor), "seed": cfg.seed, "precision": cfg.precision}

    def build_backdoor():
        setup_run(cfg.seed)
        model = new_model()
        t0 = time.time()
        train(model, poisoned.x_train, poisoned.y_train, cfg.backdoor, acc, flip=ds.flip, seed=cfg.seed,
              desc=f"backdoor[{attack.name}]")
        timings["backdoor_train_s"] = time.time() - t0
        return model.state_dict(), {"metrics": evaluate(model)}

    artifacts: dict[str, Any] = {}
    model = new_model().to(dev)
    if cfg.model_path:
        load_into(model, cfg.model_path)
        before = evaluate(model)
        bd_key = "file:" + hashlib.sha256(Path(cfg.model_path).read_bytes()).hexdigest()[:32]
    else:
        state, meta, built = cache.get_or_build("backdoor", bd_spec, build_backdoor, acc)
        model.load_state_dict(state)
        before, bd_key = meta["metrics"], meta["key"]
        artifacts["backdoor"] = {"key": bd_key, "cached": not built}

    subset = stratified_indices(ds.y_train, fraction=cfg.clean_fraction, seed=cfg.seed)
    x_clean, y_clean = ds.x_train[subset], ds.y_train[subset]  # clean images, true labels
    teacher = None
    if defense.needs_teacher:
        t_spec = {"parent": bd_key, "clean_fraction": cfg.clean_fraction, "train": dataclasses.asdict(cfg.teacher),
                  "seed": cfg.seed, "precision": cfg.precision}

        def build_teacher():
            setup_run(cfg.seed)
            t = copy.deepcopy(model)
            t0 = time.time()
            train(t, x_clean, y_clean, cfg.teacher, acc, flip=ds.flip, seed=cfg.seed + 1, desc="teacher")
            timings["teacher_train_s"] = time.time() - t0
            return t.state_dict(), {"metrics": evaluate(t)}

        t_state, t_meta, built = cache.get_or_build("teacher", t_spec, build_teacher, acc)
        teacher = new_model().to(dev)
        teacher.load_state_dict(t_state)
        artifacts["teacher"] = {"key": t_meta["key"], "cached": not built, **pick(t_meta["metrics"])}
    if artifacts_only:
        return {"artifacts": artifacts, "timings": {k: round(v, 3) for k, v in timings.items()},
                **{f"{k}_before": v for k, v in pick(before).items()}}

    def on_epoch_end(epoch: int, m: torch.nn.Module, optimizer) -> None:
        if report is not None:
            # Copies: the caller may keep them while training goes on (0.7 MB for WRN-16-1).
            state = {"epoch": epoch + 1, "model": {k: v.detach().clone() for k, v in m.state_dict().items()},
                     "optimizer": copy.deepcopy(optimizer.state_dict())}
            report(epoch=epoch + 1, **pick(evaluate(m)), state=state)

    setup_run(cfg.seed)
    t0 = time.time()
    ctx = DefenseContext(x_clean, y_clean, ds.num_classes, ds.flip, acc, cfg.seed, teacher, attack, on_epoch_end)
    if resume:
        defense.restore(model, resume["model"])
        ctx.start_epoch, ctx.optimizer_state = int(resume["epoch"]), resume.get("optimizer")
    repaired = defense.repair(model, ctx)
    timings["defense_s"] = time.time() - t0
    after = pick(evaluate(repaired))
    if cfg.save_path:
        save_weights(repaired.state_dict(), cfg.save_path, metadata={"arch": cfg.arch, "defense": cfg.defense})
    before = pick(before)
    if not all(math.isfinite(v) for v in after.values()):
        raise FloatingPointError("metrics are not finite after the defense")
    return {
        "ba_before": before["ba"], "asr_before": before["asr"], "ra_before": before["ra"],
        **after, "epochs": defense.epochs, "n_clean": len(subset), "n_train": len(ds.x_train),
        "n_test": len(ds.x_test), "n_poison_test": len(poisoned.x_test), "device": str(dev),
        "processes": acc.num_processes,
        **{f"{cfg.defense}_{k}": v for k, v in defense.info.items()},
        "artifacts": artifacts, "timings": {k: round(v, 3) for k, v in timings.items()},
    }
