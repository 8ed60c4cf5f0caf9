"""An attack or a defense from another installed package, through entry points (registry.py):
a tiny distribution is built and installed into a folder of its own (`pip install --target`, so
the test environment is left as it was) and put on the path of the commands that use it."""
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

PYPROJECT = """
[build-system]
requires = ["setuptools>=61"]
build-backend = "setuptools.build_meta"

[project]
name = "nba-corner-plugin"
version = "0.1"

[project.entry-points."nba_scale.attacks"]
corner = "corner_attack"

[project.entry-points."nba_scale.defenses"]
ft_twice = "corner_attack:TwiceFT"
broken = "corner_attack_missing"

[tool.setuptools]
py-modules = ["corner_attack"]
"""

MODULE = '''
"""A plug-in: BadNets with its patch in the top-left corner, and FT at twice the epochs."""
import dataclasses

from nba_scale.attacks.badnets import BadNets, BadNetsParams
from nba_scale.attacks.base import register
from nba_scale.defenses.ft import FineTuning


@dataclasses.dataclass
class CornerParams(BadNetsParams):
    corner_margin: int = 0


@register("corner")
class Corner(BadNets):
    Params = CornerParams


class TwiceFT(FineTuning):
    """Registered by the entry point's name (ft_twice): no decorator needed."""
'''


@pytest.fixture(scope="module")
def plugin_path(tmp_path_factory):
    src = tmp_path_factory.mktemp("plugin_src")
    (src / "pyproject.toml").write_text(PYPROJECT)
    (src / "corner_attack.py").write_text(textwrap.dedent(MODULE))
    target = tmp_path_factory.mktemp("plugin_site")
    import importlib.util

    # Offline-friendly where this environment has setuptools (Python < 3.12 venvs do); else pip
    # fetches it for an isolated build, as a user's install would.
    isolation = ["--no-build-isolation"] if importlib.util.find_spec("setuptools") else []
    r = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", *isolation,
                        "--target", str(target), str(src)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    return target


def run(plugin_path, *args):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(plugin_path), str(REPO)]), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "nba_scale", *args], capture_output=True, text=True, env=env,
                          cwd=REPO, timeout=600)


def test_a_plugin_attack_and_defense_are_found_and_checked_like_built_ins(plugin_path, tmp_path):
    listed = run(plugin_path, "attacks", "--list")
    assert listed.returncode == 0 and "corner" in listed.stdout, listed.stderr
    keys = run(plugin_path, "run", "--attack", "corner", "--defense", "ft_twice", "--list-keys")
    assert keys.returncode == 0 and "corner.corner_margin  (int)  default 0" in keys.stdout
    # a plug-in that fails to load is named on stderr and left out; the others still work
    assert "defense plug-in 'broken'" in keys.stderr and "left out" in keys.stderr
    assert "ft_twice.optim.epochs" in keys.stdout
    bad = run(plugin_path, "run", "--attack", "corner", "--set", "corner.bogus=1", "--print-config")
    assert bad.returncode == 2 and "bogus" in bad.stderr  # the same strict checks as a built-in's keys
    ok = run(plugin_path, "run", "--attack", "corner", "--defense", "ft_twice", "--dataset", "synthetic",
             "--preset", "smoke", "--device", "cpu", "--cache-dir", str(tmp_path), "--set", "corner.patch_size=4")
    assert ok.returncode == 0, ok.stdout[-2000:] + ok.stderr[-2000:]
    assert "synthetic / corner / ft_twice" in ok.stdout and "after" in ok.stdout


def test_without_the_plugin_its_names_are_unknown(tmp_path):
    r = subprocess.run([sys.executable, "-m", "nba_scale", "run", "--attack", "corner", "--print-config"],
                       capture_output=True, text=True, cwd=REPO)
    assert r.returncode == 2 and "unknown attack 'corner'" in r.stderr
