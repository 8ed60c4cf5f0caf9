"""The sweep engine: a sweep's studies as one Tune run (sweep/multiplex.py), the typed plan a trial
reads (sweep/plan.py), the curves it keeps, and epoch checkpoints by need, packs' included."""
import json
import math
import sys

import pytest
from test_tune import run_tune, slow, tune_cmd

from nba_scale.sweep.plan import CheckpointPolicy, ResumeFrom, RunPlan, StudyPlan, resume_key
from nba_scale.sweep.store import read_curves, read_table


class Inner:
    """A study's searcher stand-in: hands out numbered points, records what it is told."""

    def __init__(self, name, pause_after=None):
        self.name, self.n, self.told, self.pause_after = name, 0, {}, pause_after

    def suggest(self, trial_id):
        if self.pause_after is not None and self.n >= self.pause_after and not self.told:
            return None  # waiting for results, as a searcher under a concurrency limit does
        self.n += 1
        return {"x": f"{self.name}{self.n}"}

    def on_trial_complete(self, trial_id, result=None, error=False):
        self.told[trial_id] = (result, error)


def test_the_studies_searcher_takes_the_studies_in_turn_packs_their_points_and_tells_each_its_own():
    from nba_scale.sweep.multiplex import StudiesSearcher

    a, b = Inner("a"), Inner("b", pause_after=2)
    s = StudiesSearcher({"a": a, "b": b}, {"a": 3, "b": 4}, pack=2)
    got = [s.suggest(f"t{i}") for i in range(3)]
    assert got == [{"study": "a", "points": [{"x": "a1"}, {"x": "a2"}]},
                   {"study": "b", "points": [{"x": "b1"}, {"x": "b2"}]},
                   {"study": "a", "points": [{"x": "a3"}]}]  # a's budget ends with a pack of one
    assert s.suggest("t3") is None  # b waits for its results; a has given all it had
    s.on_trial_complete("t1", {"final": True, "asr_m0": 0.1, "ba_m0": 0.9, "asr_m1": 0.2, "ba_m1": 0.8,
                               "__rows__": json.dumps([{"status": "ok"}, {"status": "failed", "error": "NaN"}])})
    assert b.told["t1-m0"][0]["asr"] == 0.1 and b.told["t1-m1"][0] == {
        "asr": 0.2, "ba": 0.8, "final": True, "status": "failed", "error": "NaN"}
    assert a.told == {}
    assert s.suggest("t4") == {"study": "b", "points": [{"x": "b3"}, {"x": "b4"}]}
    assert s.suggest("t5") == "FINISHED" or s.suggest("t5") is StudiesSearcher.FINISHED
    s.on_trial_complete("t0", None, error=True)  # a trial whose process died: each point told as an error
    assert a.told["t0-m0"] == (None, True) and a.told["t0-m1"] == (None, True)


def test_the_checkpoint_policy_writes_by_time_or_epochs_and_never_when_told_not_to():
    every_2 = CheckpointPolicy(every_epochs=2, every_s=math.inf)
    assert [e for e in range(1, 7) if every_2.due(e, 0.0)] == [2, 4, 6]
    by_time = CheckpointPolicy(every_epochs=0, every_s=60.0)
    assert not by_time.due(1, 59.0) and by_time.due(1, 60.0) and not by_time.never
    assert CheckpointPolicy(0, math.inf).never


def _pack_run(cache_dir, tmp_path, name, points, policy, resume=None):
    """A pack of `points` of an NBA study on synthetic data, as a Tune trial runs it, in this process;
    returns (its rows, its epoch reports, the checkpoints it wrote: {epoch: folder})."""
    from conftest import LocalSession, small_config

    from nba_scale.config import nest
    from nba_scale.sweep.trainable import trial_loop

    (tmp_path / name).mkdir()
    session = LocalSession(keep=tmp_path / name)
    base = nest(small_config(cache_dir, **{"nba.optim.epochs": 3}))
    plan = RunPlan("s", "search", studies={"st": StudyPlan("st", base, {})}, checkpoints=policy, pack=2,
                   resume=resume or {})
    trial_loop(plan, {"study": "st", "points": points}, session)
    return json.loads(session.reports[-1]["__rows__"]), session.reports[:-1], session.checkpoints


def test_a_pack_checkpoints_every_member_and_goes_on_from_its_checkpoint_as_if_never_stopped(cache_dir, tmp_path):
    points = [{"nba.lambda1": 2.0}, {"nba.lambda1": 0.5}]
    rows, reports, saved = _pack_run(cache_dir, tmp_path, "whole", points, CheckpointPolicy(1, math.inf))
    assert [r["epoch"] for r in reports] == [1, 2, 3] and sorted(saved) == [1, 2]  # none after the last epoch
    assert all((saved[1] / f"m{k}" / "model.safetensors").is_file() for k in (0, 1))
    # each member's loss and its terms, every epoch: the curves
    assert all(f"loss_m{k}" in r and f"loss_udl_rnb_m{k}" in r for r in reports for k in (0, 1))
    assert [r["member"] for r in rows] == [0, 1] and all(r["status"] == "ok" for r in rows)

    resume = {resume_key("st", p): ResumeFrom(str(saved[1]), k, 1) for k, p in enumerate(points)}
    again, reports2, _ = _pack_run(cache_dir, tmp_path, "resumed", points, CheckpointPolicy(0, math.inf), resume)
    assert [r["epoch"] for r in reports2] == [2, 3]  # went on after epoch 1
    for first, second in zip(rows, again):
        assert (second["asr"], second["ba"]) == pytest.approx((first["asr"], first["ba"]), abs=1e-6)
    # a pack whose members stopped at different epochs starts again (they share their batches)
    plan = RunPlan("s", "search", resume={resume_key("st", points[0]): ResumeFrom("x", 0, 1),
                                          resume_key("st", points[1]): ResumeFrom("y", 1, 2)})
    assert plan.resume_from({"study": "st", "points": points}) is None


