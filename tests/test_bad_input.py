"""Hostile and careless input: one line on stderr naming the fix and exit code 2, never a
traceback, never a silently wrong result. Nothing here trains a model."""
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import toy_arrays
from nba_scale.config import ConfigError, parse_set
from nba_scale.data import load_dataset

REPO = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "PYTHONUNBUFFERED": "1"}


def cli(module, *args, cwd=REPO):
    return subprocess.run([sys.executable, "-m", module, *map(str, args)], capture_output=True, text=True, env=ENV,
                          timeout=300, cwd=cwd)


def one_line_exit_2(r, fragment):
    assert r.returncode == 2, (r.returncode, r.stdout[-500:], r.stderr[-2000:])
    assert fragment in r.stderr, r.stderr
    assert r.stderr.strip().count("\n") == 0 and "Traceback" not in r.stderr, r.stderr


# --- data ---------------------------------------------------------------------------------------


def write_npz(path, **change):
    arrays = {**toy_arrays(), **change}
    np.savez(path, **{k: v for k, v in arrays.items() if v is not None})
    return f"npz:{path}"


@pytest.mark.parametrize("change, fragment", [
    ({"y_train": -(np.arange(40) % 4)}, "y_train holds negative labels"),
    ({"y_train": np.eye(4, dtype=np.int64)[np.arange(40) % 4]}, "for one-hot labels store y.argmax(1)"),
    ({"y_train": np.array(["cat", "dog"] * 20)}, "y_train must hold integer class indices, got dtype <U3"),
    ({"y_test": (np.arange(12) % 4).astype(np.float32)}, "y_test must hold integer class indices, got dtype float32"),
    ({"y_train": np.arange(39) % 4}, "x_train has 40 images but y_train has 39 labels"),
    ({"y_test": np.array([0] * 11 + [1000])}, "y_test has classes no training image has (1000)"),
    ({"x_test": np.zeros((0, 32, 32, 3), np.uint8), "y_test": np.zeros(0, np.int64)}, "x_test holds no images"),
    ({"x_train": None, "y_train": None, "x_test": None, "y_test": None}, "missing array"),
    # One stray label would make a 1001-class model that scores "ok": refused.
    ({"y_train": np.where(np.arange(40) == 3, 1000, np.arange(40) % 4)}, "no training image has class 4, 5, 6"),
    ({"y_train": np.zeros(40, np.int64), "y_test": np.zeros(12, np.int64)}, "y_train holds one class (0)"),
])
def test_bad_npz_labels_are_one_line_errors(tmp_path, change, fragment):
    name = write_npz(tmp_path / "d.npz", **change)
    with pytest.raises(ConfigError) as e:
        load_dataset(name)
    assert fragment in str(e.value) and "\n" not in str(e.value)


def test_a_stray_test_label_is_refused_by_the_cli(tmp_path):
    name = write_npz(tmp_path / "d.npz", y_test=np.array([0] * 11 + [1000]))
    one_line_exit_2(cli("nba_scale.run", "--dataset", name, "--defense", "none", "--cache-dir", tmp_path),
                    "y_test has classes no training image has")


# --- configuration and flags -------------------------------------------------------------------


@pytest.mark.parametrize("item", ["nba.lambda1=[1", "nba.lambda1=!!python/object/apply:os.system [true]",
                                  "nba.lambda1={a: 1"])
def test_set_values_that_are_not_plain_yaml_are_refused(item):
    with pytest.raises(ConfigError, match="the value is not plain YAML") as e:
        parse_set([item])
    assert "\n" not in str(e.value)


def test_a_bad_set_through_the_cli_is_one_line(tmp_path):
    one_line_exit_2(cli("nba_scale.run", "--set", "nba.lambda1=[1", "--cache-dir", tmp_path), "not plain YAML")


@pytest.mark.parametrize("args, fragment", [
    (["--clean-images", "0"], "argument --clean-images: must be a number of images (>= 1) or 'paper'"),
    (["--clean-images", "5000"], "clean images 5000: the attacker's training set holds 4000; give at most 4000"),
    (["--clean-images", "200", "--clean-fraction", "0.1"], "--clean-images and --clean-fraction"),
    (["--preset", "smoke", "--clean-images", "5"], "fewer than the 10 classes"),
])
def test_a_bad_clean_set_in_images_is_one_line(tmp_path, args, fragment):
    one_line_exit_2(cli("nba_scale.run", "--dataset", "synthetic", *args, "--cache-dir", tmp_path, "--print-config"),
                    fragment)


