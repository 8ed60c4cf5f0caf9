"""Which code produced a result: the package version and, when it runs from a git checkout, the
commit and whether the files that decide results (the package, the search spaces) had uncommitted
changes. Every result row carries these, as airbench saves its source beside its scores."""
from __future__ import annotations

import functools
import subprocess
from pathlib import Path

from . import __version__

_DECIDING = ("nba_scale", "search_spaces", "pyproject.toml")


def _git(root: Path, *args: str) -> str | None:
    try:
        out = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


@functools.lru_cache(maxsize=1)
def code_version() -> dict[str, object]:
    """{"version", "git_commit", "git_dirty"}; the git fields are None outside a checkout of this
    project (a wheel installed into a venv that happens to sit inside some repository included)."""
    root = Path(__file__).resolve().parent.parent
    out: dict[str, object] = {"version": __version__, "git_commit": None, "git_dirty": None}
    top = _git(root, "rev-parse", "--show-toplevel")
    if top is None or Path(top).resolve() != root:
        return out
    out["git_commit"] = _git(root, "rev-parse", "HEAD")
    status = _git(root, "status", "--porcelain", "--untracked-files=no", "--", *_DECIDING)
    out["git_dirty"] = None if status is None else bool(status)
    return out
