"""Run one trial: backdoor a model (cached), defend it, score it before and after.

    python -m nba_scale.run --dataset synthetic --attack badnets --defense nba --preset smoke

    python -m nba_scale.run --dataset npz:~/.cache/nba_scale/cifar10_jpeg.npz --attack badnets \\
        --defense nba --clean-fraction 0.05 --set data.train_subset=10000 --set backdoor.epochs=15 --json

`--set key=value` overrides any config key (see nba_scale/trial.py), plug-in parameters in a
section named after the plug-in: `--set badnets.rate=0.05 --set nba.beta=1.0`. With `--json` the
last line of stdout is one JSON object with the result. Exit status: 0 ok, 1 trial failed, 2 bad input.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys

from .config import ConfigError, merge, nest, parse_set


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m nba_scale.run", description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--dataset", default="synthetic", help="synthetic | cifar10 | gtsrb | npz:PATH")
    p.add_argument("--attack", default="badnets")
    p.add_argument("--defense", default="nba", help="nba | ft | fp | mcr | nad | argd | none")
    p.add_argument("--clean-fraction", type=float, default=None, help="defender's clean subset (default 0.05)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--arch", default=None, help="wrn-DEPTH-WIDTH (default wrn-16-1)")
    p.add_argument("--preset", default=None, help="smoke | quick | paper (budgets; --set overrides them)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key")
    p.add_argument("--device", default=None, help="auto | cpu | cuda")
    p.add_argument("--precision", default=None, help="no | bf16")
    p.add_argument("--data-dir", default=None, help="where real datasets live (default $NBA_DATA_DIR)")
    p.add_argument("--cache-dir", default=None, help="artifact cache (default $NBA_CACHE_DIR)")
    p.add_argument("--model", default=None, help="defend these weights (.safetensors or state_dict .pt)")
    p.add_argument("--save", default=None, help="write the repaired model to this .safetensors file")
    p.add_argument("--json", action="store_true", help="print the result as one JSON object on the last line")
    p.add_argument("-v", "--verbose", action="store_true")
    return p


def config_from_args(args: argparse.Namespace) -> dict:
    from .trial import with_preset

    flat = {"dataset": args.dataset, "attack": args.attack, "defense": args.defense, "seed": args.seed}
    for key, value in (("clean_fraction", args.clean_fraction), ("arch", args.arch), ("device", args.device),
                       ("precision", args.precision), ("data.data_dir", args.data_dir),
                       ("cache_dir", args.cache_dir), ("model_path", args.model), ("save_path", args.save)):
        if value is not None:
            flat[key] = value
    cfg = nest(flat)
    return with_preset(merge(cfg, parse_set(args.set)), args.preset)


def format_summary(r: dict) -> str:
    def pct(v):
        return "   n/a" if v is None else f"{100 * v:6.2f}"

    lines = [f"{r['dataset']} / {r['attack']} / {r['defense']}  clean_fraction={r['clean_fraction']} seed={r['seed']}"]
    if r["status"] != "ok":
        return "\n".join(lines + [f"FAILED: {r['error']}"])
    lines += ["            BA %    ASR %    RA %",
              f"before   {pct(r['ba_before'])}  {pct(r['asr_before'])}  {pct(r['ra_before'])}",
              f"after    {pct(r['ba'])}  {pct(r['asr'])}  {pct(r['ra'])}",
              f"wall {r['wall_s']:.1f}s  artifacts: " + ", ".join(
                  f"{k} {'cached' if v['cached'] else 'built'}" for k, v in r.get("artifacts", {}).items())]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(message)s")
    try:
        from .trial import run_trial

        result = run_trial(config_from_args(args))
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.json:
        print(format_summary(result), file=sys.stderr)
        print(json.dumps(result, default=str))
    else:
        print(format_summary(result))
    return 0 if result["status"] == "ok" else 1


if __name__ == "__main__":
    sys.exit(main())
