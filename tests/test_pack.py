"""Packed trials: several configurations of one defense trained together on the same backdoored
model, teacher and batches (`trial.run_pack`, `training.train_pack`)."""
import math

import pytest

from conftest import DEVICE, small_config
from nba_scale.config import ConfigError
from nba_scale.trial import run_pack, run_trial

pytestmark = pytest.mark.slow  # on the session's synthetic BadNets model (built once, ~40 s)

VARIANTS = [{"nba.beta": 0.2}, {"nba.lambda1": 0.5, "nba.T": 2.0, "nba.pgd_eps": 0.02}, {"nba.alpha": 3.0}]


def same(packed: tuple, alone: tuple) -> bool:
    """Equal on the CPU; on a GPU (`pytest --device cuda`, bench/gpu_check.sh) within the proofs'
    0.02 (bench/gpu_proofs.py: cuDNN may pick other kernels for a member's batch than alone)."""
    return packed == alone if DEVICE["name"] == "cpu" else all(abs(p - a) <= 0.02 for p, a in zip(packed, alone))


def test_a_member_of_a_pack_ends_exactly_as_it_would_alone(cache_dir):
    """Same seed, same batch order, its own optimiser, clip and PGD random starts: each member's
    metrics equal those of the same configuration run alone (common random numbers)."""
    base = small_config(cache_dir, **{"nba.optim.epochs": 2})
    configs = [{**base, **v} for v in VARIANTS]
    reports = []
    packed = run_pack(configs, report=lambda **m: reports.append((m["member"], m["epoch"], m["asr"])))
    alone = [run_trial(c) for c in configs]
    for k, (p, a) in enumerate(zip(packed, alone)):
        assert p["status"] == a["status"] == "ok", (p["error"], a["error"])
        assert same((p["asr"], p["ba"], p["ra"]), (a["asr"], a["ba"], a["ra"])), k
        assert p["member"] == k and p["pack_size"] == 3
        assert {n: e["key"] for n, e in p["artifacts"].items()} == {n: e["key"] for n, e in a["artifacts"].items()}
        assert p["config"] == a["config"]
    assert sorted((k, e) for k, e, _ in reports) == [(k, e) for k in range(3) for e in (1, 2)]
    assert len({(p["asr"], p["ba"]) for p in packed}) > 1  # the members did differ


def test_a_member_that_diverges_fails_alone(cache_dir):
    base = small_config(cache_dir, **{"nba.optim.epochs": 2})
    configs = [{**base, **VARIANTS[0]}, {**base, "nba.lambda1": float("nan")}, {**base, **VARIANTS[2]}]
    packed = run_pack(configs)
    assert [p["status"] for p in packed] == ["ok", "failed", "ok"]
    assert "NonFiniteLoss" in packed[1]["error"] and "epoch 1/2" in packed[1]["error"] and "asr" not in packed[1]
    for k in (0, 2):  # the others are untouched by their neighbour's NaN
        alone = run_trial(configs[k])
        assert same((packed[k]["asr"], packed[k]["ba"]), (alone["asr"], alone["ba"]))
    assert math.isfinite(packed[0]["ba_before"])


def test_what_cannot_be_packed_is_refused_in_one_line(cache_dir):
    base, ft = small_config(cache_dir), small_config(cache_dir, defense="ft")
    for configs, fragment in (
        ([base, {**base, "seed": 2}], "seed differs"),
        ([ft, {**ft, "ft.optim.lr": 0.01}], "cannot train as a pack"),
        ([base, {**base, "nba.optim.epochs": 3}], "must be equal in all of them"),
    ):
        with pytest.raises(ConfigError, match=fragment) as e:
            run_pack(configs)
        assert "\n" not in str(e.value)


