"""Sweeps through Ray Tune + Optuna on synthetic data at the `smoke` budget."""
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import duckdb
import pyarrow.dataset as pads
import pytest

from nba_scale.sweep.store import parquet_files, read_table

slow = pytest.mark.slow
REPO = Path(__file__).resolve().parent.parent
HEAD = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()


def tune_cmd(results, cache, name, *extra):
    return [sys.executable, "-m", "nba_scale.tune", "--attack", "badnets", "--dataset", "synthetic",
            "--preset", "smoke", "--results", str(results), "--cache-dir", str(cache), "--name", name,
            "--device", "cpu", *extra]


def tune_env(env_extra=None):
    return {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1", **(env_extra or {})}


def run_tune(*args, timeout=900, env_extra=None):
    return subprocess.run(list(args), capture_output=True, text=True, env=tune_env(env_extra), timeout=timeout, cwd=REPO)


def start_tune(args, env_extra=None):
    """A driver in the background, in a session of its own, for the tests that kill it."""
    return subprocess.Popen(list(args), cwd=REPO, env=tune_env(env_extra), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)


def journal_study(root, name):
    import optuna

    from nba_scale.sweep.study import open_storage

    return optuna.load_study(study_name=name, storage=open_storage("journal", root))


@pytest.fixture(scope="module")
def tune_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("tune_cache")


@pytest.fixture(scope="module")
def smoke_sweep(tmp_path_factory, tune_cache):
    results = tmp_path_factory.mktemp("results")
    r = run_tune(*tune_cmd(results, tune_cache, "smoke", "--num-samples", "3", "--clean-fraction", "0.1"))
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return results / "smoke", r


@slow
def test_smoke_sweep_writes_readable_rows_with_the_paper_default(smoke_sweep):
    root, r = smoke_sweep
    table = read_table(root)
    assert table.num_rows == 3 and len(set(table["trial_id"].to_pylist())) == 3
    rows = table.to_pylist()
    assert sum(bool(x["is_default"]) for x in rows) == 1
    study = journal_study(root, "smoke/badnets-cf0.1")  # the study persists beside the rows
    assert sorted(t.user_attrs["trial_id"] for t in study.trials if t.state.name == "COMPLETE") == sorted(
        x["trial_id"] for x in rows) and len(study.best_trials) >= 1
    # Optuna was told the selection split's figures; the rows keep them beside the test split's.
    told = {t.user_attrs["trial_id"]: t.values for t in study.trials if t.state.name == "COMPLETE"}
    assert all(told[x["trial_id"]] == [x["val_asr"], x["val_ba"]] for x in rows)
    assert {(x["val_source"], x["n_val"]) for x in rows} == {("synthetic-draw", 300)}
    default = next(x for x in rows if x["is_default"])
    assert (default["nba_lambda1"], default["nba_lambda2"], default["nba_lambda3"], default["nba_beta"]) == (2.0, 2.0, 0.1, 0.5)
    for x in rows:
        assert x["status"] == "ok" and 0 <= x["asr"] <= 1 and 0 <= x["ba"] <= 1 and x["sweep"] == "smoke"
        # every figure with its counts and its 95 % interval over the test images
        assert x["ba_n"] == x["n_test"] and x["asr_n"] == x["n_poison_test"] and x["asr_k"] == round(x["asr"] * x["asr_n"])
        assert x["asr_lo"] <= x["asr"] <= x["asr_hi"] and x["ba_lo"] <= x["ba"] <= x["ba_hi"] and x["ba_hi"] > x["ba_lo"]
        assert x["attack"] == "badnets" and x["clean_fraction"] == 0.1 and x["finished"] >= x["started"]
        assert x["git_commit"] == HEAD and x["version"]  # the code that produced the row
        # ... the libraries and the device that produced it
        assert x["torch_version"] and x["ray_version"] and x["optuna_version"] and x["python_version"]
        assert x["device"] == "cpu" and x["device_name"] and x["stage"] == "search"
    # The same rows through pyarrow.dataset (hive partitions) and duckdb.
    ds = pads.dataset(str(root), format="parquet", partitioning="hive")  # as the README shows it
    assert ds.to_table().num_rows == 3
    n = duckdb.sql(f"SELECT count(*) FROM read_parquet('{root}/**/*.parquet', hive_partitioning=true, "
                   f"union_by_name=true) WHERE attack='badnets' AND defense='nba'").fetchall()[0][0]
    assert n == 3
    assert "Pareto front" in r.stdout and "rows in" in r.stdout
    assert f"front plot: {root}/_pareto.png" in r.stdout and (root / "_pareto.png").stat().st_size > 5000
    assert f"the rows: python -m nba_scale.results {root}" in r.stdout


@slow
def test_results_cli_pareto_sql_and_plot(smoke_sweep, tmp_path):
    root, _ = smoke_sweep
    out = run_tune(sys.executable, "-m", "nba_scale.results", str(root), "--pareto", "--plot", str(tmp_path / "f.png"))
    assert out.returncode == 0, out.stderr
    assert "Pareto front" in out.stdout and (tmp_path / "f.png").stat().st_size > 5000
    header = next(line for line in out.stdout.splitlines() if line.startswith("attack"))
    assert header.split()[:12] == ["attack", "clean_fraction", "mark", "chosen_on", "val_asr", "val_ba", "asr",
                                   "asr_lo", "asr_hi", "ba", "ba_lo", "ba_hi"]
    assert "chosen on the selection split" in out.stdout and " val " in out.stdout
    sql = run_tune(sys.executable, "-m", "nba_scale.results", str(root), "--format", "csv",
                   "--sql", "SELECT count(*) AS n FROM trials WHERE status = 'ok'")
    assert sql.returncode == 0 and sql.stdout.split() == ['"n"', "3"]
    bad = run_tune(sys.executable, "-m", "nba_scale.results", str(root), "--sql", "SELECT nope FROM trials")
    assert bad.returncode == 2 and bad.stderr.startswith("error: SQL failed")


@slow
def test_a_sweep_name_is_not_silently_reused(smoke_sweep, tune_cache):
    root, _ = smoke_sweep
    r = run_tune(*tune_cmd(root.parent, tune_cache, "smoke", "--num-samples", "3", "--clean-fraction", "0.1"))
    assert r.returncode == 2 and "pass --resume" in r.stderr


@slow
def test_study_counts_every_trial_and_failures_are_recorded(tmp_path, tune_cache):
    """In-process: the Optuna study must hold as many trials as the sweep ran, failed ones too,
    with the worst objectives; their Parquet rows hold NaN, never those invented values."""
    import math

    import optuna
    import ray

    from nba_scale.sweep.execution import Shape
    from nba_scale.sweep.search_space import load_search_space
    from nba_scale.sweep.plan import StudyPlan
    from nba_scale.sweep.tune import run_studies
    from nba_scale.trial import with_preset

    space = load_search_space(REPO / "search_spaces" / "nba.yaml")
    base = with_preset({"dataset": "synthetic", "attack": "badnets", "defense": "nba", "device": "cpu",
                        "cache_dir": str(tune_cache), "clean_fraction": 0.1,
                        "nba": {"optim": {"lr": float("nan")}}}, "smoke")  # every trial's loss goes NaN
    storage = optuna.storages.InMemoryStorage()
    ray.init(num_cpus=2, include_dashboard=False, configure_logging=False, log_to_driver=False)
    try:
        run_studies([StudyPlan("badnets-nan", base, space.default_point())], space, root=tmp_path, sweep="nan",
                    num_samples=3, max_concurrent=2, shape=Shape(cpus=1, gpus=0, workers=1), storage=storage)
    finally:
        ray.shutdown()
    study = optuna.load_study(study_name="nan/badnets-nan", storage=storage)
    trials = study.trials
    assert len(trials) == 3 and all(t.state.name == "COMPLETE" for t in trials)
    assert all(t.values == [1.0, 0.0] for t in trials)  # failed trials report the worst objectives
    # ... and are infeasible, which the samplers rank below every feasible trial: no "best" among them
    assert all(t.constraints == {"trial_failed": 1.0} and "NonFiniteLoss" in t.user_attrs["error"] for t in trials)
    assert study.best_trials == []
    rows = read_table(tmp_path).to_pylist()
    assert len(rows) == 3 and all(r["status"] == "failed" and "NonFiniteLoss" in r["error"] for r in rows)
    assert {t.user_attrs["trial_id"] for t in trials} == {r["trial_id"] for r in rows}
    assert all(math.isnan(r[m]) for r in rows for m in ("asr", "ba", "ra"))  # not ASR 1 / BA 0


@slow
def test_killed_sweep_resumes_without_losing_or_repeating_trials(tmp_path, tune_cache):
    cmd = tune_cmd(tmp_path, tune_cache, "kill", "--num-samples", "4", "--max-concurrent", "1",
                   "--clean-fraction", "0.1", "--set", "nba.optim.epochs=3")
    proc = start_tune(cmd)
    deadline = time.time() + 600
    while time.time() < deadline and len(parquet_files(tmp_path / "kill")) < 1:
        time.sleep(0.5)
    rows_before = len(parquet_files(tmp_path / "kill"))
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert 1 <= rows_before < 4, "the sweep should be killed in the middle"
    r = run_tune(*cmd, "--resume")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    table = read_table(tmp_path / "kill")
    ids = table["trial_id"].to_pylist()
    assert len(ids) == 4 and len(set(ids)) == 4
    # The study in the journal holds each row once; what the killed driver left open is closed.
    trials = journal_study(tmp_path / "kill", "kill/badnets-cf0.1").trials
    assert sorted(t.user_attrs["trial_id"] for t in trials if t.state.name == "COMPLETE") == sorted(ids)
    assert all(t.state.name in ("COMPLETE", "FAIL") for t in trials)
    assert sum(bool(x) for x in table["is_default"].to_pylist()) == 1


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@slow
def test_sweep_runs_against_a_started_ray_cluster(tmp_path, tune_cache):
    """`ray start --head` + `--address`: the cluster path (no driver-side build), on this machine."""
    import psutil

    port = str(free_port())
    temp = Path("/tmp") / f"nbaray{os.getpid()}"  # unique: tells our cluster's processes from any other
    env = {**os.environ, "RAY_ADDRESS": ""}
    ray_bin = str(Path(sys.executable).parent / "ray")
    start = subprocess.run([ray_bin, "start", "--head", "--num-cpus", "2", "--port", port, "--temp-dir", str(temp),
                            "--include-dashboard=false", "--disable-usage-stats"],
                           capture_output=True, text=True, env=env, timeout=120)
    assert start.returncode == 0, start.stderr[-2000:]
    try:
        r = run_tune(*tune_cmd(tmp_path, tune_cache, "cluster", "--num-samples", "2", "--clean-fraction", "0.1",
                               "--address", f"127.0.0.1:{port}"))
        assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
        assert len(read_table(tmp_path / "cluster")) == 2
    finally:
        # Not `ray stop`: that would also stop every other Ray instance on this machine.
        for p in psutil.process_iter(["cmdline"]):
            if str(temp) in " ".join(p.info["cmdline"] or []):
                p.kill()
        shutil.rmtree(temp, ignore_errors=True)


@slow
def test_data_parallel_trials_run_through_ray_train_on_two_cpu_workers(tmp_path, tune_cache):
    """`--workers-per-trial 2`: each trial is a Ray Train TorchTrainer whose two workers run the
    same Accelerate loop data-parallel (the path `--gpus-per-trial 2` takes on GPUs)."""
    r = run_tune(*tune_cmd(tmp_path, tune_cache, "dp", "--num-samples", "2", "--max-concurrent", "1",
                           "--clean-fraction", "0.1", "--workers-per-trial", "2", "--cpus-per-trial", "1",
                           "--checkpoint-every", "1"))
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    rows = read_table(tmp_path / "dp").to_pylist()
    assert len(rows) == 2 and len({x["trial_id"] for x in rows}) == 2
    for x in rows:
        assert x["status"] == "ok" and x["processes"] == 2 and x["workers"] == 2 and 0 <= x["asr"] <= 1
    # Each trial's Train run checkpointed its epochs where a resumed trial would look for them.
    train_runs = list((tmp_path / "dp" / "_tune" / "_train").iterdir())
    assert {p.name for p in train_runs} == {x["trial_id"] for x in rows}
    assert all(any(p.glob("checkpoint_*/m0/model.safetensors")) for p in train_runs)


def test_gpu_worker_counts_that_cannot_work_are_refused(tmp_path, tune_cache):
    r = run_tune(*tune_cmd(tmp_path, tune_cache, "bad", "--gpus-per-trial", "3", "--workers-per-trial", "2"))
    assert r.returncode == 2 and "does not split evenly" in r.stderr


@slow
def test_worst_case_objective_scores_every_attack_in_each_trial(tmp_path, tune_cache):
    """`--objective worst-case`: one study; each trial runs both attacks and reports the worst ASR
    and the mean BA, with each attack's own scores beside them. A --set section of one attack
    applies to that attack's runs (and is recorded in the row)."""
    cmd = [sys.executable, "-m", "nba_scale.tune", "--attack", "badnets", "blend", "--dataset", "synthetic",
           "--preset", "smoke", "--results", str(tmp_path), "--cache-dir", str(tune_cache), "--name", "worst",
           "--device", "cpu", "--num-samples", "2", "--clean-fraction", "0.1", "--objective", "worst-case",
           "--set", "nba.optim.epochs=1", "--set", "blend.alpha=0.1"]
    r = run_tune(*cmd)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    rows = read_table(tmp_path / "worst").to_pylist()
    assert len(rows) == 2 and {x["study"] for x in rows} == {"worst-badnets+blend-cf0.1"}
    for x in rows:
        assert x["status"] == "ok" and x["attack"] == "badnets+blend"
        assert x["asr"] == max(x["asr_badnets"], x["asr_blend"])
        assert x["ba"] == pytest.approx((x["ba_badnets"] + x["ba_blend"]) / 2)
        assert x["blend_alpha"] == 0.1 and x["badnets_patch_size"] == 3
    one = run_tune(sys.executable, "-m", "nba_scale.tune", "--attack", "badnets", "--dataset", "synthetic",
                   "--results", str(tmp_path), "--objective", "worst-case")
    assert one.returncode == 2 and "two or more --attack" in one.stderr


def kill_driver(proc, ray_tmp: Path) -> None:
    """SIGKILL the driver and every process it started. Ray's trial workers live in sessions of
    their own, so a SIGKILL of the driver's process group misses them: they outlive their driver
    for a while and would go on writing checkpoints. Found as the driver's descendants, and by
    the Ray temp dir in their environment."""
    import psutil

    try:
        tree = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
    except psutil.NoSuchProcess:  # it had ended by itself
        tree = []
    for p in [*tree, *(q for q in psutil.process_iter() if _in_ray_tmp(q, ray_tmp))]:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    proc.wait()


def _in_ray_tmp(p, ray_tmp: Path) -> bool:
    import psutil

    try:
        return p.environ().get("RAY_TMPDIR") == str(ray_tmp)
    except (psutil.Error, OSError):
        return False


class Unpickled:
    """A pickle that creates a file when it is loaded: a results folder from someone else."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@slow
def test_resume_continues_from_the_rows_alone_and_never_unpickles_tune_state(smoke_sweep, tune_cache, tmp_path):
    """A copied sweep whose Tune state holds planted pickles, then one whose Tune state is gone:
    --resume keeps every row, runs only the trials still missing, and unpickles nothing."""
    import pickle

    root, _ = smoke_sweep
    copy = tmp_path / "copy"
    shutil.copytree(root, copy)
    before = {x["trial_id"]: x for x in read_table(copy).to_pylist()}
    marker = tmp_path / "unpickled"
    study_dir = copy / "_tune"
    pkls = [study_dir / "tuner.pkl", *study_dir.rglob("*.pkl")]
    assert len(pkls) > 2
    for p in pkls:
        p.write_bytes(pickle.dumps(Unpickled(marker)))
    more = ["--clean-fraction", "0.1", "--set", "nba.optim.epochs=1"]
    r = run_tune(*tune_cmd(tmp_path, tune_cache, "copy", "--num-samples", "4", *more, "--resume"))
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert not marker.exists()
    after = {x["trial_id"]: x for x in read_table(copy).to_pylist()}
    assert len(after) == 4 and set(before) < set(after)
    assert all(after[t]["started"] == before[t]["started"] for t in before)  # kept, not rerun
    assert sum(bool(x["is_default"]) for x in after.values()) == 1  # the default ran once, before the copy
    assert "3 trials have rows (3 in the Optuna study" in r.stdout

    shutil.rmtree(copy / "_tune")  # Tune's state lost: the rows still say what ran
    again = run_tune(*tune_cmd(tmp_path, tune_cache, "copy", "--num-samples", "5", *more))
    assert again.returncode == 2 and "pass --resume" in again.stderr
    r = run_tune(*tune_cmd(tmp_path, tune_cache, "copy", "--num-samples", "5", *more, "--resume"))
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    final = {x["trial_id"]: x for x in read_table(copy).to_pylist()}
    assert len(final) == 5 and set(after) < set(final)
    assert all(final[t]["started"] == after[t]["started"] for t in after)


@slow
def test_a_sweep_killed_ten_times_at_random_ends_with_every_planned_trial_once(tmp_path, tune_cache):
    """SIGKILL of the driver's whole process group at 10 random moments (Ray start, artifact
    checks, mid-trial, between trials), --resume after each: 6 planned trials, 6 rows, no
    duplicate parameters, one default point."""
    import random

    ray_tmp = Path("/tmp") / f"nbastress{os.getpid()}"  # short: Ray's socket paths have a length limit
    env = {"RAY_TMPDIR": str(ray_tmp)}
    cmd = tune_cmd(tmp_path, tune_cache, "stress", "--num-samples", "6", "--max-concurrent", "2",
                   "--clean-fraction", "0.1", "--set", "nba.optim.epochs=3")
    rng = random.Random(0)
    root = tmp_path / "stress"
    try:
        for i in range(10):
            args = cmd + (["--resume"] if root.is_dir() else [])
            proc = start_tune(args, env)
            try:
                proc.wait(timeout=rng.uniform(4, 30))
            except subprocess.TimeoutExpired:
                pass
            kill_driver(proc, ray_tmp)
        r = run_tune(*cmd, "--resume", env_extra=env)
        assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)
    rows = read_table(root).to_pylist()
    assert len(rows) == 6 and len({x["trial_id"] for x in rows}) == 6
    params = {tuple(x[c] for c in ("nba_lambda1", "nba_lambda2", "nba_lambda3", "nba_T", "nba_beta")) for x in rows}
    assert len(params) == 6  # no planned trial ran twice under two ids
    assert sum(bool(x["is_default"]) for x in rows) == 1 and all(x["status"] == "ok" for x in rows)


@slow
def test_an_interrupted_trial_restarts_from_its_last_epoch_checkpoint(tmp_path, tune_cache):
    import json

    cmd = tune_cmd(tmp_path, tune_cache, "ckpt", "--num-samples", "1", "--clean-fraction", "0.1",
                   "--set", "nba.optim.epochs=5", "--checkpoint-every", "1")
    study = tmp_path / "ckpt" / "_tune"
    ray_tmp = Path("/tmp") / f"nbackpt{os.getpid()}"
    proc = start_tune(cmd, {"RAY_TMPDIR": str(ray_tmp)})
    deadline = time.time() + 600
    while time.time() < deadline and not list(study.rglob("checkpoint_000001/state.json")):
        time.sleep(0.2)
    kill_driver(proc, ray_tmp)
    shutil.rmtree(ray_tmp, ignore_errors=True)
    saved = max(json.loads(p.read_text())["epoch"] for p in study.rglob("checkpoint_*/state.json"))
    assert 2 <= saved < 5 and not parquet_files(tmp_path / "ckpt")
    r = run_tune(*cmd, "--resume")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "1 interrupted restart (1 from an epoch checkpoint)" in r.stdout
    (row,) = read_table(tmp_path / "ckpt").to_pylist()
    assert row["status"] == "ok" and row["is_default"]
    runs = sorted(study.glob("run-*"))
    (result,) = list(runs[-1].rglob("result.json"))
    epochs = [json.loads(line)["epoch"] for line in result.read_text().splitlines() if '"epoch"' in line]
    assert epochs[0] == saved + 1  # the restarted trial went on after its last checkpoint


@slow
def test_a_trial_whose_process_dies_starts_again_from_its_last_epoch(tmp_path, tune_cache):
    """A spot preemption, as the trial sees it: its worker process is killed mid-trial. With
    --max-failures the sweep goes on by itself: the trial starts again from its last epoch
    checkpoint and ends with one ok row, no --resume needed."""
    import json

    import psutil

    cmd = tune_cmd(tmp_path, tune_cache, "spot", "--num-samples", "1", "--clean-fraction", "0.1",
                   "--set", "nba.optim.epochs=5", "--max-failures", "1", "--checkpoint-every", "1")
    study = tmp_path / "spot" / "_tune"
    ray_tmp = Path("/tmp") / f"nbaspot{os.getpid()}"
    proc = subprocess.Popen(cmd, cwd=REPO, env=tune_env({"RAY_TMPDIR": str(ray_tmp)}), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        deadline = time.time() + 600
        while time.time() < deadline and not list(study.rglob("checkpoint_000001/state.json")):
            time.sleep(0.2)
        workers = [p for p in psutil.process_iter() if _in_ray_tmp(p, ray_tmp) and "ImplicitFunc" in " ".join(p.cmdline())]
        assert len(workers) == 1, [" ".join(p.cmdline())[:80] for p in psutil.process_iter() if _in_ray_tmp(p, ray_tmp)]
        workers[0].kill()
        out, _ = proc.communicate(timeout=600)
    finally:
        kill_driver(proc, ray_tmp)
        shutil.rmtree(ray_tmp, ignore_errors=True)
    assert proc.returncode == 0, out[-3000:]
    assert "its process died; starting it again after epoch" in out
    (row,) = read_table(tmp_path / "spot").to_pylist()
    assert row["status"] == "ok" and 0 <= row["asr"] <= 1
    (result,) = list(study.rglob("result.json"))
    reports = [json.loads(line) for line in result.read_text().splitlines()]
    # Killed after epoch 1's checkpoint, started again: each epoch ran once (from scratch, the
    # restarted trial would have reported epoch 1 again)
    assert [r["epoch"] for r in reports if r.get("final") is False] == [1, 2, 3, 4, 5]


def test_progress_eta_counts_from_the_first_trial_not_from_rays_start(capsys):
    import types

    from nba_scale.sweep.execution import Progress

    p = Progress("t", total=3, name=lambda t: t.trial_id)
    trial = types.SimpleNamespace(trial_id="a", status="TERMINATED", last_result={"final": True, "status": "ok"})
    p.t0 -= 600  # ten minutes of Ray start-up and model building before any trial ran
    p.on_trial_start(0, [trial], trial)
    p.t_first -= 60  # the first trial took one minute
    p.finished_here = 1
    p._print([trial], {"a"}, "")
    line = capsys.readouterr().out
    assert "1/3 done" in line and "10.0 min" in line  # the time since the sweep began
    assert "ETA 2.0 min" in line, line  # two trials left at one minute each, not at eleven
