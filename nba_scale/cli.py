"""What every command line shares: the common flags, and the one way bad input ends (one line on
stderr, exit code 2). The trial spec the flags feed (its layering, `trial_config`, and its checks,
`check_run`) lives in nba_scale/spec.py, re-exported here for the commands.
"""
from __future__ import annotations

import argparse
import logging
import sys
from typing import Any, Callable, Iterable, Optional, Sequence

from .config import ConfigError, nest, parse_set
# The trial spec's layering and checks live in nba_scale/spec.py; commands reach them through here too.
from .spec import (check_run, config_keys, drop_unused_sections, plugin_sections, resolved_config,  # noqa: F401
                   trial_config)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # argparse prints its usage too: one line, as for any bad input
        self.exit(2, f"error: {message} (see {self.prog} --help)\n")


def parser(prog: str, doc: str) -> argparse.ArgumentParser:
    """A parser whose help is the module's docstring (its first line, then the whole text)."""
    return _Parser(prog=prog, description=doc.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                   epilog=doc)


def count(text: str) -> int:
    """argparse type: a whole number >= 1 (trials, workers, trials at once)."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number >= 1, got {text!r}")
    return value


def amount(text: str) -> float:
    """argparse type: a finite number >= 0 (CPUs or GPUs per trial)."""
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a number >= 0, got {text!r}")
    return value


def fraction(text: str) -> float:
    """argparse type: a number in [0, 1]."""
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"must be a fraction in [0, 1], got {text!r}")
    return value


def clean_count(text: str) -> int | str:
    """`--clean-images`: a whole number of images, or `paper` (5 % of the full training set)."""
    if text == "paper":
        return text
    try:
        return count(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"must be a number of images (>= 1) or 'paper', got {text!r}") from None


CLEAN_IMAGES_HELP = ("the defender's clean set in images, drawn (stratified, seeded) from the attacker's training set, "
                     "or 'paper': 5 %% of the full training set (2,500 CIFAR-10 images), the paper's count; "
                     "resolved to the clean fraction of that set that rows, studies and teachers are keyed by")


def clean_axis(args: argparse.Namespace, given: Optional[Sequence[float]], default: Sequence[float],
               config: Optional[dict[str, Any]] = None) -> list[float]:
    """The run's clean fractions: `--clean-images` resolved against the attacker's training set
    (`data.clean_fraction_for`), else `given` (--clean-fraction, or --set clean_fraction), else the
    preset's clean set (`PRESET_CLEAN_IMAGES`), else `default`. `config`: a trial config with the
    run's dataset, data section and seed (default: built from the flags)."""
    from .spec import PRESET_CLEAN_IMAGES, clean_fractions

    images = getattr(args, "clean_images", None)
    sets = user_set(args)
    if given is None and "clean_fraction" in sets:
        given = [sets["clean_fraction"]]
    if images is not None and given is not None:
        raise ConfigError("--clean-images and --clean-fraction (or --set clean_fraction) both set the defender's "
                          "clean set: give one")
    if images is None and given is None and args.preset in PRESET_CLEAN_IMAGES:
        images = PRESET_CLEAN_IMAGES[args.preset]
    if images is None:
        return list(given if given is not None else default)
    images = list(images) if isinstance(images, (list, tuple)) else [images]
    seed = args.seeds[0] if hasattr(args, "seeds") else args.seed
    resolved = clean_fractions(images, config or trial_config(base_config(args), {"seed": seed}, sets,
                                                              preset=args.preset))
    print("clean set: " + ", ".join(f"{asked if asked == 'paper' else ''}{' = ' if asked == 'paper' else ''}{n} images"
                                    f" = {f:.4g} of the attacker's training set"
                                    for asked, (n, f) in zip(images, resolved)), file=sys.stderr, flush=True)
    return [f for _, f in resolved]


def add_trial_flags(p: argparse.ArgumentParser, *, dataset: str, preset: Optional[str] = None,
                    seeds: bool = False) -> None:
    """The flags of every command that runs trials."""
    p.add_argument("--dataset", default=dataset,
                   help="synthetic | synthetic-hard | cifar10 | cifar100 | gtsrb | tiny-imagenet | npz:PATH | folder:PATH "
                        "(an image folder: train/<class>/ beside test/ or val/, or Tiny-ImageNet's layout); images of "
                        "any square size, --set data.image_size=S resizes on load (default %(default)s)")
    if seeds:
        p.add_argument("--seeds", nargs="+", type=int, default=[0])
    else:
        p.add_argument("--seed", type=int, default=0)
    p.add_argument("--preset", default=preset,
                   help="smoke | quick | cpu-paper | paper (budgets; --set overrides them; default: "
                        + (preset or "none, the paper's budgets") + ")")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a trial-config key, e.g. nba.lambda1=1.0 (repeatable)")
    p.add_argument("--device", default=None, help="auto | cpu | cuda")
    p.add_argument("--precision", default=None, help="no | bf16")
    p.add_argument("--data-dir", default=None, help="where real datasets live (default $NBA_DATA_DIR)")
    p.add_argument("--cache-dir", default=None, help="artifact cache (default $NBA_CACHE_DIR)")


def add_config_flags(p: argparse.ArgumentParser) -> None:
    """`--list-keys` and `--print-config`, on the commands that start trials (run, tune, campaign)."""
    p.add_argument("--list-keys", action="store_true",
                   help="print every config key of this run's attacks and defenses (type, default) and exit")
    p.add_argument("--print-config", action="store_true",
                   help="print the resolved config of the trials this invocation would start (flags, preset, "
                        "--set, defaults) and exit, training nothing")