@pytest.mark.parametrize("mode", ["loop", "stacked"])
def test_a_packed_sweep_writes_one_row_per_member_and_resumes_after_a_kill(tmp_path, mode):
    """`tune --pack 2`, 5 trials: 3 packs (2, 2, 1). Killed once its first rows land, then resumed:
    5 rows, 5 distinct points, the paper default once, every row naming its pack and member (and,
    a pack of several, the mode it trained in)."""
    import os
    import shutil
    import time
    from pathlib import Path

    from test_tune import kill_driver, run_tune, start_tune, tune_cmd

    from nba_scale.sweep.store import parquet_files, read_table

    cache = tmp_path / "cache"
    ray_tmp = Path("/tmp") / f"nbapack{os.getpid()}"
    env = {"RAY_TMPDIR": str(ray_tmp)}
    cmd = tune_cmd(tmp_path, cache, "packed", "--num-samples", "5", "--pack", "2", "--max-concurrent", "1",
                   "--clean-fraction", "0.1", "--set", "nba.optim.epochs=2", "--pack-mode", mode)
    root = tmp_path / "packed"
    try:
        proc = start_tune(cmd, env)
        deadline = time.time() + 600
        while time.time() < deadline and proc.poll() is None and len(parquet_files(root)) < 2:
            time.sleep(0.2)
        kill_driver(proc, ray_tmp)
        first = read_table(root).to_pylist()
        assert 2 <= len(first) < 5, "the sweep should be killed after its first pack"
        r = run_tune(*cmd, "--resume", env_extra=env)
        assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)
    rows = read_table(root).to_pylist()
    assert len(rows) == 5 and len({x["trial_id"] for x in rows}) == 5
    points = {tuple(x[c] for c in ("nba_lambda1", "nba_lambda2", "nba_lambda3", "nba_T", "nba_beta")) for x in rows}
    assert len(points) == 5 and sum(bool(x["is_default"]) for x in rows) == 1
    assert all(x["status"] == "ok" and 0 <= x["asr"] <= 1 for x in rows)
    assert {x["trial_id"]: x["started"] for x in first} == {x["trial_id"]: x["started"] for x in rows
                                                            if x["trial_id"] in {f["trial_id"] for f in first}}
    for x in rows:
        assert x["trial_id"] == f"{x['pack_id']}-m{x['member']}" and x["member"] < x["pack_size"] <= 2
        # auto would loop on this CPU; a pack of one trains as a trial does
        assert x.get("pack_mode") == (mode if x["pack_size"] > 1 else None)
    assert f"{len(first)} trials have rows ({len(first)} in the Optuna study" in r.stdout
    assert "packs of up to 2" in r.stdout and "pack of" in r.stdout


def test_a_sweep_refuses_what_cannot_pack_before_ray_starts(tmp_path):
    from test_tune import run_tune, tune_cmd

    for extra, fragment in ((["--defense", "ft"], "cannot train as a pack"),
                            (["--workers-per-trial", "2"], "does not combine with data-parallel"),
                            (["--defense", "argd", "--pack-mode", "stacked"], "packs only as a loop"),
                            (["--pack-mode", "stacked", "--set", "arch=vgg19-bn"], "draws dropout masks")):
        r = run_tune(*tune_cmd(tmp_path, tmp_path / "c", "x", "--pack", "4", *extra))
        assert r.returncode == 2 and fragment in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_asha_stops_trials_early_and_their_rows_say_where(tmp_path):
    """`--scheduler asha` on BA - ASR: 6 trials, rungs at epochs 1 and 2 of 4; a deliberately poor
    point is evaluated late. Every planned trial has one row; a stopped one is `stopped` with its
    epoch and the metrics it had there, and no ASR/BA of a finished defense."""
    import json
    import math

    from test_tune import run_tune, tune_cmd

    from nba_scale.sweep.store import read_table

    names = ["nba.lambda1", "nba.lambda2", "nba.lambda3", "nba.alpha", "nba.beta", "nba.T", "nba.pgd_eps"]
    poor = dict(zip(names, [20.0, 20.0, 1.0, 10.0, 5.0, 1.0, 0.0628]))
    points = tmp_path / "points.json"
    points.write_text(json.dumps([poor]))
    cmd = tune_cmd(tmp_path, tmp_path / "cache", "asha", "--num-samples", "6", "--max-concurrent", "1",
                   "--clean-fraction", "0.1", "--set", "nba.optim.epochs=4", "--scheduler", "asha",
                   "--grace-period", "1", "--reduction-factor", "2", "--points", str(points))
    r = run_tune(*cmd)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    rows = read_table(tmp_path / "asha").to_pylist()
    assert len(rows) == 6 and len({x["trial_id"] for x in rows}) == 6
    stopped = [x for x in rows if x["status"] == "stopped"]
    assert stopped, "ASHA stopped no trial"
    assert all(x["status"] in ("ok", "stopped") for x in rows) and sum(bool(x["is_default"]) for x in rows) == 1
    for x in stopped:
        assert x["stopped_at_epoch"] in (1, 2) and math.isnan(x["asr"]) and 0 <= x["asr_at_stop"] <= 1
    assert any(x["nba_lambda1"] == 20.0 for x in rows)  # the --points point ran
    assert "stopped by the scheduler after epoch" in r.stdout