@pytest.mark.parametrize("flag, value", [("--max-concurrent", "-1"), ("--cpus-per-trial", "-1"),
                                         ("--num-samples", "-1"), ("--num-samples", "0"),
                                         ("--workers-per-trial", "0"), ("--gpus-per-trial", "nan")])
def test_negative_resource_flags_are_refused_before_anything_runs(flag, value):
    one_line_exit_2(cli("nba_scale.tune", "--attack", "badnets", "--dataset", "synthetic", flag, value),
                    f"argument {flag}: must be")


def test_epochs_errors_name_their_section():
    from nba_scale.trial import check_config

    with pytest.raises(ConfigError, match=r"^nba\.optim\.epochs=-1 must be >= 0$"):
        check_config({"nba.optim.epochs": -1})
    with pytest.raises(ConfigError, match=r"^blend\.alpha=2\.0 must be in \(0, 1\]$"):
        check_config({"attack": "blend", "blend.alpha": 2})


def test_resume_of_a_sweep_that_does_not_exist_is_refused(tmp_path):
    one_line_exit_2(cli("nba_scale.tune", "--attack", "badnets", "--dataset", "synthetic", "--results", tmp_path,
                        "--name", "nope", "--resume"), "there is no sweep 'nope'")
    assert not (tmp_path / "nope").exists()


def test_a_second_driver_on_one_sweep_is_refused(tmp_path):
    from filelock import FileLock

    root = tmp_path / "s"
    root.mkdir()
    with FileLock(str(root / ".driver.lock")):  # the first driver, alive
        r = cli("nba_scale.tune", "--attack", "badnets", "--dataset", "synthetic", "--preset", "smoke", "--results",
                tmp_path, "--name", "s", "--resume", "--device", "cpu")
    one_line_exit_2(r, "another driver is running on")


def test_campaign_dry_run_checks_plugin_keys(tmp_path):
    one_line_exit_2(cli("nba_scale.campaign", "table2", "--dataset", "synthetic", "--dry-run", "--results", tmp_path,
                        "--set", "blend.alfa=0.1"), "unknown config key 'blend.alfa'")


def test_a_set_on_a_sampled_key_fixes_it_instead_of_being_ignored():
    from nba_scale.sweep.tune import build_parser, plan, search_space

    args = build_parser().parse_args(["--attack", "badnets", "--dataset", "synthetic", "--preset", "smoke",
                                      "--set", "nba.lambda1=0.05"])
    space = search_space(args)
    assert "nba.lambda1" not in {p.name for p in space.params} and "nba.beta" in {p.name for p in space.params}
    [study] = plan(args, space)
    assert study.base["nba"]["lambda1"] == 0.05  # what every trial gets: the searcher no longer samples it
    every = ["--set", "nba.lambda1=1", "--set", "nba.lambda2=1", "--set", "nba.lambda3=1", "--set", "nba.T=1",
             "--set", "nba.alpha=1", "--set", "nba.beta=1", "--set", "nba.pgd_eps=0.03"]
    with pytest.raises(ConfigError, match="nothing is left to search"):
        search_space(build_parser().parse_args(["--attack", "badnets", *every]))


# --- weights -----------------------------------------------------------------------------------


class Payload:
    def __reduce__(self):
        return (print, ("pwned",))


def test_a_refused_model_is_one_line_and_exit_2(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"conv1.weight": torch.zeros(1), "x": Payload()}, path)
    r = cli("nba_scale.run", "--model", path, "--defense", "none", "--cache-dir", tmp_path)
    one_line_exit_2(r, "refusing to load")
    assert "pwned" not in r.stdout + r.stderr


def test_a_model_path_that_is_not_a_file_is_refused(tmp_path):
    one_line_exit_2(cli("nba_scale.run", "--model", tmp_path / "none.pt", "--cache-dir", tmp_path),
                    "model_path=")


