"""The trial spec, written once: what a trial is (`TrialConfig` and its plug-ins' sections), how
its config is layered (`trial_config`: flags < the run's own layers < --set, the preset's budgets
under all), parsed (`parse_config`) and validated (`check_config`, `check_run`), its resolved
form (`flat_config`: a row's `config` and its Parquet columns), and the rules of a pack
(`check_pack`, `check_packable`: what a pack's members must share). Every driver (run, tune,
campaign, compare, diagnose) and the Ray worker read it from here; nothing here imports the
command line.

A parameter keeps one name from end to end: `--set nba.lambda1=1` is the key `nba.lambda1` of
the config (`trial_config`), of the search space and of the trial's result (`flat_config`), and
the Parquet column `nba_lambda1` (`sweep.store.column_name`: dots become underscores).
"""
from __future__ import annotations

import dataclasses
import functools
from pathlib import Path
from typing import Any, Callable, Collection, Literal, Optional, Sequence

import torch

from .attacks import get_attack
from .checkpoints import saved_arch
from .config import ConfigError, build, flatten, merge, nest, require
from .data import DataConfig
from .defenses import Defense, get_defense
from .defenses.base import cannot_pack
from .models import build_model
from .training import FP16_REFUSED, FP32_STAGE_REFUSED, PACK_SHARED, OptimConfig, nad_schedule


def backdoor_optim() -> OptimConfig:
    return OptimConfig(epochs=100, lr=0.1, batch_size=128, weight_decay=5e-4, schedule="cosine")


@dataclasses.dataclass
class TrialConfig:
    dataset: str = "synthetic"  # synthetic | cifar10 | cifar100 | gtsrb | tiny-imagenet | npz:PATH | folder:PATH
    attack: str = "badnets"
    defense: str = "nba"
    clean_fraction: float = 0.05  # the defender's stratified clean subset of the training set
    seed: int = 0
    arch: str = "wrn-16-1"  # also `model.arch`: wrn-DEPTH-WIDTH | preact-resnet18 | vgg16-bn
    taps: Optional[list[str]] = None  # also `model.taps`: modules the distillation defenses read (None: the arch's)
    device: str = "auto"  # auto | cpu | cuda
    precision: Literal["no", "bf16"] = "no"  # fp16 is refused (training.FP16_REFUSED)
    cache_dir: Optional[str] = None  # artifact cache (default $NBA_CACHE_DIR or ~/.cache/nba_scale/artifacts)
    model_path: Optional[str] = None  # defend these weights (safetensors / state_dict) instead of training one
    save_path: Optional[str] = None  # write the repaired model here (.safetensors)
    poisoned_test: Optional[str] = None  # the attacker's own triggered test set (.npz or BackdoorBench's record folder)
    eval_exclude_target: bool = False  # NAD's clean accuracy drops target-class test images
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    backdoor: OptimConfig = dataclasses.field(default_factory=backdoor_optim)
    teacher: OptimConfig = dataclasses.field(default_factory=functools.partial(nad_schedule, epochs=10))
    attack_params: dict = dataclasses.field(default_factory=dict)  # from the section named after the attack
    defense_params: dict = dataclasses.field(default_factory=dict)  # from the section named after the defense

    def validate(self) -> None:
        require(0 < self.clean_fraction <= 1, f"clean_fraction={self.clean_fraction} must be in (0, 1]")
        require(self.poisoned_test is None or Path(self.poisoned_test).expanduser().exists(),
                f"poisoned_test={self.poisoned_test!r} is not a file; give an .npz with x (uint8) and target, "
                f"or a BackdoorBench record folder (bd_test_dataset/ and attack_result.pt)")
        require(self.precision != "bf16" or "no" not in (self.backdoor.precision, self.teacher.precision),
                FP32_STAGE_REFUSED)
        require(self.model_path is None or Path(self.model_path).is_file(),
                f"model_path={self.model_path!r} is not a file; give the weights to defend (.safetensors or .pt)")


# Budgets, applied under the user's own overrides. `smoke`: seconds, for tests and CI; `quick`:
# minutes on one GPU (or a CPU subset); `paper`: the defaults above. `defense.` keys apply to the
# defense in use, when it trains; a defense may name its own over them (`Defense.presets`).
PRESETS: dict[str, dict[str, Any]] = {
    "smoke": {"data.synthetic_train": 1000, "data.synthetic_test": 300, "backdoor.epochs": 4,
              "teacher.epochs": 2, "defense.optim.epochs": 2, "clean_fraction": 0.1},
    "quick": {"backdoor.epochs": 30, "teacher.epochs": 10, "defense.optim.epochs": 10},
    # The paper's defender on a CPU: quick's backdoored models (the same cache keys as `quick` with
    # these subsets) and the paper's defender budget, its 20 defense epochs and 5 % of the full
    # training set (PRESET_CLEAN_IMAGES: 2,500 CIFAR-10 images) whatever subset the attacker used.
    "cpu-paper": {"backdoor.epochs": 30, "teacher.epochs": 10, "data.train_subset": 10000, "data.test_subset": 2000},
    "paper": {},
}