def print_keys(attacks: Sequence[str], defenses: Sequence[str]) -> None:
    """`--list-keys`: each key once, the trial's own first, then each plug-in section."""
    seen: set[str] = set()
    for a in attacks:
        for d in defenses:
            for key, tp, default in config_keys(a, d):
                if key not in seen:
                    seen.add(key)
                    print(f"{key}  ({tp})  default {default!r}")


def print_configs(configs: Sequence[tuple[str, dict[str, Any]]]) -> None:
    """`--print-config`: the first trial's resolved config whole, then each other trial's keys
    that differ from it (a campaign has dozens of cells)."""
    import json

    first: Optional[dict[str, Any]] = None
    for label, cfg in configs:
        resolved = resolved_config(cfg)
        shown = resolved if first is None else {k: v for k, v in resolved.items() if first.get(k) != v}
        print(f"# {label}" + ("" if first is None else f" (keys that differ from {configs[0][0]})"))
        for key, value in shown.items():
            print(f"{key}={json.dumps(value, default=str)}")
        first = first or resolved


def add_sweep_flags(p: argparse.ArgumentParser) -> None:
    """The flags of every command that runs many trials through Ray."""
    p.add_argument("--results", default="nba_results", help="results folder (rows go to DIR/NAME/)")
    p.add_argument("--resume", action="store_true")
    p.add_argument("--address", default=None, help="Ray cluster (auto, ray://host:10001); default: start Ray here")
    p.add_argument("--cpus-per-trial", type=amount, default=1.0)
    p.add_argument("--gpus-per-trial", type=amount, default=None,
                   help="default: 1 where there are GPUs, else 0; a fraction (0.25) shares a GPU between trials; "
                        "2 or more runs a trial data-parallel")
    p.add_argument("--workers-per-trial", type=count, default=None,
                   help="data-parallel processes per trial (default: the whole GPUs per trial, or 1)")
    p.add_argument("--max-concurrent", type=count, default=None, help="trials at once")
    p.add_argument("--max-failures", type=int, default=None,
                   help="restarts of a trial whose process or node dies (a spot preemption), each from its last "
                        "epoch checkpoint; default 3 with --address, else 0")
    p.add_argument("--callback", action="append", default=[], choices=["tensorboard", "mlflow", "wandb"],
                   help="also log every trial's epoch reports (loss terms, the scheduler's figures) and results to "
                        "TensorBoard (event files under DIR/NAME/_tune: tensorboard --logdir DIR/NAME/_tune), MLflow "
                        "(a file store, DIR/NAME/_mlruns, unless MLFLOW_TRACKING_URI names a server; needs mlflow or "
                        "mlflow-skinny) or Weights & Biases (offline unless WANDB_MODE=online; needs wandb); "
                        "repeatable")
    p.add_argument("--pack", type=count, default=1,
                   help="configurations of one defense trained together in one trial (shared batches, one teacher "
                        "pass per batch, fixed costs paid once; one row each): nad, argd, nba")
    p.add_argument("--pack-mode", choices=("auto", "stacked", "loop"), default="auto",
                   help="how a pack trains: stacked (its members as one network, grouped convolutions, one kernel "
                        "per layer for all: the GPU's way; nad, nba), loop (one member after another), auto (stacked "
                        "on CUDA where the defense, architecture and members allow, else loop). The results are the "
                        "same to float rounding; rows say which ran (pack_mode)")


def base_config(args: argparse.Namespace, shared_cache: bool = False) -> dict[str, Any]:
    """The trial-config keys the common flags set (those given). `shared_cache`: name the default
    cache explicitly, so that every worker of a sweep on this machine shares it."""
    from .trial import PRESETS

    if args.preset and args.preset not in PRESETS:
        raise ConfigError(f"unknown preset {args.preset!r}; known: {', '.join(PRESETS)}")
    flat: dict[str, Any] = {"dataset": args.dataset}
    for key, value in (("device", args.device), ("precision", args.precision),
                       ("data.data_dir", args.data_dir), ("cache_dir", args.cache_dir)):
        if value is not None:
            flat[key] = value
    if shared_cache and args.cache_dir is None:
        from .artifacts import default_cache_dir

        flat["cache_dir"] = str(default_cache_dir())
    return nest(flat)


def user_set(args: argparse.Namespace) -> dict[str, Any]:
    return parse_set(args.set)


def entry(build_parser: Callable[[], argparse.ArgumentParser], run: Callable[[argparse.Namespace], int]
          ) -> Callable[..., int]:
    """A command's `main(argv=None) -> exit code`: `run` on the parsed arguments, via `main`."""
    return lambda argv=None: main(build_parser(), run, argv)


def main(p: argparse.ArgumentParser, run: Callable[[argparse.Namespace], int],
         argv: Optional[Iterable[str]] = None) -> int:
    """Parse, run, and turn bad input (`ConfigError`) into one line on stderr and exit code 2.
    `args.argv` keeps the arguments as given (drivers record the command that made their rows)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = p.parse_args(argv)
    args.argv = argv
    logging.basicConfig(level=logging.INFO if getattr(args, "verbose", False) else logging.WARNING,
                        stream=sys.stderr, format="%(asctime)s %(levelname)s %(message)s")
    try:
        return run(args)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # `| head` closed stdout: stop quietly, as Unix tools do (Python docs' recipe)
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0

