"""`tune --confirm N`: the validation front and the paper's default run again at N fresh seeds,
paired; the search's readers never see those rows; a kill and `--resume` leave exactly one row per
(point, seed)."""
import math
import os
import shutil
import sys
import time
from pathlib import Path

import pytest

from nba_scale.sweep import confirm
from nba_scale.sweep.search_space import find_space, load_search_space

SPACE = load_search_space(find_space("nba", None))
DEFAULT = SPACE.default_point()


def point(**over):
    return {**DEFAULT, **over}


def row(trial_id, p, val_asr, val_ba, asr=None, ba=None, status="ok", **extra):
    r = {"study": "badnets-cf0.1", "trial_id": trial_id, "status": status, "val_asr": val_asr, "val_ba": val_ba,
         "asr": val_asr if asr is None else asr, "ba": val_ba if ba is None else ba, "is_default": p == DEFAULT,
         "defense": "nba", "asr_before": 0.9}
    r.update({k.replace(".", "_"): v for k, v in p.items()})
    return {**r, **extra}


SEARCH = [
    row("d", DEFAULT, 0.30, 0.60),                          # the default: dominated on validation
    row("a", point(**{"nba.beta": 1.0}), 0.05, 0.55),       # front
    row("b", point(**{"nba.beta": 2.0}), 0.20, 0.70),       # front
    row("c", point(**{"nba.beta": 3.0}), 0.25, 0.50, asr=0.0, ba=0.9),  # dominated on validation, lucky on test
    row("f", point(**{"nba.beta": 4.0}), math.nan, math.nan, status="failed"),
]


def test_the_validation_front_and_the_default_are_confirmed_at_fresh_seeds():
    found = confirm.candidates(SEARCH, SPACE)
    assert [c["of"] for c in found] == ["a", "b", "d"]  # front by validation ASR, then the default
    assert [c["on_val_front"] for c in found] == [True, True, False] and found[2]["is_default"]
    assert confirm.confirm_seeds(0, 3) == [1, 2, 3]  # never the seed the front was chosen on
    cells = confirm.cells("sw", "badnets-cf0.1", {"seed": 0, "attack": "badnets", "nba": {"beta": 0.5}}, found, [1, 2])
    assert len(cells) == 6 and len({c["id"] for c in cells}) == 6
    assert {c["config"]["seed"] for c in cells} == {1, 2}
    assert cells[0]["config"]["nba"]["beta"] == 1.0 and cells[0]["row"]["stage"] == "confirm"
    # The id is the point and the seed: the same search rows give the same cells (resume finds them).
    again = confirm.cells("sw", "badnets-cf0.1", {"seed": 0, "attack": "badnets"}, confirm.candidates(SEARCH, SPACE),
                          [1, 2])
    assert [c["id"] for c in again] == [c["id"] for c in cells]
    # A default that never finished in the search is still confirmed.
    without = confirm.candidates([r for r in SEARCH if r["trial_id"] != "d"], SPACE)
    assert without[-1] == {"point": DEFAULT, "of": None, "on_val_front": False, "is_default": True}


def confirm_rows(values):
    """values: {point tag: [(asr, ba) per seed 1, 2, 3]}; "dflt" is the default."""
    out = []
    for tag, per in values.items():
        for seed, (asr, ba) in zip((1, 2, 3), per):
            out.append({"study": "badnets-cf0.1", "stage": "confirm", "status": "ok", "seed": seed, "confirm_point": tag,
                        "asr": asr, "ba": ba, "is_default": tag == "dflt", "on_val_front": tag != "dflt",
                        "confirm_of": tag, "defense": "nba", "asr_before": 0.9, "nba_beta": 0.5})
    return out


def test_the_confirmed_front_is_paired_with_the_default_seed_by_seed():
    """Seeds move every point together by tens of points; "p" is 2 points of ASR under the
    default in every seed (paired: distinguishable), "q" is the default's figures shuffled
    across seeds (same means: indistinguishable), "r" is worse on both (off the front)."""
    level = [0.0, 0.3, 0.6]
    rows = confirm_rows({"dflt": [(0.10 + x, 0.70) for x in level], "p": [(0.08 + x, 0.70) for x in level],
                         "q": [(0.10 + x, 0.70) for x in (0.6, 0.0, 0.3)], "r": [(0.5 + x, 0.4) for x in level]})
    got = {e["point"]: e for e in confirm.summary(rows)}
    assert got["p"]["d_asr"] == pytest.approx(-0.02) and got["p"]["d_asr_pm"] == pytest.approx(0.0, abs=1e-9)
    assert got["p"]["vs_default"] == "ASR better" and got["p"]["confirmed_front"]
    assert got["q"]["vs_default"] == "indistinguishable"
    assert not got["r"]["confirmed_front"] and got["r"]["vs_default"] == "ASR worse, BA worse"
    assert got["dflt"]["asr_pm"] > 0.5  # unpaired, the seeds' spread swamps a 2-point difference
    # A seed whose backdoored model did not implant is left out.
    for r in rows:
        if r["seed"] == 3:
            r["asr_before"] = 0.1
    assert confirm.summary(rows, min_asr=0.5)[0]["seeds"] == [1, 2]
    text = "\n".join(confirm.lines(confirm.summary(rows)))
    assert "ASR better" in text and "Cv" in text