# The defender's clean set a preset fixes, in images (`data.clean_fraction_for`); it replaces the
# default clean fraction (and a campaign's clean-fraction axis) unless --clean-images or
# --clean-fraction is given.
PRESET_CLEAN_IMAGES: dict[str, int | str] = {"cpu-paper": "paper"}


# Learning rates for the architectures whose training diverges at the WRN recipe's, applied to every
# stage whose default is higher, under the preset and the user's settings. PreAct-ResNet18 has no
# BatchNorm after its last block: at lr 0.1 (nesterov) the backdoor recipe on CIFAR-10 went from loss
# 2.3 to 332 in 4 steps and NaN in epoch 1 (kuangliu's PreActResNet18 gives the same losses to the
# digit); fine-tuning the trained model at 0.1 (FT) collapsed it to BA 10.5 %. BackdoorBench trains
# and defends it at 0.01. VGG16-BN at 0.1 stayed finite (40 steps).
ARCH_LR: dict[str, float] = {"preact-resnet18": 0.01}


def _arch_defaults(cfg: dict[str, Any], defense: str) -> dict[str, Any]:
    """The brought model's architecture (from its file, where it names one) and the learning rates
    of the architecture (`ARCH_LR`), as defaults under the config."""
    model = cfg.get("model") if isinstance(cfg.get("model"), dict) else {}
    asked = cfg.get("arch", model.get("arch"))
    saved = saved_arch(cfg["model_path"]) if isinstance(cfg.get("model_path"), str) else None
    if saved and asked and str(asked).lower() != saved.lower():
        raise ConfigError(f"{cfg['model_path']} holds a {saved}, but the run asks arch={asked}: drop --arch / "
                          f"model.arch (the file's is used) or give the matching one")
    base: dict[str, Any] = {"arch": saved} if saved and not asked else {}
    arch = str(asked or saved or TrialConfig.arch).lower()
    if arch not in ARCH_LR:
        return base
    lr = ARCH_LR[arch]
    stages = {**{f.name: f for f in dataclasses.fields(TrialConfig) if f.name in ("backdoor", "teacher")},
              **{f"{defense}.optim": f for f in dataclasses.fields(get_defense(defense).Config) if f.name == "optim"}}
    for key, f in stages.items():
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        if default.lr > lr:
            base[f"{key}.lr"] = lr
    return base


def with_preset(config: dict[str, Any], preset: Optional[str]) -> dict[str, Any]:
    """`config` over the preset's budgets, over the architecture's defaults (`_arch_defaults`)."""
    if preset and preset not in PRESETS:
        raise ConfigError(f"unknown preset {preset!r}; known: {', '.join(PRESETS)}")
    cfg = nest(config)
    defense = cfg.get("defense", "nba")
    trains = any(f.name == "optim" for f in dataclasses.fields(get_defense(defense).Config))
    base = _arch_defaults(cfg, defense)
    for k, v in PRESETS[preset].items() if preset else ():
        if k.startswith("defense."):
            if not trains:
                continue
            k = defense + k[len("defense"):]
        base[k] = v
    if preset:  # the defense's own budget, over the preset's `defense.optim.epochs` where it trains
        base.update({f"{defense}.{k}": v for k, v in get_defense(defense).presets.get(preset, {}).items()})
    return merge(nest(base), cfg)


def parse_config(config: dict[str, Any]) -> TrialConfig:
    """Nested or dotted dict -> TrialConfig; plug-in sections move into attack/defense_params."""
    cfg = nest(config)
    model = cfg.pop("model", None)  # `model.arch` / `model.taps`: the same keys as `arch` / `taps`
    if model is not None:
        require(isinstance(model, dict) and set(model) <= {"arch", "taps"},
                f"model={model!r}: the model section takes `arch` and `taps` only")
        cfg.update(model)
    attack, defense = cfg.get("attack", "badnets"), cfg.get("defense", "nba")
    for key, name in (("attack_params", attack), ("defense_params", defense)):
        if isinstance(name, str) and isinstance(cfg.get(name), dict):
            cfg[key] = {**cfg.get(key, {}), **cfg.pop(name)}
    require(cfg.get("precision") != "fp16", FP16_REFUSED)
    return build(TrialConfig, cfg)


