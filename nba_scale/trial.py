"""`run_trial(config, report=None) -> dict`: one attack, one defense, scored before and after.

spec -> artifacts (attack -> backdoored model -> teacher, from the cache) -> defense -> metrics.

Config (nested dict or dotted keys). Plug-in parameters live in a section named after the
plug-in in use: `{"attack": "badnets", "badnets": {"rate": 0.05}, "defense": "nba", "nba": {"beta": 1}}`
(CLI: `--set badnets.rate=0.05 --set nba.beta=1`). Its spec (`TrialConfig`, presets, layering,
validation, the pack rules) lives in nba_scale/spec.py; drivers build it with `spec.trial_config`.

Backdoored model (`backdoor.*`): 100 epochs, SGD lr 0.1 nesterov momentum 0.9, weight decay
5e-4, batch 128, cosine decay, crop + flip augmentation: the standard WRN CIFAR recipe, cosine
instead of step decay to avoid tuning milestones per budget; augmentation on purpose (NAD's
models were trained without it, which its authors later named as why plain fine-tuning looked so
strong). Teacher (`teacher.*`): the backdoored model fine-tuned, all layers, on the clean subset
for 10 epochs (NAD: 5-10) with the NAD defense schedule: lr 0.1 for 2 epochs then 0.01, nesterov,
weight decay 1e-4, batch 64, augmentation. A gentler constant lr 0.01 left the backdoor in the
teacher (ASR 85 % on synthetic data, vs 0 % with this schedule), and a teacher that keeps the
backdoor gives NBA nothing to align to.

The steps (`_setup`, `_backdoored`, `_teacher`, `_defend`) are shared by `run_trial` and
`prepare_artifacts` (a driver building a study's artifacts before its trials start); the cache
keys of every artifact come from `artifact_specs` alone.
"""
from __future__ import annotations

import copy
import dataclasses
import functools
import hashlib
import logging
import math
import time
import traceback
from pathlib import Path
from collections.abc import Collection, Mapping
from typing import Any, Callable, Optional

import torch

from .artifacts import ArtifactCache, spec_key
from .attacks import Attack, AttackContext, get_attack
from .checkpoints import load_into, save_weights
from .config import ConfigError, build, key_fields
from .data import Dataset, PoisonedData, load_dataset, load_poisoned_test, stratified_indices
from .defenses import Defense, DefenseContext, get_defense
from .metrics import der, score
from .models import build_model
from .provenance import code_version, device_name
# The spec, re-exported: `from nba_scale.trial import TrialConfig, PRESETS, with_preset, ...` keeps working.
from .spec import (ARCH_LR, PRESETS, TrialConfig, backdoor_optim, check_config, check_pack,  # noqa: F401
                   flat_config, parse_config, with_preset)
from .stats import with_counts
from .training import (LossFn, NonFiniteLoss, OptimConfig, cross_entropy, make_accelerator, plain_progress,
                       recording_losses, setup_run, train)

log = logging.getLogger("nba_scale")


