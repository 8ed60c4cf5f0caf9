"""The commands as Python functions: keyword arguments in, the rows back as an Arrow table.

    from nba_scale import api

    rows = api.sweep("badnets", dataset="synthetic", preset="smoke", num_samples=4,
                     set={"nba.optim.epochs": 2}, results="nba_results", name="mine")
    front = api.front("nba_results/mine")          # chosen on the selection split
    df = rows.to_pandas()                           # or pyarrow / duckdb, as the CLI's rows

    rows = api.campaign("table2", dataset="synthetic", preset="smoke", seeds=[0], only=["attack=badnets"])
    rows = api.read("nba_results/table2")          # any results folder, someone else's too

Each keyword is the command's flag (`num_samples` is `--num-samples`, `clean_fraction=[0.05, 0.1]`
its values, `resume=True` a switch) and goes through the same parser and checks as the command
line, so a function and its command cannot disagree; `set` is a dict of `--set` keys. Bad input
raises `ConfigError` (one line naming the fix) instead of printing it; a run that ends with
failed trials still returns its rows (each row's `status` and `error` say why).
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Callable, Iterable

import pyarrow as pa

from .config import ConfigError


def _argv(positional: Iterable[str], options: dict[str, Any]) -> list[str]:
    """Keyword arguments as the command's flags."""
    import json

    out = [str(p) for p in positional]
    for key, value in options.items():
        flag = "--" + key.replace("_", "-")
        if key == "set":
            out += [x for k, v in (value or {}).items() for x in ("--set", f"{k}={json.dumps(v)}")]
        elif key == "only":
            out += [x for item in value for x in ("--only", str(item))]
        elif value is True:
            out.append(flag)
        elif value is False or value is None:
            continue
        elif isinstance(value, (list, tuple)):
            out += [flag, *map(str, value)]
        else:
            out += [flag, str(value)]
    return out


def _run(build_parser: Callable[[], argparse.ArgumentParser], run: Callable[[argparse.Namespace], int],
         argv: list[str]) -> argparse.Namespace:
    """Parse and run as the command does, raising what the command would print."""
    import contextlib
    import io

    parser = build_parser()
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            args = parser.parse_args(argv)
    except SystemExit:
        raise ConfigError(err.getvalue().strip().splitlines()[-1].removeprefix("error: ")) from None
    args.argv = argv
    run(args)
    return args


def sweep(attack: str | list[str], **options: Any) -> pa.Table:
    """`python -m nba_scale.tune` (nba_scale/sweep/tune.py): its rows (search and, with
    `confirm=N`, confirmation) as an Arrow table."""
    from .sweep import tune

    attacks = [attack] if isinstance(attack, str) else list(attack)
    args = _run(tune.build_parser, tune.run, ["--attack", *attacks, *_argv([], options)])
    return read(Path(args.results) / (args.name or tune.default_name(args)))


def campaign(name: str, **options: Any) -> pa.Table:
    """`python -m nba_scale.campaign NAME` (nba_scale/sweep/campaign.py): its rows."""
    from .sweep import campaign as camp
    from .sweep.grid import load_campaign

    args = _run(camp.build_parser, camp.run, _argv([name], options))
    return read(Path(args.results) / f"{load_campaign(name).name}{args.name_suffix}")


def read(path: str | Path) -> pa.Table:
    """Every row under a results folder (a sweep, a campaign, or a folder of them)."""
    from .sweep.results import load

    return load(path)


def front(path: str | Path, by: tuple[str, ...] = ("attack", "clean_fraction")) -> pa.Table:
    """The search's Pareto front per group, as `results --pareto` prints it."""
    from .sweep.results import pareto_table

    return pareto_table(read(path), list(by))


def confirmed(path: str | Path, min_backdoor_asr: float = 0.0) -> list[dict[str, Any]]:
    """The front confirmed over seeds (`sweep(..., confirm=N)`), as `results --confirmed` prints it."""
    from .sweep.confirm import summary

    return summary(read(path).to_pylist(), min_backdoor_asr)


__all__ = ["sweep", "campaign", "read", "front", "confirmed", "ConfigError"]