def test_the_search_readers_leave_the_confirmation_rows_out(tmp_path):
    from nba_scale.sweep.results import pareto_table
    from nba_scale.sweep.resume import study_rows
    from nba_scale.sweep.store import read_table, write_row

    root = tmp_path / "sw"
    for r in SEARCH:
        write_row(root, {**r, "dataset": "synthetic", "attack": "badnets", "clean_fraction": 0.1, "stage": "search"})
    # a confirmation row better than anything searched, on both splits
    write_row(root, {**row("confirm-x-s1", DEFAULT, 0.0, 0.99), "stage": "confirm", "dataset": "synthetic",
                     "attack": "badnets", "clean_fraction": 0.1})
    assert sorted(r["trial_id"] for r in study_rows(root, "badnets-cf0.1")) == ["a", "b", "c", "d", "f"]
    front = pareto_table(read_table(root), ["attack", "clean_fraction"]).to_pylist()
    assert sorted(r["trial_id"] for r in front) == ["a", "b"]


def test_confirm_is_refused_where_it_cannot_work(tmp_path):
    from test_tune import run_tune

    base = [sys.executable, "-m", "nba_scale.tune", "--attack", "badnets", "blend", "--dataset", "synthetic",
            "--results", str(tmp_path)]
    r = run_tune(*base, "--objective", "worst-case", "--confirm", "2")
    assert r.returncode == 2 and "--confirm" in r.stderr and "Traceback" not in r.stderr
    r = run_tune(*base, "--confirm", "-1")
    assert r.returncode == 2 and "--confirm -1" in r.stderr


@pytest.mark.slow
def test_a_killed_confirmation_resumes_with_one_row_per_point_and_seed(tmp_path):
    """`tune --num-samples 3 --confirm 3 --pack 2`: killed once the first confirmation rows land,
    then resumed: the 3 search rows untouched, one ok row per (point, seed), the Optuna study
    holding the search's 3 trials only."""
    from test_tune import journal_study, kill_driver, run_tune, start_tune, tune_cmd

    from nba_scale.sweep.store import parquet_files, read_table

    cache = tmp_path / "cache"
    ray_tmp = Path("/tmp") / f"nbaconf{os.getpid()}"
    env = {"RAY_TMPDIR": str(ray_tmp)}
    cmd = tune_cmd(tmp_path, cache, "conf", "--num-samples", "3", "--confirm", "3", "--pack", "2",
                   "--max-concurrent", "1", "--clean-fraction", "0.1", "--set", "nba.optim.epochs=2")
    root = tmp_path / "conf"

    def stage_rows(stage):
        return [r for r in read_table(root).to_pylist() if r.get("stage") == stage] if parquet_files(root) else []

    try:
        proc = start_tune(cmd, env)
        deadline = time.time() + 600
        while time.time() < deadline and proc.poll() is None and not stage_rows("confirm"):
            time.sleep(0.2)
        kill_driver(proc, ray_tmp)
        search, first = stage_rows("search"), stage_rows("confirm")
        assert len(search) == 3 and first, "the sweep should be killed in its confirmation stage"
        r = run_tune(*cmd, "--resume", env_extra=env)
        assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)
    rows = stage_rows("confirm")
    points = {x["confirm_point"] for x in rows}
    assert len(rows) == 3 * len(points) and len({(x["confirm_point"], x["seed"]) for x in rows}) == len(rows)
    assert len(first) < len(rows), "some confirmation trials should have been left for the resume"
    assert {x["seed"] for x in rows} == {1, 2, 3} and all(x["status"] == "ok" for x in rows)
    assert sum(bool(x["is_default"]) for x in rows) == 3
    assert {x["trial_id"]: x["started"] for x in stage_rows("search")} == {x["trial_id"]: x["started"] for x in search}
    assert f"{len(first)} done already" in r.stdout and "Confirmed front over seeds" in r.stdout
    trials = journal_study(root, "conf/badnets-cf0.1").trials
    assert len([t for t in trials if t.state.name == "COMPLETE"]) == 3
    assert (root / "_confirmed.png").stat().st_size > 5000