def check_config(config: dict[str, Any]) -> TrialConfig:
    """parse_config plus the plug-ins' own keys and types: a driver calls this before any trial
    starts, so that a typo fails in one line rather than in a worker."""
    cfg = parse_config(config)
    with torch.device("meta"):  # the architecture and its taps, without allocating a model
        build_model(cfg.arch, 10, (0.5,) * 3, (0.25,) * 3, cfg.taps)
    build(get_attack(cfg.attack).Params, cfg.attack_params, cfg.attack)
    optim = getattr(get_defense(cfg.defense)(cfg.defense_params).cfg, "optim", None)
    require(cfg.precision != "bf16" or optim is None or optim.precision != "no", FP32_STAGE_REFUSED)
    return cfg



def flat_config(cfg: TrialConfig, attack_params: Any, defense_cfg: Any) -> dict[str, Any]:
    """The trial's whole configuration, dotted, plug-in parameters under the plug-in's name
    (`nba.lambda1`, the Parquet column `nba_lambda1`): a row's `config`, `--print-config`."""
    plain = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in ("attack_params", "defense_params")}
    return flatten(plain | {cfg.attack: dataclasses.asdict(attack_params), cfg.defense: dataclasses.asdict(defense_cfg)})



def check_pack(cfgs: list[TrialConfig], defenses: list[Defense]) -> None:
    """A pack's configurations differ in their defense's parameters alone (one backdoored model,
    teacher, clean subset, seed and batch order for all), and its defense trains as a pack."""
    first = {k: v for k, v in dataclasses.asdict(cfgs[0]).items() if k != "defense_params"}
    for c in cfgs[1:]:
        other = {k: v for k, v in dataclasses.asdict(c).items() if k != "defense_params"}
        diff = sorted(k for k in first if first[k] != other[k])
        if diff:
            raise ConfigError(f"a pack's configurations may differ only in their defense's parameters; "
                              f"{diff[0]} differs ({first[diff[0]]!r} vs {other[diff[0]]!r})")
    if not defenses[0].packable:
        raise ConfigError(cannot_pack(cfgs[0].defense))
    if cfgs[0].save_path:
        raise ConfigError("save_path names one repaired model: a pack repairs several")
    shape = {tuple(getattr(d.cfg.optim, f) for f in PACK_SHARED) for d in defenses}
    if len(shape) > 1:
        raise ConfigError(f"a pack's members share their batches: {cfgs[0].defense}.optim's "
                          f"{', '.join(PACK_SHARED)} must be equal in all of them, got {sorted(shape, key=str)}")


def check_packable(defense: str, searched: Collection[str], flag: str = "--pack: ", pack_mode: str = "auto",
                   arch: str = TrialConfig.arch) -> None:
    """Refused before any trial starts: a defense that cannot pack, or a search over what a pack's
    members must share (`PACK_SHARED`: their batches); with `pack_mode` stacked, a defense or
    architecture that does not stack, or a search over what a stacked pack's members share."""
    cls = get_defense(defense)
    if not cls.packable:
        raise ConfigError(cannot_pack(defense, flag))
    shared = [name for name in searched if name.split(".")[-1] in PACK_SHARED]
    if shared:
        raise ConfigError(f"{flag}the search samples {shared[0]}, which a pack's members share (their batches); "
                          f"fix it with --set or use --pack 1")
    if pack_mode == "stacked":
        from .stacking import OPTIM_SHARED, why_not_stacked

        why = why_not_stacked([cls({})], layer_probe(arch))
        fields = {f"{defense}.{f}" for f in cls.stacked_shared or ()} | {f"{defense}.optim.{f}" for f in OPTIM_SHARED}
        stacked = [name for name in searched if name in fields]
        if why or stacked:
            raise ConfigError(f"--pack-mode stacked: {why or f'the search samples {stacked[0]}, which the members of a stacked pack share'}"
                              f"; use --pack-mode loop (or auto, which loops what cannot stack)")


def check_stacked_packs(packs: list[list[dict[str, Any]]]) -> None:
    """`--pack-mode stacked` over a campaign's packs (each a list of trial configs): refused in one
    line, before any model is trained, where one of them cannot stack. (A confirmation's packs
    are points of one study: `check_packable` has refused a search over what stacking shares.)"""
    from .stacking import resolve_pack_mode

    for configs in (p for p in packs if len(p) > 1):
        cfgs = [parse_config(c) for c in configs]
        defenses = [get_defense(c.defense)(c.defense_params) for c in cfgs]
        check_pack(cfgs, defenses)
        resolve_pack_mode("stacked", defenses, layer_probe(cfgs[0].arch), "cpu")


@functools.cache
def layer_probe(arch: str) -> torch.nn.Module:
    """An untrained model of `arch`, once per process: its layers are what stacking checks."""
    return build_model(arch, 10, (0.5,) * 3, (0.25,) * 3)



def plugin_sections() -> dict[str, str]:
    """{section name: 'attack' | 'defense'} for every registered plug-in."""
    from .attacks import ATTACKS
    from .defenses import DEFENSES

    return {**{n: "attack" for n in ATTACKS.names()}, **{n: "defense" for n in DEFENSES.names()}}