def test_weights_are_read_by_their_format_not_their_name(tmp_path):
    from nba_scale.checkpoints import load_weights, save_weights

    save_weights({"w": torch.arange(3.0)}, tmp_path / "real.safetensors")
    (tmp_path / "named.pt").write_bytes((tmp_path / "real.safetensors").read_bytes())
    assert torch.equal(load_weights(tmp_path / "named.pt")["w"], torch.arange(3.0))
    torch.save({"w": torch.ones(2)}, tmp_path / "torch.safetensors")  # the other way round
    assert torch.equal(load_weights(tmp_path / "torch.safetensors")["w"], torch.ones(2))


def test_another_toolkits_key_names_are_shown_in_the_error(tmp_path):
    from nba_scale.checkpoints import CheckpointError, load_into
    from nba_scale.models import WideResNet

    theirs = {f"layer1.0.{k}": v for k, v in WideResNet(16, 1).state_dict().items()}
    torch.save(theirs, tmp_path / "theirs.pt")
    with pytest.raises(CheckpointError) as e:
        load_into(WideResNet(16, 1), tmp_path / "theirs.pt")
    msg = str(e.value)
    assert "layer1.0.conv1.weight" in msg and "conv1.weight" in msg and "another toolkit" in msg and "\n" not in msg


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_weights_fail_the_trial_instead_of_scoring_it(tmp_path, bad):
    from nba_scale.models import WideResNet
    from nba_scale.trial import run_trial

    state = WideResNet(16, 1).state_dict()
    state["fc.weight"][0, 0] = bad
    torch.save(state, tmp_path / "m.pt")
    r = run_trial({"dataset": "synthetic", "defense": "none", "model_path": str(tmp_path / "m.pt"),
                   "cache_dir": str(tmp_path), "device": "cpu", "data.synthetic_train": 200, "data.synthetic_test": 50})
    assert r["status"] == "failed" and "non-finite weights" in r["error"] and "fc.weight" in r["error"]
    assert "asr" not in r and "ba" not in r


def test_non_finite_logits_are_an_error_not_a_score():
    from nba_scale.metrics import predict

    class Broken(torch.nn.Module):
        def forward(self, x):
            return torch.full((len(x), 10), float("nan"))

    with pytest.raises(FloatingPointError, match="not finite"):
        predict(Broken(), torch.zeros(4, 3, 32, 32, dtype=torch.uint8), "cpu")


# --- results folders ---------------------------------------------------------------------------


def rows_with_a_corrupt_file(root):
    from nba_scale.sweep.store import write_row

    ident = {"dataset": "synthetic", "attack": "badnets", "defense": "nba", "clean_fraction": 0.1, "status": "ok"}
    for i in range(2):
        write_row(root, {**ident, "trial_id": f"t{i}", "study": "badnets-cf0.1", "asr": 0.1 * i, "ba": 0.9})
    bad = root / "dataset=synthetic" / "attack=badnets" / "defense=nba" / "clean_fraction=0.1" / "trial-bad.parquet"
    bad.write_bytes(b"PAR1 this is not parquet")
    return bad


def test_a_corrupt_parquet_file_is_skipped_with_a_warning(tmp_path, capsys):
    from nba_scale.sweep.store import read_table

    bad = rows_with_a_corrupt_file(tmp_path)
    assert read_table(tmp_path).num_rows == 2
    err = capsys.readouterr().err
    assert "skipped 1 unreadable Parquet file" in err and str(bad) in err
    r = cli("nba_scale.results", tmp_path, "--pareto")
    assert r.returncode == 0 and "Pareto front" in r.stdout and "skipped 1 unreadable" in r.stderr


def test_an_unwritable_plot_path_is_one_line(tmp_path):
    rows_with_a_corrupt_file(tmp_path)
    r = cli("nba_scale.results", tmp_path, "--plot", "/proc/nope/front.png")
    assert r.returncode == 2 and "cannot write --plot /proc/nope/front.png" in r.stderr and "Traceback" not in r.stderr


