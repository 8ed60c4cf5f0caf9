"""nba_scale.api: the commands as functions, keyword arguments in, Arrow rows out, bad input as
ConfigError. Run in a child process: a sweep starts Ray in its own process, which the test
process should not keep."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

SCRIPT = """
import json, sys
from nba_scale import api
from nba_scale.config import ConfigError
res = sys.argv[1]
errors = []
for kw in ({"num_samples": 0}, {"set": {"nba.bta": 1}}, {"sampler": "grid"}):
    try:
        api.sweep("badnets", dataset="synthetic", preset="smoke", results=res, **kw)
    except ConfigError as e:
        errors.append(str(e))
rows = api.sweep("badnets", dataset="synthetic", preset="smoke", num_samples=2, clean_fraction=[0.1], results=res,
                 name="api", cache_dir=res + "/cache", device="cpu", set={"nba.optim.epochs": 2})
again = api.read(res + "/api")
print(json.dumps({"errors": errors, "rows": rows.num_rows, "again": again.num_rows,
                  "epochs": rows.column("nba_optim_epochs").to_pylist(), "status": rows.column("status").to_pylist(),
                  "front": api.front(res + "/api").num_rows, "pandas": len(rows.to_pandas())}))
"""


@pytest.mark.slow
def test_a_sweep_from_python_returns_its_rows_and_raises_on_bad_input(tmp_path):
    r = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path)], capture_output=True, text=True, cwd=REPO,
                       env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    got = json.loads(r.stdout.strip().splitlines()[-1])
    assert got["rows"] == got["again"] == got["pandas"] == 2 and got["status"] == ["ok", "ok"]
    assert got["epochs"] == [2, 2] and got["front"] >= 1  # the `set` dict reached the trials
    num, key, choice = got["errors"]
    assert "--num-samples" in num and "nba.bta" in key and "'grid'" in choice
    assert all("\n" not in e for e in got["errors"])


def test_keywords_become_the_commands_flags():
    from nba_scale.api import _argv

    assert _argv(["table2"], {"seeds": [0, 1], "resume": True, "address": None, "dry_run": False,
                              "only": ["attack=badnets,sig"], "set": {"nba.beta": 1.0, "nba.terms": ["rnb", "pnb"]},
                              "num_samples": 4}) == [
        "table2", "--seeds", "0", "1", "--resume", "--only", "attack=badnets,sig",
        "--set", "nba.beta=1.0", "--set", 'nba.terms=["rnb", "pnb"]', "--num-samples", "4"]
