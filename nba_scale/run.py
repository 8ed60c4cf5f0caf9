"""Run one trial: backdoor a model (cached), defend it, score it before and after.

    python -m nba_scale.run --dataset synthetic --attack badnets --defense nba --preset smoke

    python -m nba_scale.run --dataset npz:~/.cache/nba_scale/cifar10_jpeg.npz --attack badnets \\
        --defense nba --clean-fraction 0.05 --set data.train_subset=10000 --set backdoor.epochs=15 --json

`--set key=value` overrides any config key (see nba_scale/trial.py), plug-in parameters in a
section named after the plug-in: `--set badnets.rate=0.05 --set nba.beta=1.0`. With `--json` the
last line of stdout is one JSON object with the result. Exit status: 0 ok, 1 trial failed, 2 bad input.

    python -m nba_scale.run --attack blend --defense nad --list-keys      # every key, its type, its default
    python -m nba_scale.run --attack blend --preset quick --set nba.beta=1 --print-config   # what would run

`--list-keys` and `--print-config` print and exit without training; `tune` and `campaign` take
them too (the same keys go to every command through `--set`).
"""
from __future__ import annotations

import argparse
import json
import sys

from . import cli
from .spec import TrialConfig


def build_parser() -> argparse.ArgumentParser:
    p = cli.parser("python -m nba_scale.run", __doc__)
    cli.add_trial_flags(p, dataset="synthetic")
    p.add_argument("--attack", default="badnets")
    p.add_argument("--defense", default="nba", help="nba | ft | fp | mcr | nad | argd | anp | ibau | sau | none")
    p.add_argument("--clean-fraction", type=float, default=None, help="defender's clean subset (default 0.05)")
    p.add_argument("--clean-images", type=cli.clean_count, default=None, help=cli.CLEAN_IMAGES_HELP)
    p.add_argument("--arch", default=None, help="wrn-DEPTH-WIDTH (default wrn-16-1), preact-resnet18 or vgg16-bn")
    p.add_argument("--model", default=None, help="defend these weights (.safetensors or state_dict .pt)")
    p.add_argument("--save", default=None, help="write the repaired model to this .safetensors file")
    p.add_argument("--poisoned-test", default=None,
                   help="score ASR/RA on the attacker's own triggered test set (.npz: x uint8, target, optional y)")
    p.add_argument("--json", action="store_true", help="print the result as one JSON object on the last line")
    cli.add_config_flags(p)
    p.add_argument("-v", "--verbose", action="store_true")
    return p


def config_from_args(args: argparse.Namespace) -> dict:
    trial = {"attack": args.attack, "defense": args.defense, "seed": args.seed}
    for key, value in (("clean_fraction", args.clean_fraction), ("arch", args.arch), ("model_path", args.model),
                       ("save_path", args.save), ("poisoned_test", args.poisoned_test)):
        if value is not None:
            trial[key] = value
    sets = cli.user_set(args)
    cfg = cli.trial_config(cli.base_config(args), trial, sets, preset=args.preset)
    cfg["clean_fraction"] = cli.clean_axis(args, None if args.clean_fraction is None else [args.clean_fraction],
                                           [cfg.get("clean_fraction", TrialConfig.clean_fraction)], cfg)[0]
    cli.check_run([cfg], sets)
    return cfg


def format_summary(r: dict) -> str:
    def pct(v):
        return "   n/a" if v is None else f"{100 * v:6.2f}"

    lines = [f"{r['dataset']} / {r['attack']} / {r['defense']}  clean_fraction={r['clean_fraction']:g}"
             + (f" ({r['n_clean']} images)" if r.get("n_clean") else "") + f" seed={r['seed']}"]
    if r["status"] != "ok":
        return "\n".join(lines + [f"FAILED: {r['error']}"])
    lines += ["            BA %    ASR %    RA %",
              f"before   {pct(r['ba_before'])}  {pct(r['asr_before'])}  {pct(r['ra_before'])}",
              f"after    {pct(r['ba'])}  {pct(r['asr'])}  {pct(r['ra'])}"
              + (f"   DER {pct(r['der'])} (BackdoorBench's rating: 50 no change, 100 all removed, no BA lost)"
                 if r.get("der") is not None else ""),
              f"wall {r['wall_s']:.1f}s  artifacts: " + ", ".join(
                  f"{k} {'cached' if v['cached'] else 'built'}" for k, v in r.get("artifacts", {}).items())]
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    from .training import plain_progress
    from .trial import run_trial

    if args.list_keys:
        cli.print_keys([args.attack], [args.defense])
        return 0
    if args.print_config:
        cli.print_configs([("the trial", config_from_args(args))])
        return 0

    with plain_progress():  # the one trial is this command's own work: epoch lines where stderr is a log
        result = run_trial(config_from_args(args))
    if args.json:
        print(format_summary(result), file=sys.stderr)
        print(json.dumps(result, default=str))
    else:
        print(format_summary(result))
    return 0 if result["status"] == "ok" else 1


main = cli.entry(build_parser, run)


if __name__ == "__main__":
    sys.exit(main())