def drop_unused_sections(config: dict[str, Any]) -> dict[str, Any]:
    """The config without the sections of plug-ins other than its own attack and defense."""
    used = {config.get("attack", TrialConfig.attack), config.get("defense", TrialConfig.defense)}
    plugins = plugin_sections()
    return {k: v for k, v in config.items() if k not in plugins or k in used}


def trial_config(*layers: dict[str, Any], preset: Optional[str] = None, keep_sections: bool = False
                 ) -> dict[str, Any]:
    """Merge `layers` (later ones win), put the preset's budgets under them, drop the sections of
    plug-ins the trial does not use (unless `keep_sections`: a trial over several attacks keeps
    them all and resolves each attack's config with `drop_unused_sections`)."""
    cfg: dict[str, Any] = {}
    for layer in layers:
        cfg = merge(cfg, nest(layer))
    cfg = with_preset(cfg, preset)
    return cfg if keep_sections else drop_unused_sections(cfg)



def clean_fractions(images: Sequence[int | str], config: dict[str, Any]) -> list[tuple[int, float]]:
    """Clean-set sizes in images (or "paper") as (images, clean fraction) of the training set the
    trials of `config` (a trial config: dataset, data section, seed) train their backdoored models on."""
    from .data import clean_fraction_for, load_dataset

    cfg = parse_config(config)
    ds = load_dataset(cfg.dataset, cfg.data, cfg.seed)
    fractions = [clean_fraction_for(ds, n) for n in images]
    return [(round(f * len(ds.y_train)), f) for f in fractions]


def check_run(configs: Sequence[dict[str, Any]], sets: dict[str, Any],
              label: Callable[[int], str] = lambda i: "") -> None:
    """Every trial config of a run is valid (`label(i)` prefixes the error of the i-th), every
    section of `sets` (the user's --set) belongs to a plug-in some trial uses, and the dataset can
    be loaded (offline without its files: one line, now rather than in every trial), and so can a
    brought triggered test set (`poisoned_test`)."""
    from .data import load_dataset, load_poisoned_test

    checked = []
    for i, cfg in enumerate(configs):
        try:
            checked.append(check_config(cfg))
        except ConfigError as e:
            raise ConfigError(f"{label(i)}{e}") from None
    plugins = plugin_sections()
    used = {c.attack for c in checked} | {c.defense for c in checked}
    for section in sets:
        if section in plugins and section not in used:
            kind = plugins[section]
            runs = sorted({getattr(c, kind) for c in checked})
            raise ConfigError(f"--set {section}.*: no trial of this run uses {kind} {section!r} "
                              f"(it runs {', '.join(runs)}); drop the setting or add that {kind}")
    if checked:
        ds = load_dataset(checked[0].dataset, checked[0].data, checked[0].seed)
        for path in sorted({c.poisoned_test for c in checked if c.poisoned_test}):  # a bad file: now, not per trial
            load_poisoned_test(path, ds.num_classes, tuple(ds.x_test.shape[1:]))



def config_keys(attack: str, defense: str) -> list[tuple[str, str, Any]]:
    """Every key `--set` takes for a trial of `attack` and `defense`: (dotted key, type, default),
    read from the dataclasses themselves (the trial's, the attack's `Params`, the defense's
    `Config`), so the list cannot drift from what the checks accept."""
    import dataclasses
    import typing

    def walk(cls: type, prefix: str) -> list[tuple[str, str, Any]]:
        hints = typing.get_type_hints(cls)
        out = []
        for f in dataclasses.fields(cls):
            if f.name in ("attack_params", "defense_params"):
                continue
            tp = hints.get(f.name, f.type)
            default = (f.default if f.default is not dataclasses.MISSING
                       else f.default_factory() if f.default_factory is not dataclasses.MISSING else None)
            if dataclasses.is_dataclass(tp):
                out += walk(tp, f"{prefix}{f.name}.")
            else:
                out.append((prefix + f.name, str(tp).replace("typing.", "").replace("<class '", "").replace("'>", ""),
                            default))
        return out

    return [*walk(TrialConfig, ""), *walk(get_attack(attack).Params, f"{attack}."),
            *walk(get_defense(defense).Config, f"{defense}.")]



def resolved_config(cfg: dict[str, Any]) -> dict[str, Any]:
    """A trial config as the trial will run it: every key (flags, preset, `--set`, defaults),
    dotted, plug-in parameters under the plug-in's name (the row's `config`: trial.flat_config)."""

    tc = check_config(cfg)
    return flat_config(tc, build(get_attack(tc.attack).Params, tc.attack_params, tc.attack),
                       get_defense(tc.defense)(tc.defense_params).cfg)

