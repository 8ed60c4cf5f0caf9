"""Packed trials: several configurations of one defense trained together on the same backdoored
model, teacher and batches (`trial.run_pack`, `training.train_pack`)."""
import math

import pytest

from conftest import small_config
from nba_scale.config import ConfigError
from nba_scale.trial import run_pack, run_trial

pytestmark = pytest.mark.slow  # on the session's synthetic BadNets model (built once, ~40 s)

VARIANTS = [{"nba.beta": 0.2}, {"nba.lambda1": 0.5, "nba.T": 2.0, "nba.pgd_eps": 0.02}, {"nba.alpha": 3.0}]


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
        assert (p["asr"], p["ba"], p["ra"]) == (a["asr"], a["ba"], a["ra"]), k
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
        assert (packed[k]["asr"], packed[k]["ba"]) == (alone["asr"], alone["ba"])
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