def trial_reports(sampled, resume=None):
    """What a Tune trial of an NBA sweep on synthetic data reports, run in this process, with the
    searcher's `sampled` point (and the checkpoint `resume` it goes on from: plan.ResumeFrom)."""
    from conftest import LocalSession

    from nba_scale.sweep.plan import RunPlan, StudyPlan, resume_key
    from nba_scale.sweep.trainable import trial_loop

    session = LocalSession()
    base = {"dataset": "synthetic", "attack": "badnets", "defense": "nba", "clean_fraction": 0.1, "seed": 0}
    plan = RunPlan("s", "search", studies={"st": StudyPlan("st", base, {})},
                   resume={resume_key("st", sampled): resume} if resume else {})
    trial_loop(plan, {"study": "st", "points": [sampled]}, session)
    return [json.loads(r["__rows__"])[0] if "__rows__" in r else r for r in session.reports]


def test_a_config_error_inside_a_trial_keeps_the_error_and_the_sampled_parameters():
    """A trial whose config the core rejects ends as a failed row with the real error, its axes
    and what the searcher sampled (it used to end as `KeyError: 'dataset'` in the sink)."""
    (row,) = trial_reports({"nba.optim.epochs": -3})
    assert row["status"] == "failed" and row["error"] == "ConfigError: nba.optim.epochs=-3 must be >= 0"
    assert row["dataset"] == "synthetic" and row["attack"] == "badnets" and row["nba_optim_epochs"] == -3
    assert "asr" not in row and "ba" not in row  # no invented metric: Optuna alone is told ASR 1 / BA 0
    assert row["git_commit"] is not None or row["version"]


def test_reports_show_failed_rows_as_nan_not_as_the_searchers_worst():
    from nba_scale.sweep.store import read_table, write_row
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        write_row(d, {"dataset": "s", "attack": "a", "defense": "nba", "clean_fraction": 0.1, "trial_id": "x",
                      "status": "failed", "asr": 1.0, "ba": 0.0})
        (row,) = read_table(d).to_pylist()
    assert math.isnan(row["asr"]) and math.isnan(row["ba"])
    assert json.dumps(row, default=str)  # still a plain row


@pytest.mark.parametrize("extra, fragment", [
    (["--points", "missing.json"], "--points missing.json: not a readable JSON file"),
    (["--points", "{bad}"], "expected a JSON list of objects with exactly the keys"),
    (["--scheduler", "asha", "--grace-period", "10"], "no more than --grace-period 10"),
    (["--scheduler", "asha", "--objective", "worst-case", "--attack", "badnets", "blend"], "needs per-epoch results"),
    # Values, not only keys: each used to run the default trial, then kill the driver in Optuna.
    (["--points", {"nba.lambda1": -5}], "point 1, nba.lambda1=-5: lies outside the search space's range"),
    (["--points", {"nba.beta": "abc"}], 'point 1, nba.beta="abc": must be a finite number'),
    (["--points", {"nba.T": None}], "point 1, nba.T=null: must be a finite number"),
    (["--sampler", "bogus"], "argument --sampler: invalid choice: 'bogus'"),
    (["--storage", "mysql:/host/db"], "--storage mysql:/host/db: neither a database URL nor a plain path"),
    (["--storage", "sqlite:studies.db"], "a URL is sqlite://"),
])
def test_bad_scheduler_and_points_flags_are_refused_before_ray_starts(tmp_path, extra, fragment):
    if "{bad}" in extra:
        (tmp_path / "bad.json").write_text('[{"nba.lambda1": 1}]')
        extra = ["--points", tmp_path / "bad.json"]
    if isinstance(extra[-1], dict):  # a valid point with one value changed
        from nba_scale.sweep.search_space import load_search_space

        point = {**load_search_space(REPO / "search_spaces" / "nba.yaml").default_point(), **extra[-1]}
        (tmp_path / "p.json").write_text(json.dumps([point]))
        extra = ["--points", tmp_path / "p.json"]
    r = cli("nba_scale.tune", "--attack", "badnets", "--dataset", "synthetic", "--preset", "quick",
            "--results", tmp_path / "results", *extra, cwd=tmp_path)
    one_line_exit_2(r, fragment)
    # Nothing written: no sweep folder (hence no Optuna journal), no file named after a bad --storage.
    assert {p.name for p in tmp_path.iterdir()} <= {"bad.json", "p.json"}, list(tmp_path.iterdir())