def _fingerprint(x: torch.Tensor, y: torch.Tensor) -> str:
    h = hashlib.sha256()
    h.update(str(tuple(x.shape)).encode())
    h.update(y.numpy().tobytes())
    h.update(x[:: max(1, len(x) // 512)].numpy().tobytes())  # a sparse content sample, cheap on 50k images
    return h.hexdigest()[:16]


def _recipe(optim: OptimConfig) -> dict[str, Any]:
    """A stage's schedule for its artifact's key; its precision is keyed beside it, resolved, so a
    bf16 stage keys alike whether the trial or the stage asked for bf16."""
    fields = {k: v for k, v in dataclasses.asdict(optim).items() if k != "precision"}
    # `optimizer` came after `cutout`: each is left out at its old behaviour, as the keys before it.
    return key_fields(key_fields(fields, {"optimizer": "sgd"}), optim.added_later)


def artifact_specs(cfg: TrialConfig, ds: Dataset, attack: Attack) -> dict[str, dict[str, Any]]:
    """What decides each cached artifact of a trial, hence its key: `clean` (the attacker's clean
    model, the recipe on clean data), `backdoor` (the attacked model) and `teacher` (the backdoored
    model, or the brought `model_path`, fine-tuned on the clean subset). An npz is keyed by its
    content, not its path: the same file elsewhere hits the same artifacts."""
    data = {"dataset": cfg.dataset.split(":")[0] if cfg.dataset.startswith(("npz:", "folder:")) else cfg.dataset,
            "fingerprint": _fingerprint(ds.x_train, ds.y_train),
            "test_fingerprint": _fingerprint(ds.x_test, ds.y_test),
            # val_size is not keyed: a selection split changes no training image, and where it is
            # held out of the test split, test_fingerprint says so.
            # image_size is keyed only when set (artifacts built before it existed keep their keys).
            "data": key_fields({k: v for k, v in dataclasses.asdict(cfg.data).items() if k not in ("data_dir", "val_size")},
                               {"image_size": None})}
    clean = {**data, "arch": cfg.arch, "train": _recipe(cfg.backdoor), "seed": cfg.seed,
             "precision": cfg.backdoor.precision or cfg.precision}
    backdoor = {**clean, "attack": attack.describe()}
    parent = ("file:" + hashlib.sha256(Path(cfg.model_path).read_bytes()).hexdigest()[:32] if cfg.model_path
              else spec_key(backdoor))
    teacher = {"parent": parent, "clean_fraction": cfg.clean_fraction, "train": _recipe(cfg.teacher),
               "seed": cfg.seed, "precision": cfg.teacher.precision or cfg.precision}
    return {"clean": clean, "backdoor": backdoor, "teacher": teacher}


@dataclasses.dataclass
class Setup:
    """Everything a trial's steps share: the data, the attack and its poisoned data, the device,
    the cache and the artifacts' specs; `timings` collects what each step measured."""
    cfg: TrialConfig
    ds: Dataset
    attack: Attack
    acc: Any
    cache: ArtifactCache
    specs: dict[str, dict[str, Any]]
    timings: dict[str, float]
    poisoned: Optional[PoisonedData] = None  # what the trial is scored on: a brought test set in place of ours
    own: Optional[PoisonedData] = None  # the attack's own poisoned data: a cached artifact's metrics
    val: Optional[PoisonedData] = None  # the selection split's triggered images (data.val_size), if any

    def new_model(self) -> torch.nn.Module:
        return build_model(self.cfg.arch, self.ds.num_classes, self.ds.mean, self.ds.std, self.cfg.taps)

    def evaluate(self, model: torch.nn.Module, own: bool = False) -> dict[str, float]:
        """The model's metrics on the trial's scored set, or (`own`) on the attack's own triggered
        set: what a cached artifact keeps, whatever set the trial that built it was scored on."""
        p = self.own if own else self.poisoned
        return score(model, self.ds.x_test, self.ds.y_test, p, self.acc.device, self.target_of(p))

    def evaluate_val(self, model: torch.nn.Module) -> dict[str, float]:
        """The model's metrics on the selection split (`ds.x_val` and its triggered copies)."""
        return score(model, self.ds.x_val, self.ds.y_val, self.val, self.acc.device, self.target_of(self.val))

    def selection(self, model: torch.nn.Module) -> dict[str, float]:
        """What a searcher or a scheduler ranks the model by: its metrics on the selection split
        where the trial has one, else on the test split."""
        return self.pick(self.evaluate_val(model) if self.val is not None else self.evaluate(model))

    def target_of(self, p: Optional[PoisonedData]) -> int:
        """The attack's target label (a brought test set's, where all its images share one)."""
        t = p.y_test_target if p is not None else None
        return int(t[0]) if t is not None and len(t) and bool((t == t[0]).all()) else self.attack.params.target

    def counts(self, val: bool = False) -> dict[str, int]:
        """How many images each reported metric is a fraction of (`stats.with_counts`), on the
        test split or (`val`) the selection split."""
        p, y = (self.val, self.ds.y_val) if val else (self.poisoned, self.ds.y_test)
        n_ba = int((y != self.target_of(p)).sum()) if self.cfg.eval_exclude_target else len(y)
        return {"ba": n_ba, "asr": len(p.x_test), "ra": len(p.x_test)}

    def val_metrics(self, model: torch.nn.Module, suffix: str = "") -> dict[str, Any]:
        """`val_ba`, `val_asr`, `val_ra` (+ `suffix`) with their counts and intervals; {} without
        a selection split."""
        if self.val is None:
            return {}
        n = self.counts(val=True)
        return with_counts({f"val_{k}{suffix}": v for k, v in self.pick(self.evaluate_val(model)).items()},
                           {f"val_{k}{suffix}": n[k] for k in n}, counts_too=not suffix)

    @property
    def labelled(self) -> bool:
        """The scored triggered images carry their true labels (RA is defined)."""
        return bool((self.poisoned.y_test_true >= 0).all())

    def artifact_metrics(self, model: torch.nn.Module, cached: dict[str, float]) -> dict[str, float]:
        """A cached artifact's metrics as this trial reports them: those the cache keeps (the
        attack's own set), or the model scored again where the trial brings its own test set, so
        that before and after are measured on the same images."""
        return self.evaluate(model) if self.poisoned is not self.own else cached

    @functools.cached_property
    def clean_subset(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The defender's clean images with their true labels (stratified, seeded)."""
        idx = stratified_indices(self.ds.y_train, fraction=self.cfg.clean_fraction, seed=self.cfg.seed)
        return self.ds.x_train[idx], self.ds.y_train[idx]

    def pick(self, metrics: dict[str, float]) -> dict[str, float]:
        ba = metrics["ba_nontarget"] if self.cfg.eval_exclude_target else metrics["ba"]
        return {"ba": ba, "asr": metrics["asr"], "ra": metrics["ra"]}

    def attack_context(self) -> AttackContext:
        """The attacker's side of the cache: a clean model (the backdoor recipe on clean data, the
        surrogate TrojanNN and CLA learn from) and the attack's own computed tensors."""
        cfg, ds = self.cfg, self.ds

        def clean_model(variant: Optional[dict[str, Any]] = None, loss_fn: LossFn = cross_entropy) -> torch.nn.Module:
            def build_clean():
                setup_run(cfg.seed + 7)
                m = self.new_model()
                train(m, ds.x_train, ds.y_train, cfg.backdoor, self.acc, loss_fn=loss_fn, flip=ds.flip,
                      seed=cfg.seed + 7, desc="clean model" + (f" ({variant['name']})" if variant else ""))
                return m.state_dict(), {}

            spec = {**self.specs["clean"], "variant": variant} if variant else self.specs["clean"]
            state, _, _ = self.cache.get_or_build("clean", spec, build_clean, self.acc)
            m = self.new_model().to(self.acc.device)
            m.load_state_dict(state)
            for q in m.parameters():  # the attacker only reads it (gradients w.r.t. inputs)
                q.requires_grad_(False)
            return m.eval()

        def artifact(what: str, build_it: Callable[[], dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
            spec = {**self.specs["backdoor"], "what": what}
            return self.cache.get_or_build(f"attack-{self.attack.name}", spec, lambda: (build_it(), {}), self.acc)[0]

        def train_model(x: torch.Tensor, y: torch.Tensor, epochs: int, desc: str) -> torch.nn.Module:
            setup_run(cfg.seed + 11)
            m = self.new_model()
            train(m, x, y, dataclasses.replace(cfg.backdoor, epochs=epochs), self.acc, flip=ds.flip,
                  seed=cfg.seed + 11, desc=desc)
            return m.to(self.acc.device).eval()

        return AttackContext(clean_model, artifact, self.acc.device, train_model)


def _setup(cfg: TrialConfig, timings: dict[str, float]) -> Setup:
    """Data, attack (parameters checked: a ConfigError here is the caller's), device, cache, poison."""
    ds = load_dataset(cfg.dataset, cfg.data, cfg.seed)
    attack = get_attack(cfg.attack)(cfg.attack_params, ds.num_classes, cfg.seed,
                                    class_counts=torch.bincount(ds.y_train, minlength=ds.num_classes))
    setup_run(cfg.seed)
    acc = make_accelerator(cfg.device, cfg.precision)
    s = Setup(cfg, ds, attack, acc, ArtifactCache(cfg.cache_dir), artifact_specs(cfg, ds, attack), timings)
    s.own = s.poisoned = attack.poison(ds.x_train, ds.y_train, ds.x_test, ds.y_test, s.attack_context())
    if cfg.poisoned_test:  # ASR and RA on the attacker's own triggered images instead of ours
        x, target, true = load_poisoned_test(cfg.poisoned_test, ds.num_classes, tuple(ds.x_test.shape[1:]))
        s.poisoned = dataclasses.replace(s.poisoned, x_test=x, y_test_target=target, y_test_true=true)
    elif ds.x_val is not None:  # (a brought test set's trigger is theirs: no selection split to trigger)
        keep = ds.y_val != attack.params.target
        s.val = dataclasses.replace(s.own, x_test=attack.apply_trigger(ds.x_val[keep]),
                                    y_test_target=torch.full_like(ds.y_val[keep], attack.params.target),
                                    y_test_true=ds.y_val[keep])
    return s


def _backdoored(s: Setup) -> tuple[torch.nn.Module, dict[str, float], dict[str, Any]]:
    """(the model to defend, its metrics, its artifacts entry): the brought `model_path`, or the
    attacked model from the cache, trained on the poisoned data if the cache lacks it."""
    cfg, ds = s.cfg, s.ds
    model = s.new_model().to(s.acc.device)
    if cfg.model_path:
        load_into(model, cfg.model_path)
        broken = [k for k, v in model.state_dict().items() if v.is_floating_point() and not torch.isfinite(v).all()]
        if broken:
            raise FloatingPointError(f"{cfg.model_path} has non-finite weights (NaN/inf) in {', '.join(broken[:3])}")
        return model, s.evaluate(model), {}

    def build_backdoor():
        setup_run(cfg.seed)
        m = s.new_model()
        t0 = time.time()
        train(m, s.poisoned.x_train, s.poisoned.y_train, cfg.backdoor, s.acc, flip=ds.flip, seed=cfg.seed,
              desc=f"backdoor[{s.attack.name}]")
        s.timings["backdoor_train_s"] = time.time() - t0
        return m.state_dict(), {"metrics": s.evaluate(m, own=True)}

    state, meta, built = s.cache.get_or_build("backdoor", s.specs["backdoor"], build_backdoor, s.acc)
    model.load_state_dict(state)
    return model, s.artifact_metrics(model, meta["metrics"]), {"backdoor": {"key": meta["key"], "cached": not built}}


def _teacher(s: Setup, model: torch.nn.Module) -> tuple[torch.nn.Module, dict[str, Any]]:
    """The backdoored model fine-tuned on the clean subset (from the cache when it holds it)."""
    cfg = s.cfg

    def build_teacher():
        setup_run(cfg.seed)
        t = copy.deepcopy(model)
        x_clean, y_clean = s.clean_subset
        t0 = time.time()
        train(t, x_clean, y_clean, cfg.teacher, s.acc, flip=s.ds.flip, seed=cfg.seed + 1, desc="teacher")
        s.timings["teacher_train_s"] = time.time() - t0
        return t.state_dict(), {"metrics": s.evaluate(t, own=True)}

    state, meta, built = s.cache.get_or_build("teacher", s.specs["teacher"], build_teacher, s.acc)
    teacher = s.new_model().to(s.acc.device)
    teacher.load_state_dict(state)
    metrics = s.artifact_metrics(teacher, meta["metrics"])
    return teacher, {"teacher": {"key": meta["key"], "cached": not built, **s.pick(metrics)}}


class EpochState(Mapping):
    """What a defense's epoch report offers to resume from: {"epoch", "model", "optimizer"} (state
    dicts), copied only when read, and to be read during the report (training goes on after it):
    a trial that checkpoints every few epochs pays for no copy in between (the copies were 10-40 %
    of an epoch on a GPU)."""

    def __init__(self, epoch: int, model: torch.nn.Module, optimizer):
        self._epoch, self._model, self._optimizer, self._copy = epoch, model, optimizer, None

    def _state(self) -> dict[str, Any]:
        if self._copy is None:
            self._copy = {"epoch": self._epoch,
                          "model": {n: v.detach().clone() for n, v in self._model.state_dict().items()},
                          "optimizer": copy.deepcopy(self._optimizer.state_dict())}
        return self._copy

    def __getitem__(self, key: str) -> Any:
        return self._epoch if key == "epoch" else self._state()[key]

    def __iter__(self):
        return iter(("epoch", "model", "optimizer"))

    def __len__(self) -> int:
        return 3


def _defend(s: Setup, defenses: list[Defense], report, resume, epoch_metrics: bool | Collection[int] = True,
            pack_mode: str = "auto") -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Repair the backdoored model with each of `defenses` (one: `repair`; several: one pack,
    `repair_pack`, in `pack_mode`). Returns what the members share and each member's own results."""
    cfg = s.cfg
    t0 = time.time()
    model, before, artifacts = _backdoored(s)
    val_before = s.val_metrics(model, suffix="_before")  # before the defense changes `model`
    teacher = None
    if defenses[0].needs_teacher:
        teacher, entry = _teacher(s, model)
        artifacts.update(entry)
    s.timings["artifacts_s"] = time.time() - t0  # loaded from the cache, or built (then *_train_s say how long)
    for key in ("epoch_eval_s", "epoch_report_s"):
        s.timings.setdefault(key, 0.0)

    losses: dict[int, dict[str, float]] = {}  # each member's last epoch's mean loss and terms

    def on_epoch_end(epoch: int, k: int, m: torch.nn.Module, optimizer) -> None:
        if report is not None:
            t0 = time.time()
            scored = epoch_metrics if isinstance(epoch_metrics, bool) else epoch + 1 in epoch_metrics
            metrics = s.selection(m) if scored else {}  # for a scheduler: on the selection split
            t1 = time.time()
            member = {"member": k} if len(defenses) > 1 else {}
            curve = {("loss" if n == "loss" else f"loss_{n}"): v for n, v in losses.pop(k, {}).items()}
            report(epoch=epoch + 1, **member, **metrics, **curve, state=EpochState(epoch + 1, m, optimizer))
            s.timings["epoch_eval_s"] += t1 - t0
            s.timings["epoch_report_s"] += time.time() - t1

    setup_run(cfg.seed)
    x_clean, y_clean = s.clean_subset
    t0 = time.time()
    ctx = DefenseContext(x_clean, y_clean, s.ds.num_classes, s.ds.flip, s.acc, cfg.seed, teacher, s.attack,
                         lambda epoch, m, optimizer: on_epoch_end(epoch, 0, m, optimizer), pack_mode=pack_mode)
    mode: dict[str, str] = {}  # a pack's: the mode it trained in
    with recording_losses(lambda epoch, k, values: losses.__setitem__(k, values)):
        if len(defenses) == 1:
            if resume and resume[0]:
                defenses[0].restore(model, resume[0]["model"])
                ctx.start_epoch, ctx.optimizer_state = int(resume[0]["epoch"]), resume[0].get("optimizer")
            repaired, failed = [defenses[0].repair(model, ctx)], [None]
        else:
            models = [copy.deepcopy(model) for _ in defenses]
            if resume:  # every member from the same epoch (run_pack checks it)
                for d, m, r in zip(defenses, models, resume):
                    d.restore(m, r["model"])
                ctx.start_epoch, ctx.optimizer_states = int(resume[0]["epoch"]), [r.get("optimizer") for r in resume]
            members = type(defenses[0]).repair_pack(defenses, models, ctx, on_epoch_end)
            repaired, failed = [m.model for m in members], [m.failed for m in members]
            mode["pack_mode"] = members[0].pack_mode
    s.timings["defense_s"] = time.time() - t0  # epoch_eval_s and epoch_report_s included
    t0 = time.time()
    n = s.counts()
    shared = {**with_counts({f"{k}_before": v for k, v in s.pick(before).items()},
                            {f"{k}_before": n[k] for k in n}, counts_too=False), "n_clean": len(x_clean),
              "n_train": len(s.ds.x_train), "n_test": len(s.ds.x_test), "n_poison_test": len(s.poisoned.x_test),
              "device": str(s.acc.device), "device_name": device_name(s.acc.device),
              "processes": s.acc.num_processes, "artifacts": artifacts,
              "n_val": 0 if s.val is None else len(s.ds.y_val),
              "val_source": "" if s.val is None else s.ds.val_source, **val_before, **mode}
    per = []
    for d, m, why in zip(defenses, repaired, failed):
        try:
            if why:
                raise NonFiniteLoss(why)
            after = s.pick(s.evaluate(m))
            # RA is NaN by design where a brought test set has no true labels; nothing else may be.
            if not all(math.isfinite(v) for k, v in after.items() if k != "ra" or s.labelled):
                raise FloatingPointError("metrics are not finite after the defense")
        except (NonFiniteLoss, FloatingPointError) as e:  # this member failed; the pack's others stand
            per.append({"status": "failed", "error": _reason(e)})
            continue
        if cfg.save_path:
            save_weights(m.state_dict(), cfg.save_path, metadata={"arch": cfg.arch, "defense": cfg.defense})
        per.append({**with_counts(after, n), **s.val_metrics(m), "epochs": d.epochs,
                    **{f"{cfg.defense}_{k}": v for k, v in d.info.items()}})
    s.timings["final_eval_s"] = time.time() - t0
    return shared, per


def _reason(e: BaseException) -> str:
    first = str(e).strip().splitlines()[0] if str(e).strip() else ""
    return f"{type(e).__name__}: {first}"


def _attempt(step: Callable[[], dict[str, Any]], timings: dict[str, float]) -> dict[str, Any]:
    """Runs a trial's steps; failures inside training (NaN losses, OOM, a broken plug-in) become
    status "failed" with the reason, bad configuration (`ConfigError`) propagates."""
    try:
        out = {"status": "ok", "error": None, **step()}
    except ConfigError:
        raise
    except Exception as e:
        log.debug("trial failed:\n%s", traceback.format_exc())
        out = {"status": "failed", "error": _reason(e)}
    out["timings"] = {k: round(v, 3) for k, v in timings.items()}
    return out


def _identity(cfg: TrialConfig, attack_params: Any, defense_cfg: Any) -> dict[str, Any]:
    """What every result starts with: the trial's axes, its whole configuration (`flat_config`)
    and the code that ran it."""
    return {"dataset": cfg.dataset, "attack": cfg.attack, "defense": cfg.defense,
            "clean_fraction": cfg.clean_fraction, "seed": cfg.seed,
            "config": flat_config(cfg, attack_params, defense_cfg), **code_version()}


def run_trial(config: dict[str, Any], report: Optional[Callable[..., None]] = None,
              resume: Optional[dict[str, Any]] = None,
              epoch_metrics: bool | Collection[int] = True) -> dict[str, Any]:
    """Run one trial; never raises for failures inside training (status "failed" + error), only
    for bad configuration (`ConfigError`, one line naming the fix).

    `report(epoch=, ba=, asr=, ra=, loss=, loss_<term>=, state=)` is called after each defense
    epoch when given: `loss` the epoch's mean training loss, `loss_<term>` each of its terms where
    the defense's loss has terms (NBA: ce, ldl, udl, ldl_rnb, ...); `state` = {"epoch", "model",
    "optimizer"} (state dicts, copied when read, so read them during the call: `EpochState`) is what `resume` takes back to
    continue an interrupted defense after that epoch. `epoch_metrics=False` leaves the metrics out
    of those reports and saves an evaluation per epoch (a sweep without an early-stopping
    scheduler reads only the final ones); a collection of epochs (1-based) scores only those (ASHA's
    rungs).
    """
    return run_pack([config], report, [resume] if resume else None, epoch_metrics)[0]


def run_pack(configs: list[dict[str, Any]], report: Optional[Callable[..., None]] = None,
             resume: Optional[list[Mapping[str, Any]]] = None,
             epoch_metrics: bool | Collection[int] = True, pack_mode: str = "auto") -> list[dict[str, Any]]:
    """Several configurations of one defense against the same backdoored model, trained together
    (`training.train_pack`): each member's result is the one it gets alone with the same seed,
    while the data, the artifacts, the teacher's forward pass and the trial's fixed costs are paid
    once. Returns one result per configuration, in order; a member that diverged is failed alone.
    `report(member=k, epoch=, ...)` after each epoch of each member (a pack of one: as `run_trial`).
    `resume`: one epoch state per member (`run_trial`'s `state`), all after the same epoch; the
    states are the same whichever `pack_mode` wrote them.
    `pack_mode`: `loop` (one member after another), `stacked` (one network, nba_scale/stacking.py;
    refused in one line where the defense, architecture or members cannot) or `auto` (stacked on
    CUDA where it can); each member's result says which ran (`pack_mode`).
    `timings` and `wall_s` are the pack's, the same in every member's result."""
    t_start = time.time()
    cfgs = [parse_config(c) for c in configs]
    defenses = [get_defense(c.defense)(c.defense_params) for c in cfgs]
    if len(cfgs) > 1:
        check_pack(cfgs, defenses)
    if resume and (len(resume) != len(cfgs) or len({int(r["epoch"]) for r in resume}) > 1):
        raise ConfigError("a pack resumes with one epoch state per member, all after the same epoch")
    params = {"attack": build(get_attack(cfgs[0].attack).Params, cfgs[0].attack_params, cfgs[0].attack)}
    timings: dict[str, float] = {}
    per: list[dict[str, Any]] = [{} for _ in cfgs]

    def steps() -> dict[str, Any]:
        t0 = time.time()
        s = _setup(cfgs[0], timings)
        timings["setup_s"] = time.time() - t0  # data, poisoning, device
        params["attack"] = s.attack.params  # resolved: the dataset may have chosen the target
        shared, per[:] = _defend(s, defenses, report, resume, epoch_metrics, pack_mode)
        return shared

    outcome = _attempt(steps, timings)
    wall = round(time.time() - t_start, 3)
    results = []
    for k, (cfg, d) in enumerate(zip(cfgs, defenses)):
        mine = {**outcome, **per[k]} if outcome["status"] == "ok" else outcome
        if mine.get("status") == "ok" and mine.get("asr_before") is not None:
            mine = {**mine, "der": der(mine["asr_before"], mine["ba_before"], mine["asr"], mine["ba"])}
        pack = {"pack_size": len(cfgs), "member": k} if len(cfgs) > 1 else {}
        results.append({**_identity(cfg, params["attack"], d.cfg), **mine, **pack, "wall_s": wall})
    return results


def prepare_artifacts(config: dict[str, Any]) -> dict[str, Any]:
    """Build (or find) a trial's backdoored model and, if its defense needs one, its teacher,
    without defending: a driver calls this once per distinct artifact so that its trials all start
    from the cache. Its stderr is often a log file: epoch lines, not the terminal's bar, show that
    the minutes of training progress."""
    cfg = parse_config(config)
    timings: dict[str, float] = {}

    def steps() -> dict[str, Any]:
        s = _setup(cfg, timings)
        model, before, artifacts = _backdoored(s)
        if get_defense(cfg.defense).needs_teacher:
            artifacts.update(_teacher(s, model)[1])
        return {"artifacts": artifacts, **{f"{k}_before": v for k, v in s.pick(before).items()}}

    with plain_progress():
        return _attempt(steps, timings)


def poison_only(config: dict[str, Any]) -> tuple[TrialConfig, Dataset, Attack, PoisonedData, AttackContext]:
    """The attack alone, no training of the attacked model: (cfg, dataset, attack, poisoned data,
    attack context). For looking at poisons (nba_scale.show) and measuring a clean model's ASR."""
    s = _setup(parse_config(config), {})
    return s.cfg, s.ds, s.attack, s.poisoned, s.attack_context()


def student_and_teacher(config: dict[str, Any]) -> tuple[Setup, torch.nn.Module, dict[str, float], torch.nn.Module,
                                                         dict[str, float]]:
    """(the trial's setup, the backdoored model, its metrics, the teacher, its metrics), from the
    cache or built as a trial would: a defense's starting point, for probes (`nba_scale.diagnose`)."""
    s = _setup(parse_config(config), {})
    model, before, _ = _backdoored(s)
    teacher, entry = _teacher(s, model)
    return s, model, s.pick(before), teacher, entry["teacher"]