@slow
def test_a_two_attack_sweep_runs_as_one_tune_run_and_keeps_its_curves(tmp_path):
    """Two studies, one Tune experiment: rows for both, every trial's curve beside them (results
    --curves prints and draws them, `curves` is a view for --sql), and Tune's TensorBoard and
    MLflow logger callbacks fed with the loss terms."""
    cache = tmp_path / "cache"
    r = run_tune(*tune_cmd(tmp_path, cache, "two", "--attack", "badnets", "blend", "--num-samples", "2",
                           "--max-concurrent", "2", "--clean-fraction", "0.1", "--callback", "tensorboard",
                           "--callback", "mlflow"))
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    root = tmp_path / "two"
    assert len(list((root / "_tune").glob("run-*"))) == 1 and "4 trials of 2 studies, as one Tune run" in r.stdout
    rows = read_table(root).to_pylist()
    assert sorted(x["study"] for x in rows) == ["badnets-cf0.1", "badnets-cf0.1", "blend-cf0.1", "blend-cf0.1"]
    assert sum(bool(x["is_default"]) for x in rows) == 2  # each study's paper default, once
    curves = read_curves(root).to_pylist()
    assert {(c["trial_id"], c["epoch"]) for c in curves} == {(x["trial_id"], e) for x in rows for e in (1, 2)}
    assert all(c["loss"] > 0 and c["loss_ce"] > 0 and "loss_udl_pnb" in c for c in curves)
    assert (root / "_curves.png").stat().st_size > 10_000
    shown = run_tune(sys.executable, "-m", "nba_scale.results", str(root), "--curves", "--plot", str(tmp_path / "c.png"))
    assert shown.returncode == 0 and "loss_ldl_rnb" in shown.stdout and (tmp_path / "c.png").is_file()
    sql = run_tune(sys.executable, "-m", "nba_scale.results", str(root), "--sql",
                   "SELECT count(DISTINCT trial_id) AS n FROM curves WHERE loss_udl > 0")
    assert sql.returncode == 0 and sql.stdout.split()[-1] == "4"
    assert list((root / "_tune").rglob("events.out.tfevents.*"))
    metrics = {p.name for p in (root / "_mlruns").rglob("metrics/*")}
    assert {"loss_m0", "loss_ldl_m0", "asr_m0"} <= metrics


def test_resume_reads_the_trials_of_a_sweep_run_before_its_studies_ran_together(tmp_path):
    """A sweep interrupted under the old layout (`_tune/<study>/...`, the sampled keys at the top of
    params.json, a one-member checkpoint at the top of its folder) still resumes from it."""
    from nba_scale.checkpoints import save_weights
    from nba_scale.models import WideResNet
    from nba_scale.sweep.resume import interrupted_trials
    from nba_scale.sweep.search_space import Param, SearchSpace
    from nba_scale.sweep.trainable import load_checkpoint

    import torch

    trial = tmp_path / "_tune" / "badnets-cf0.1" / "run-1" / "trainable_abc_1"
    ckpt = trial / "checkpoint_000001"
    ckpt.mkdir(parents=True)
    state = WideResNet(16, 1).state_dict()
    save_weights(state, ckpt / "model.safetensors")
    torch.save({"state": {}, "param_groups": []}, ckpt / "optimizer.pt")
    (ckpt / "state.json").write_text('{"epoch": 2}')
    (trial / "params.json").write_text(json.dumps({"__base__": {}, "nba.lambda1": 0.5}))
    space = SearchSpace("s.yaml", "nba", [Param("nba.lambda1", "float", 0.01, 20.0, True, None, 2.0)], {})
    [found] = interrupted_trials(tmp_path / "_tune", "badnets-cf0.1", space, [])
    assert (found.point, found.checkpoint, found.epoch, found.member) == ({"nba.lambda1": 0.5}, ckpt, 2, 0)
    assert interrupted_trials(tmp_path / "_tune", "blend-cf0.1", space, []) == []
    loaded = load_checkpoint(found.checkpoint, found.member)
    assert loaded["epoch"] == 2 and torch.equal(loaded["model"]["conv1.weight"], state["conv1.weight"])


def test_the_trial_worker_never_imports_the_command_line():
    import subprocess

    code = ("import sys, nba_scale.sweep.trainable, nba_scale.sweep.plan, nba_scale.trial; "
            "print('nba_scale.cli' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


@pytest.mark.parametrize("extra, needle", [
    (["--attack", "badnets", "--checkpoint-s", "0"], "--checkpoint-s 0: give a number of seconds > 0"),
    (["--attack", "badnets", "blend", "--objective", "worst-case", "--pack", "2"], "it does not pack: use --pack 1"),
])
def test_sweep_settings_that_cannot_work_are_one_line_before_ray_starts(tmp_path, capsys, monkeypatch, extra, needle):
    from nba_scale.sweep import execution, tune

    monkeypatch.setattr(execution, "start_ray", lambda address=None: pytest.fail("Ray started"))
    argv = ["--dataset", "synthetic", "--preset", "smoke", "--results", str(tmp_path)]
    assert tune.main([*argv, *extra]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and needle in err
    assert not any(tmp_path.iterdir())  # refused before anything was written