# --- second pass (issue 38) ----------------------------------------------------------------------


def tiny(cache, **more):
    """A trial that trains a one-epoch backdoored model on 300 synthetic images: seconds."""
    return {"dataset": "synthetic", "attack": "badnets", "defense": "none", "device": "cpu", "seed": 3,
            "cache_dir": str(cache), "data.synthetic_train": 300, "data.synthetic_test": 100,
            "backdoor.epochs": 1, **more}


def their_test_set(path, n=37, labels=True):
    """An attacker's triggered test set that is not ours: the first n clean test images, target 0."""
    from nba_scale.data import DataConfig

    ds = load_dataset("synthetic", DataConfig(synthetic_train=300, synthetic_test=100), 3)
    arrays = {"x": ds.x_test[:n].permute(0, 2, 3, 1).numpy(), "target": np.int64(0)}
    if labels:
        arrays["y"] = ds.y_test[:n].numpy()
    np.savez(path, **arrays)
    return str(path)


@pytest.mark.slow
def test_a_brought_test_set_scores_before_and_after_on_the_same_images(tmp_path):
    """`--poisoned-test`: ASR/RA before and after come from the file's images, whether the
    backdoored model was cached by an earlier trial or built by this one, and the cache keeps
    its own set's metrics (a later trial without the file reads those)."""
    from nba_scale.trial import run_trial

    theirs, unlabelled = their_test_set(tmp_path / "t.npz"), their_test_set(tmp_path / "u.npz", labels=False)
    ours = run_trial(tiny(tmp_path / "a"))  # builds and caches the model, scored on our triggered set
    for cache in ("a", "b"):  # cached by the trial above / built by this one
        r = run_trial(tiny(tmp_path / cache, poisoned_test=theirs))
        assert r["status"] == "ok", r["error"]
        assert r["n_poison_test"] == 37
        assert (r["asr_before"], r["ra_before"]) == (r["asr"], r["ra"])  # defense none: nothing changed
        # The counts behind each figure and its interval come with it (nba_scale/stats.py).
        assert r["asr_n"] == 37 and r["asr_k"] == round(37 * r["asr"]) and r["ba_n"] == r["n_test"] == 100
        assert r["asr_lo"] <= r["asr"] <= r["asr_hi"] and r["ba_before_lo"] <= r["ba_before"] <= r["ba_before_hi"]
    again = run_trial(tiny(tmp_path / "b"))  # the model cached by the file's trial
    assert again["artifacts"]["backdoor"]["cached"] and again["asr_before"] == ours["asr_before"]
    # Without true labels there is no RA, and that is no failure.
    r = run_trial(tiny(tmp_path / "a", poisoned_test=unlabelled))
    assert r["status"] == "ok", r["error"]
    assert math.isnan(r["ra"]) and math.isnan(r["ra_before"]) and r["asr_before"] == r["asr"]
    assert math.isnan(r["ra_lo"]) and r["ra_k"] is None and r["asr_n"] == 37


@pytest.mark.parametrize("arrays, fragment", [
    ({"x": np.zeros((5, 16, 16, 3), np.uint8), "target": np.int64(0)}, "its images are 16x16, the dataset's are 32x32"),
    ({"x": np.zeros((5, 32, 32, 3), np.uint8), "target": np.int64(0), "y": np.array([0, 1, 2, 3, 10])},
     "y holds 10; labels must lie in 0..9"),
    ({"x": np.zeros((5, 32, 32, 3), np.uint8), "target": np.array(["zero"] * 5)}, "target must hold integer class"),
    ({"x": np.zeros((5, 32, 32, 3), np.uint8), "target": np.int64(0), "y": np.array(["a"] * 5)},
     "y must hold integer class indices"),
    ({"x": np.zeros((5, 32, 32, 3), np.uint8), "target": np.int64(0), "y": np.arange(4)}, "x has 5 images but y has 4"),
    ({"x": np.zeros((0, 32, 32, 3), np.uint8), "target": np.int64(0)}, "x holds no images"),
])
def test_a_brought_test_set_the_model_cannot_be_scored_on_is_refused(tmp_path, arrays, fragment):
    from nba_scale.data import load_poisoned_test

    np.savez(tmp_path / "t.npz", **arrays)
    with pytest.raises(ConfigError) as e:
        load_poisoned_test(tmp_path / "t.npz", 10, (3, 32, 32))
    assert fragment in str(e.value) and "\n" not in str(e.value)


