import json
import math
import os
import subprocess
import sys

import pytest

from conftest import small_config
from nba_scale.config import ConfigError
from nba_scale.trial import run_trial

ENV = {**os.environ, "PYTHONUNBUFFERED": "1"}


def cli(*args, cache):
    return subprocess.run([sys.executable, "-m", "nba_scale.run", "--device", "cpu", "--cache-dir", str(cache), *args],
                          capture_output=True, text=True, env=ENV, timeout=600)


@pytest.mark.parametrize("args, fragment", [
    (["--attack", "badnet"], "unknown attack 'badnet'; known: badnets"),
    (["--defense", "nda"], "unknown defense 'nda'; known:"),
    (["--dataset", "imagenet"], "unknown dataset 'imagenet'; known: synthetic, synthetic-hard, cifar10, cifar100, gtsrb, tiny-imagenet, npz:PATH, folder:PATH"),
    (["--set", "nba.gamma=1"], "unknown config key 'nba.gamma'"),
    (["--set", "epochs"], "--set expects key=value"),
])
def test_bad_input_is_one_line_and_exit_2(tmp_path, args, fragment):
    r = cli(*args, cache=tmp_path)
    assert r.returncode == 2, r.stderr
    assert fragment in r.stderr and r.stderr.strip().count("\n") == 0 and r.stdout == ""


@pytest.mark.slow
def test_json_result_on_last_line_and_defense_none(tmp_path):
    r = cli("--preset", "smoke", "--defense", "none", "--json", cache=tmp_path)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout.strip().splitlines()[-1])
    for key in ("dataset", "attack", "defense", "clean_fraction", "seed", "config", "ba_before", "asr_before",
                "ra_before", "ba", "asr", "ra", "wall_s", "status", "error"):
        assert key in out
    assert out["status"] == "ok" and out["error"] is None and out["defense"] == "none"
    assert (out["ba"], out["asr"], out["ra"]) == (out["ba_before"], out["asr_before"], out["ra_before"])
    assert all(0 <= out[k] <= 1 for k in ("ba", "asr", "ra"))
    assert out["config"]["backdoor.epochs"] == 4  # the smoke preset
    # The second run finds the backdoored model in the cache and trains nothing.
    again = json.loads(cli("--preset", "smoke", "--defense", "none", "--json", cache=tmp_path).stdout.splitlines()[-1])
    assert again["artifacts"]["backdoor"] == {**out["artifacts"]["backdoor"], "cached": True}
    assert again["ba_before"] == out["ba_before"]


@pytest.mark.slow
def test_nan_loss_marks_the_trial_failed_and_returns(tmp_path):
    cfg = small_config(tmp_path, **{"data.synthetic_train": 200, "data.synthetic_test": 50, "backdoor.epochs": 1,
                                    "teacher.epochs": 1, "nba.optim.epochs": 1, "clean_fraction": 0.2,
                                    "nba.lambda1": float("nan")})
    out = run_trial(cfg)
    assert out["status"] == "failed" and "NonFiniteLoss" in out["error"] and "nba epoch 1/1" in out["error"]
    assert math.isfinite(out["wall_s"])
    with pytest.raises(ConfigError):
        run_trial({**cfg, "attack": "nope"})


def test_npz_artifacts_are_keyed_by_content_not_path(tmp_path):
    import shutil

    import numpy as np

    rng = np.random.default_rng(0)
    np.savez(tmp_path / "a.npz", x_train=rng.integers(0, 255, (60, 32, 32, 3), dtype=np.uint8), y_train=np.arange(60) % 3,
             x_test=rng.integers(0, 255, (15, 32, 32, 3), dtype=np.uint8), y_test=np.arange(15) % 3)
    (tmp_path / "moved").mkdir()
    shutil.copy(tmp_path / "a.npz", tmp_path / "moved" / "a.npz")
    cfg = {"defense": "none", "device": "cpu", "cache_dir": str(tmp_path / "cache"), "backdoor.epochs": 1,
           "backdoor.batch_size": 16}
    first = run_trial({**cfg, "dataset": f"npz:{tmp_path / 'a.npz'}"})
    moved = run_trial({**cfg, "dataset": f"npz:{tmp_path / 'moved' / 'a.npz'}"})
    assert first["status"] == moved["status"] == "ok"
    assert not first["artifacts"]["backdoor"]["cached"] and moved["artifacts"]["backdoor"]["cached"]


