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
    rng = np.random.default_rng(0)
    arrays = dict(x_train=rng.integers(0, 255, (40, 32, 32, 3), dtype=np.uint8), y_train=np.arange(40) % 4,
                  x_test=rng.integers(0, 255, (12, 32, 32, 3), dtype=np.uint8), y_test=np.arange(12) % 4)
    arrays.update(change)
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
    [(_, base, _)] = plan(args, space)
    assert base["nba"]["lambda1"] == 0.05  # what every trial gets: the searcher no longer samples it
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


def test_a_config_error_inside_a_trial_keeps_the_error_and_the_sampled_parameters():
    """A trial whose config the core rejects ends as a failed row with the real error, its axes
    and what the searcher sampled (it used to end as `KeyError: 'dataset'` in the sink)."""
    from nba_scale.sweep.trainable import trial_loop

    reports = []

    class Session:
        is_main = True

        def get_checkpoint(self):
            return None

        def report(self, metrics, checkpoint_dir=None):
            reports.append(metrics)

    base = {"dataset": "synthetic", "attack": "badnets", "defense": "nba", "clean_fraction": 0.1, "seed": 0}
    trial_loop({"__base__": base, "__default__": {}, "nba.optim.epochs": -3}, Session())
    (row,) = reports
    assert row["status"] == "failed" and row["error"] == "ConfigError: nba.optim.epochs=-3 must be >= 0"
    assert row["dataset"] == "synthetic" and row["attack"] == "badnets" and row["nba_optim_epochs"] == -3
    assert (row["asr"], row["ba"]) == (1.0, 0.0)  # what Optuna is told; the Parquet row gets NaN
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
])
def test_bad_scheduler_and_points_flags_are_refused_before_ray_starts(tmp_path, extra, fragment):
    if "{bad}" in extra:
        (tmp_path / "bad.json").write_text('[{"nba.lambda1": 1}]')
        extra = ["--points", tmp_path / "bad.json"]
    r = cli("nba_scale.tune", "--attack", "badnets", "--dataset", "synthetic", "--preset", "quick",
            "--results", tmp_path, *extra)
    one_line_exit_2(r, fragment)