def test_a_truncated_test_set_is_a_refusal_not_a_failed_trial(tmp_path):
    path = their_test_set(tmp_path / "t.npz")
    data = Path(path).read_bytes()
    Path(path).write_bytes(data[: len(data) // 2])
    r = cli("nba_scale.run", "--poisoned-test", path, "--defense", "none", "--preset", "smoke", "--cache-dir",
            tmp_path, "--device", "cpu")
    one_line_exit_2(r, f"cannot read --poisoned-test {path}")


def test_a_tampered_epoch_checkpoint_fails_its_trial_once_with_its_reason(tmp_path):
    """A resumed trial whose epoch checkpoint carries a pickle: a failed row naming the refusal,
    with its parameters, so that the next --resume counts the point as done rather than
    retrying it (and adding a failed row) every time."""
    from nba_scale.checkpoints import save_weights
    from nba_scale.models import WideResNet
    from nba_scale.sweep.resume import interrupted_trials
    from nba_scale.sweep.plan import ResumeFrom
    from nba_scale.sweep.search_space import SearchSpace, Param

    trial = tmp_path / "_tune" / "run-1" / "trainable_abc_1"
    ckpt = trial / "checkpoint_000002"
    ckpt.mkdir(parents=True)
    (ckpt / "m0").mkdir(parents=True)
    save_weights(WideResNet(16, 1).state_dict(), ckpt / "m0" / "model.safetensors")
    torch.save({"state": {}, "param_groups": [], "x": Payload()}, ckpt / "m0" / "optimizer.pt")
    (ckpt / "state.json").write_text('{"epoch": 2}')
    point = {"nba.lambda1": 0.5}
    (trial / "params.json").write_text(json.dumps({"study": "st", "points": [point]}))
    space = SearchSpace("s.yaml", "nba", [Param("nba.lambda1", "float", 0.01, 20.0, True, None, 2.0)], {})
    [restart] = interrupted_trials(tmp_path / "_tune", "st", space, [])
    assert restart.checkpoint == ckpt and restart.epoch == 2 and interrupted_trials(tmp_path / "_tune", "other", space, []) == []

    (row,) = trial_reports(point, ResumeFrom(str(restart.checkpoint), restart.member, restart.epoch))
    assert row["status"] == "failed" and row["error"].startswith("CheckpointError: refusing to load")
    assert "optimizer.pt" in row["error"] and "pwned" not in row["error"]
    assert row["nba_lambda1"] == 0.5
    assert interrupted_trials(tmp_path / "_tune", "st", space, [{**row, "trial_id": "new"}]) == []  # not retried


def test_convert_refuses_an_out_it_cannot_write_before_converting(tmp_path):
    (tmp_path / "file").write_text("x")
    r = subprocess.run([sys.executable, "-m", "nba_scale.convert", tmp_path / "in.pt",
                        tmp_path / "file" / "o.safetensors", "--from", "nad"], capture_output=True, text=True, env=ENV,
                       cwd=REPO)
    one_line_exit_2(r, f"OUT {tmp_path / 'file' / 'o.safetensors'}: {tmp_path / 'file'} is a file, not a folder")


def test_campaign_resume_of_a_campaign_that_does_not_exist_is_refused(tmp_path):
    one_line_exit_2(cli("nba_scale.campaign", "table2", "--dataset", "synthetic", "--results", tmp_path, "--resume"),
                    "--resume: there is no campaign 'table2'")
    assert list(tmp_path.iterdir()) == []


def test_integer_weights_are_refused_naming_their_dtype(tmp_path):
    from nba_scale.checkpoints import CheckpointError, load_into
    from nba_scale.models import WideResNet

    state = {k: v.to(torch.int32) if v.is_floating_point() else v for k, v in WideResNet(16, 1).state_dict().items()}
    torch.save(state, tmp_path / "m.pt")
    with pytest.raises(CheckpointError, match=r"(mean|weight) is int32, not floating point"):
        load_into(WideResNet(16, 1), tmp_path / "m.pt")


def test_a_nad_layout_names_the_convert_command(tmp_path):
    from nba_scale.checkpoints import CheckpointError, load_into
    from nba_scale.models import WideResNet

    theirs = {k.replace("groups.0.", "block1.layer."): v for k, v in WideResNet(16, 1).state_dict().items()}
    torch.save(theirs, tmp_path / "nad.pt")
    with pytest.raises(CheckpointError, match=r"python -m nba_scale\.convert IN OUT\.safetensors --from nad$"):
        load_into(WideResNet(16, 1), tmp_path / "nad.pt")


def test_a_run_waiting_on_another_cache_build_says_so(tmp_path, capsys):
    from filelock import FileLock

    from nba_scale.artifacts import ArtifactCache, spec_key

    cache = ArtifactCache(tmp_path, lock_timeout_s=0.3)
    lock = cache.paths("backdoor", spec_key({"a": 1}))[2]
    lock.parent.mkdir(parents=True)
    with FileLock(str(lock)):  # another process, building
        with pytest.raises(TimeoutError, match="delete the lock file"):
            cache.get_or_build("backdoor", {"a": 1}, lambda: ({}, {}))
    assert "waiting: another process is building backdoor" in capsys.readouterr().err


def test_a_sweep_over_a_model_without_a_backdoor_stops_once_it_is_built(tmp_path, monkeypatch, capsys):
    """A backdoored model under --min-backdoor-asr (default 50 %) stops the sweep in one line before
    any trial; --min-backdoor-asr 0 sweeps anyway. (Ray and the build are stood in for: what is
    tested is the check on what the build reports.)"""
    from nba_scale.sweep import execution, results, tune

    monkeypatch.setattr(execution, "start_ray", lambda address=None: None)
    monkeypatch.setattr(execution, "prebuild",
                        lambda label, cfgs, address=None, gpus=0.0: [(cfgs[0], {"asr_before": 0.096, "ba_before": 0.75})])
    studies = []
    monkeypatch.setattr(tune, "run_studies", lambda plans, *a, **k: studies.extend(s.id for s in plans))
    for name in ("print_pareto", "plot", "load"):
        monkeypatch.setattr(results, name, lambda *a, **k: None)
    argv = ["--attack", "badnets", "--dataset", "synthetic", "--preset", "quick", "--results", str(tmp_path)]
    assert tune.main([*argv, "--name", "a"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "badnets seed 0 (ASR 9.6%) is under --min-backdoor-asr 50%" in err
    assert studies == []
    assert tune.main([*argv, "--name", "b", "--min-backdoor-asr", "0"]) == 0 and studies == ["badnets-cf0.05"]
    assert tune.main([*argv, "--name", "c", "--preset", "smoke"]) == 0  # smoke: plumbing, not checked
    assert tune.main([*argv, "--name", "d", "--min-backdoor-asr", "0.05"]) == 0
    with pytest.raises(SystemExit) as e:  # argparse's refusal
        tune.main([*argv, "--name", "e", "--min-backdoor-asr", "1.5"])
    assert e.value.code == 2 and "must be a fraction in [0, 1]" in capsys.readouterr().err


def test_a_campaign_whose_packs_cannot_stack_is_refused_before_its_models(tmp_path):
    """ablation-losses packs NBA variants that differ in `losses`: one stacked network computes
    one set of losses, so `--pack-mode stacked` is refused at once (auto would loop them)."""
    r = cli("nba_scale.campaign", "ablation-losses", "--dataset", "synthetic", "--dry-run", "--results", tmp_path,
            "--pack", "3", "--pack-mode", "stacked", "--seeds", "0")
    one_line_exit_2(r, "--pack-mode stacked: a stacked pack's members must share nba.losses")
    ok = cli("nba_scale.campaign", "ablation-losses", "--dataset", "synthetic", "--dry-run", "--results", tmp_path,
             "--pack", "3", "--pack-mode", "auto", "--seeds", "0")
    assert ok.returncode == 0, ok.stderr