def test_list_keys_names_every_key_the_trial_resolves_and_print_config_shows_the_layers():
    """`run --list-keys` lists the keys the checks accept (read from the same dataclasses): the
    resolved config of a trial has exactly those keys. `--print-config` shows flags, preset and
    `--set` applied, without training."""
    import subprocess
    import sys

    from nba_scale import cli
    from nba_scale.trial import with_preset

    listed = {k for k, _, _ in cli.config_keys("blend", "nad")}
    resolved = cli.resolved_config(with_preset({"attack": "blend", "defense": "nad"}, "quick"))
    assert set(resolved) == listed and "nad.betas" in listed and "blend.alpha" in listed and "data.train_subset" in listed
    out = subprocess.run([sys.executable, "-m", "nba_scale.run", "--attack", "blend", "--list-keys"],
                         capture_output=True, text=True)
    assert out.returncode == 0 and "nba.beta  (float)  default 0.5" in out.stdout
    shown = subprocess.run([sys.executable, "-m", "nba_scale.run", "--attack", "blend", "--preset", "quick",
                            "--set", "nba.beta=1", "--print-config"], capture_output=True, text=True)
    lines = set(shown.stdout.splitlines())
    assert shown.returncode == 0 and {"nba.beta=1.0", "backdoor.epochs=30", "attack=\"blend\""} <= lines
    typo = subprocess.run([sys.executable, "-m", "nba_scale.run", "--set", "nba.bta=1", "--print-config"],
                          capture_output=True, text=True)
    assert typo.returncode == 2 and "nba.bta" in typo.stderr


def test_clean_images_resolve_to_the_clean_fraction_of_the_attackers_set_and_the_cpu_paper_preset_to_5pc_of_all(
        tmp_path):
    def shown(*args):
        r = subprocess.run([sys.executable, "-m", "nba_scale.run", "--dataset", "synthetic", *args, "--print-config"],
                           capture_output=True, text=True, env=ENV)
        assert r.returncode == 0, r.stderr
        return r, [ln for ln in r.stdout.splitlines() if ln.startswith("clean_fraction=")]

    r, lines = shown("--preset", "smoke", "--clean-images", "250")  # smoke: 1,000 synthetic training images
    assert lines == ["clean_fraction=0.25"] and "250 images = 0.25 of the attacker's training set" in r.stderr
    r, lines = shown("--preset", "cpu-paper")  # 5 % of the 4,000 synthetic training images
    assert lines == ["clean_fraction=0.05"] and "paper = 200 images" in r.stderr
    assert "nba.optim.epochs=20" in r.stdout and "backdoor.epochs=30" in r.stdout
    r, lines = shown("--preset", "cpu-paper", "--clean-fraction", "0.1")  # an explicit fraction wins
    assert lines == ["clean_fraction=0.1"] and "clean set" not in r.stderr
    camp = subprocess.run([sys.executable, "-m", "nba_scale.campaign", "table2", "--dataset", "synthetic", "--preset",
                           "smoke", "--clean-images", "100", "400", "--only", "defense=nba", "--only", "attack=sig",
                           "--results", str(tmp_path), "--print-config"], capture_output=True, text=True, env=ENV)
    assert camp.returncode == 0, camp.stderr
    assert [ln for ln in camp.stdout.splitlines() if ln.startswith("# ")] == [
        "# sig-nba-cf0.1-s0", "# sig-nba-cf0.4-s0 (keys that differ from sig-nba-cf0.1-s0)"]


@pytest.mark.slow
def test_a_trial_given_clean_images_defends_with_that_many(tmp_path):
    r = cli("--preset", "smoke", "--defense", "ft", "--clean-images", "150", "--set", "ft.optim.epochs=1", "--json",
            cache=tmp_path)
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert r.returncode == 0 and out["n_clean"] == 150 and out["clean_fraction"] == 0.15, r.stderr


def test_tune_and_campaign_print_their_trials_configs_without_running_them(tmp_path):
    import subprocess
    import sys

    tune = subprocess.run([sys.executable, "-m", "nba_scale.tune", "--attack", "badnets", "blend", "--dataset", "synthetic",
                           "--preset", "smoke", "--set", "blend.alpha=0.3", "--results", str(tmp_path), "--print-config"],
                          capture_output=True, text=True)
    heads = [ln for ln in tune.stdout.splitlines() if ln.startswith("# ")]
    assert tune.returncode == 0 and len(heads) == 2 and "nba.lambda1=2.0" in tune.stdout
    assert 'attack="blend"' in tune.stdout and "blend.alpha=0.3" in tune.stdout  # the second study: what differs
    assert not any(tmp_path.iterdir())  # nothing started, nothing written
    camp = subprocess.run([sys.executable, "-m", "nba_scale.campaign", "table2", "--dataset", "synthetic", "--preset",
                           "smoke", "--results", str(tmp_path), "--print-config"], capture_output=True, text=True)
    assert camp.returncode == 0 and sum(ln.startswith("# ") for ln in camp.stdout.splitlines()) == 36
    keys = subprocess.run([sys.executable, "-m", "nba_scale.campaign", "table2", "--list-keys"], capture_output=True,
                          text=True)
    listed = [ln.split()[0] for ln in keys.stdout.splitlines()]
    assert keys.returncode == 0 and len(listed) == len(set(listed)) and {"refool.rate", "argd.optim.lr"} <= set(listed)
    assert not any(tmp_path.iterdir())
