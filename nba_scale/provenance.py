"""Which code produced a result: the package version and, when it runs from a git checkout, the
commit and whether the files that decide results (the package, the search spaces) had uncommitted
changes; the versions of the libraries that decide results (torch, CUDA, Accelerate, Ray,
Optuna, Python) and the device a trial ran on (`device_name`). Every result row carries these, as
airbench saves its source beside its scores: a figure that moved between two machines says why."""
from __future__ import annotations

import functools
import platform
import subprocess
from pathlib import Path
from typing import Any

from . import __version__

_DECIDING = ("nba_scale", "search_spaces", "pyproject.toml")


def _git(root: Path, *args: str) -> str | None:
    try:
        out = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


@functools.lru_cache(maxsize=1)
def library_versions() -> dict[str, object]:
    """{"torch_version", "cuda_version", "accelerate_version", "ray_version", "optuna_version",
    "python_version"}: read from the installed distributions' metadata, so that a trial that
    never imports Ray or Optuna does not start to; None for one that is not installed."""
    from importlib.metadata import PackageNotFoundError, version

    out: dict[str, object] = {}
    for dist in ("torch", "accelerate", "ray", "optuna"):
        try:
            out[f"{dist}_version"] = version(dist)
        except PackageNotFoundError:
            out[f"{dist}_version"] = None
    import torch

    out["torch_version"] = torch.__version__  # with its build tag (2.14.1+cu130): the metadata drops it
    out["cuda_version"] = torch.version.cuda  # None for a CPU build
    out["python_version"] = platform.python_version()
    return out


def device_name(device: Any) -> str:
    """What a row's `device` ("cpu", "cuda:0") was: the GPU's name, or the CPU's model."""
    import torch

    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    if device.type == "mps":
        return "Apple MPS"
    return _cpu_model()


@functools.lru_cache(maxsize=1)
def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


@functools.lru_cache(maxsize=1)
def code_version() -> dict[str, object]:
    """{"version", "git_commit", "git_dirty"} and the `library_versions`; the git fields are None
    outside a checkout of this project (a wheel installed into a venv that happens to sit inside
    some repository included)."""
    root = Path(__file__).resolve().parent.parent
    out: dict[str, object] = {"version": __version__, "git_commit": None, "git_dirty": None, **library_versions()}
    top = _git(root, "rev-parse", "--show-toplevel")
    if top is None or Path(top).resolve() != root:
        return out
    out["git_commit"] = _git(root, "rev-parse", "HEAD")
    status = _git(root, "status", "--porcelain", "--untracked-files=no", "--", *_DECIDING)
    out["git_dirty"] = None if status is None else bool(status)
    return out
