"""`nba-scale COMMAND ...`: one console script for every command (`python -m nba_scale COMMAND`
is the same, and each `python -m nba_scale.COMMAND` keeps working). Each command keeps its own
flags and `--help`; this only dispatches, importing just the command it runs."""
from __future__ import annotations

import importlib
import sys
from typing import Optional

COMMANDS = {
    "tune": ("nba_scale.sweep.tune", "hyper-parameter sweep of a defense (Ray Tune + Optuna)"),
    "campaign": ("nba_scale.sweep.campaign", "the paper's experiments as grids of fixed trials"),
    "compare": ("nba_scale.sweep.compare", "the table2 grid, one cell after another, without Ray"),
    "run": ("nba_scale.run", "one trial: backdoor, teacher, defense, scores"),
    "results": ("nba_scale.sweep.results", "query rows, Pareto fronts, confirmed fronts"),
    "report": ("nba_scale.sweep.report", "Markdown + PNG report of campaigns, with the paper's claims"),
    "convert": ("nba_scale.convert", "other toolkits' checkpoints to safetensors"),
    "diagnose": ("nba_scale.diagnose", "NBA's gradient budget at a defense's start"),
    "attacks": ("nba_scale.show", "list the attacks or draw their triggers"),
}


def usage() -> str:
    width = max(map(len, COMMANDS))
    return "usage: nba-scale COMMAND [ARGS ...]   (nba-scale COMMAND --help for its flags)\n\ncommands:\n" + "\n".join(
        f"  {name.ljust(width)}  {what}" for name, (_, what) in COMMANDS.items())


def main(argv: Optional[list[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"error: no command {name!r}; the commands: {', '.join(COMMANDS)} (nba-scale --help)", file=sys.stderr)
        return 2
    return importlib.import_module(COMMANDS[name][0]).main(rest)


if __name__ == "__main__":
    sys.exit(main())
