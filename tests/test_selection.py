"""The selection split: a sweep chooses on images it does not report on (data.selection_split)."""
import math

import numpy as np
import pytest
import torch

from nba_scale.data import DataConfig, load_dataset, stratified_indices


def ids(x):
    """Each image of `unique_npz` carries its id in its first pixel."""
    return set((x[:, 0, 0, 0].long() + 256 * x[:, 1, 0, 0].long() + 65536 * x[:, 2, 0, 0].long()).tolist())


@pytest.fixture(scope="module")
def unique_npz(tmp_path_factory):
    n_tr, n_te = 600, 200
    x = np.zeros((n_tr + n_te, 32, 32, 3), np.uint8)
    i = np.arange(n_tr + n_te)
    x[:, 0, 0, 0], x[:, 0, 0, 1], x[:, 0, 0, 2] = i % 256, (i // 256) % 256, i // 65536
    path = tmp_path_factory.mktemp("d") / "u.npz"
    np.savez(path, x_train=x[:n_tr], y_train=i[:n_tr] % 5, x_test=x[n_tr:], y_test=i[n_tr:] % 5)
    return f"npz:{path}"


@pytest.mark.parametrize("data, source", [
    ({"train_subset": 300, "val_size": 100}, "train-pool"),
    ({"test_subset": 100, "val_size": 60}, "test-spare"),
    ({"val_size": 60}, "test-held-out"),
    ({"train_subset": 300, "test_subset": 100, "val_size": 100}, "train-pool"),
])
def test_selection_test_and_clean_images_are_disjoint(unique_npz, data, source):
    ds = load_dataset(unique_npz, DataConfig(**data), seed=2)
    clean = ds.x_train[stratified_indices(ds.y_train, fraction=0.1, seed=2)]  # the defender's, as trials draw it
    val, train, test = ids(ds.x_val), ids(ds.x_train), ids(ds.x_test)
    assert ds.val_source == source and len(val) == len(ds.y_val) >= 0.9 * data["val_size"]
    assert not val & train and not val & test and not val & ids(clean) and not train & test
    assert sorted(torch.bincount(ds.y_val).tolist()) == [len(ds.y_val) // 5] * 5  # stratified
    if source == "test-held-out":  # the test split gave them up
        assert len(ds.y_test) + len(ds.y_val) == 200
    else:
        assert len(ds.y_test) == data.get("test_subset", 200)
    again = load_dataset(unique_npz, DataConfig(**{**data, "val_size": 0}), seed=2)
    assert again.x_val is None and torch.equal(again.x_train, ds.x_train)


def test_synthetic_data_draws_its_selection_split_afresh():
    ds = load_dataset("synthetic", DataConfig(synthetic_train=200, synthetic_test=50, val_size=50), seed=1)
    flat = lambda x: {bytes(v) for v in x.flatten(1).numpy()}  # noqa: E731
    assert ds.val_source == "synthetic-draw" and len(ds.y_val) == 50
    assert not flat(ds.x_val) & (flat(ds.x_train) | flat(ds.x_test))


def test_a_selection_split_changes_no_artifact_key(unique_npz):
    """val_size is not keyed (the backdoored model and teacher are the same ones), except where it
    is held out of the test split, which then differs."""
    from nba_scale.attacks import get_attack
    from nba_scale.trial import artifact_specs, parse_config

    def specs(**data):
        cfg = parse_config({"dataset": unique_npz, **{f"data.{k}": v for k, v in data.items()}})
        ds = load_dataset(cfg.dataset, cfg.data, cfg.seed)
        return artifact_specs(cfg, ds, get_attack("badnets")({}, ds.num_classes, 0))

    assert specs(train_subset=300) == specs(train_subset=300, val_size=100)
    assert specs() != specs(val_size=60)  # test-held-out: another test split


def test_the_searcher_is_told_the_selection_figures_and_the_row_keeps_both():
    from nba_scale.sweep.plan import Member
    from nba_scale.sweep.resume import objectives
    from nba_scale.sweep.trainable import finish

    result = {"dataset": "s", "attack": "badnets", "defense": "nba", "clean_fraction": 0.1, "seed": 0, "status": "ok",
              "asr": 0.2, "ba": 0.7, "val_asr": 0.1, "val_ba": 0.8}
    member = Member({}, {}, {})
    row, told = finish(member, result, 0.0)
    assert told == {"asr": 0.1, "ba": 0.8} and (row["asr"], row["val_asr"]) == (0.2, 0.1)
    assert objectives(row) == [0.1, 0.8]  # what a --resume tells the study again
    plain = {**result, "val_asr": None, "val_ba": None}
    assert finish(member, plain, 0.0)[1] == {"asr": 0.2, "ba": 0.7}
    assert objectives({**row, "status": "failed"}) == [1.0, 0.0]


def test_the_front_is_chosen_on_the_selection_split_and_reported_on_test():
    import pyarrow as pa

    from nba_scale.sweep.results import pareto_table

    def row(i, val, test):
        return {"trial_id": f"t{i}", "attack": "a", "clean_fraction": 0.1, "status": "ok",
                "val_asr": val[0], "val_ba": val[1], "asr": test[0], "ba": test[1]}

    # t1 looks best on test (the lucky one) but is dominated on validation by t0.
    rows = [row(0, (0.05, 0.80), (0.06, 0.78)), row(1, (0.07, 0.79), (0.02, 0.85)), row(2, (0.30, 0.90), (0.31, 0.88))]
    front = pareto_table(pa.Table.from_pylist(rows), ["attack", "clean_fraction"]).to_pylist()
    assert [r["trial_id"] for r in front] == ["t0", "t2"] and {r["chosen_on"] for r in front} == {"val"}
    old = [{k: v for k, v in r.items() if not k.startswith("val_")} for r in rows]  # rows without a split
    front = pareto_table(pa.Table.from_pylist(old), ["attack", "clean_fraction"]).to_pylist()
    assert [r["trial_id"] for r in front] == ["t1", "t2"] and front[0]["chosen_on"] == "test"


@pytest.mark.parametrize("extra, dataset, want", [
    ([], "synthetic", 300),  # smoke: as many as its synthetic test split
    (["--preset", "quick"], "synthetic", 1000),
    ([], "cifar10", 2000),
    (["--val-size", "0"], "synthetic", 0),
    (["--set", "data.val_size=77"], "synthetic", 77),
])
def test_a_sweeps_trials_get_a_selection_split_by_default(extra, dataset, want):
    from nba_scale.sweep.tune import build_parser, with_selection_split
    from nba_scale import cli

    args = build_parser().parse_args(["--attack", "badnets", "--dataset", dataset, "--preset", "smoke", *extra])
    cfg = cli.trial_config(cli.base_config(args), {"attack": "badnets"}, cli.user_set(args), preset=args.preset)
    assert with_selection_split(cfg, args.val_size)["data"]["val_size"] == want


def test_a_trial_scores_its_selection_split_beside_the_test_split(tmp_path):
    from nba_scale.trial import run_trial

    r = run_trial({"dataset": "synthetic", "attack": "badnets", "defense": "none", "device": "cpu", "seed": 3,
                   "cache_dir": str(tmp_path), "data.synthetic_train": 300, "data.synthetic_test": 100,
                   "data.val_size": 80, "backdoor.epochs": 1})
    assert r["status"] == "ok" and r["n_val"] == 80 and r["val_source"] == "synthetic-draw"
    assert r["val_ba_n"] == 80 and r["val_asr_n"] == 80 - r["val_ba_n"] // 10  # the target class's images left out
    assert r["val_asr_before"] == r["val_asr"] and r["val_asr_lo"] <= r["val_asr"] <= r["val_asr_hi"]
    assert not math.isnan(r["val_ba"]) and r["n_test"] == 100
