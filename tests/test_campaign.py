"""Campaigns: grids expand to the right cells; tiny campaigns run through Ray Tune into Parquet
and a report; a killed campaign resumes without recomputing finished cells; leave-one-attack-out."""
import itertools
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from nba_scale.sweep.grid import cell_config, list_campaigns, load_campaign
from nba_scale.config import ConfigError
from nba_scale.sweep.store import parquet_files, read_table
from nba_scale.sweep.search_space import load_search_space
from nba_scale.sweep.transfer import leave_one_out, worst_case

REPO = Path(__file__).resolve().parent.parent
SIX = ["badnets", "trojan", "blend", "sig", "cla", "refool"]
DEFENSES = ["ft", "fp", "mcr", "nad", "argd", "nba"]


def test_every_paper_campaign_exists_and_expands_to_its_grid():
    assert set(list_campaigns()) >= {"table2", "clean-fraction", "ablation-terms", "ablation-losses", "newer-attacks",
                                     "representation", "udl-samples", "transfer"}
    t2 = load_campaign("table2").cells([0, 1, 2])
    assert len(t2) == 6 * 6 * 3 and {(c.attack, c.defense, c.seed) for c in t2} == set(
        itertools.product(SIX, DEFENSES, [0, 1, 2]))
    assert len({c.id for c in t2}) == len(t2)  # ids name rows: they must be unique
    newer = load_campaign("newer-attacks").cells([0])
    assert {(c.attack, c.defense) for c in newer} == set(itertools.product(["wanet", "bpp"], DEFENSES))
    cf = load_campaign("clean-fraction").cells([0])
    assert {c.clean_fraction for c in cf} == {0.01, 0.05, 0.1, 0.2} and len(cf) == 6 * 6 * 4

    terms = load_campaign("ablation-terms").cells([0])
    subsets = {frozenset(dict(c.overrides)["nba.terms"]) for c in terms}
    assert len(terms) == 6 * 7 and subsets == {frozenset(s) for n in (1, 2, 3)
                                               for s in itertools.combinations(["rnb", "lnb", "pnb"], n)}
    losses = {c.variant: dict(c.overrides) for c in load_campaign("ablation-losses").cells([0])}
    assert losses["ldl"]["nba.losses"] == "ldl" and losses["udl"]["nba.losses"] == "udl"
    assert {v.get("nba.beta") for v in losses.values()} >= {0.1, 1.0, 2.0}
    rep = {dict(c.overrides)["nba.representation"] for c in load_campaign("representation").cells([0])}
    assert rep == {"gram", "feature"}
    udl = {c.variant: dict(c.overrides) for c in load_campaign("udl-samples").cells([0])}
    assert udl["none"]["nba.losses"] == "ldl" and udl["poisoned"]["nba.udl_samples"] == "poisoned"
    assert udl["pseudo"]["nba.udl_samples"] == "pseudo"


def test_transfer_pool_starts_with_the_paper_default_and_draws_inside_the_space():
    camp = load_campaign("transfer")
    space = load_search_space(REPO / "search_spaces" / "nba.yaml")
    assert len(camp.variants) == 8 and len(camp.cells([0])) == 6 * 8
    assert {k: camp.variants["cfg0"][k] for k in space.default_config()} == space.default_config()
    for name, over in camp.variants.items():
        for p in space.params:
            assert p.low <= over[p.name] <= p.high, (name, p.name)
    assert len({tuple(sorted(v.items())) for v in camp.variants.values()}) == 8
    assert load_campaign("transfer").variants == camp.variants  # seeded: the same pool every time


def test_cell_config_layers_and_drops_sections_of_plugins_not_in_use():
    camp = load_campaign("ablation-losses")
    cell = next(c for c in camp.cells([3]) if c.attack == "blend" and c.variant == "beta2")
    cfg = cell_config(camp, cell, {"dataset": "synthetic"}, {"badnets": {"rate": 0.3}, "blend": {"alpha": 0.1}},
                      preset="quick")
    assert cfg["attack"] == "blend" and cfg["seed"] == 3 and cfg["nba"]["beta"] == 2.0
    assert cfg["blend"] == {"alpha": 0.1} and "badnets" not in cfg  # another attack's --set is not this cell's
    assert cfg["nba"]["optim"]["epochs"] == 10 and cfg["backdoor"]["epochs"] == 30  # quick preset, under the rest
    over = cell_config(camp, cell, {"dataset": "synthetic"}, {"nba": {"beta": 0.7}})
    assert over["nba"]["beta"] == 0.7  # the user's --set has the last word


@pytest.mark.parametrize("doc, needle", [
    ({"attacks": ["badnets"], "defenses": ["nba"], "colour": 1}, "unknown key 'colour'"),
    ({"attacks": ["nope"], "defenses": ["nba"]}, "unknown attack 'nope'"),
    ({"attacks": ["badnets"], "defenses": []}, "'defenses' must be a non-empty list"),
    ({"attacks": ["badnets"], "defenses": ["nba"], "variants": {"x": {"nba.betta": 1}}}, "cell badnets-nba-cf0.05-x-s0"),
    ({"attacks": ["badnets"], "defenses": ["nba"], "clean_fractions": [2]}, "'clean_fractions' must be"),
])
def test_malformed_campaigns_fail_in_one_line(tmp_path, doc, needle):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(doc))
    with pytest.raises(ConfigError) as e:
        load_campaign(str(path))
    assert needle in str(e.value) and "\n" not in str(e.value)


def test_leave_one_out_never_looks_at_the_held_out_attack():
    # cfg_a is perfect on a and b but useless on c; cfg_c the reverse; cfg_mid is decent everywhere.
    m = {"cfg_a": {"a": (0.0, 0.9), "b": (0.0, 0.9), "c": (1.0, 0.9)},
         "cfg_c": {"a": (1.0, 0.9), "b": (1.0, 0.9), "c": (0.0, 0.9)},
         "cfg_mid": {"a": (0.2, 0.8), "b": (0.2, 0.8), "c": (0.2, 0.8)}}
    loo = {r["held_out"]: r for r in leave_one_out(m)}
    assert loo["c"]["chosen"] == "cfg_a" and loo["c"]["tuned_on_it"] == "cfg_c"
    assert loo["c"]["chosen_asr"] == 1.0 and loo["c"]["asr_loss"] == pytest.approx(1.0)
    assert loo["c"]["utility_loss"] == pytest.approx(1.0)
    assert loo["a"]["chosen"] == "cfg_mid" and loo["a"]["utility_loss"] == pytest.approx(0.3)
    wc = worst_case(m)
    assert wc[0]["variant"] == "cfg_mid" and wc[0]["pareto"] and wc[0]["worst_asr"] == 0.2


# --------------------------------------------------------------------------------------------
# through Ray Tune, on synthetic data


def campaign_cmd(yaml_path, results, cache, *extra):
    return [sys.executable, "-m", "nba_scale.campaign", str(yaml_path), "--dataset", "synthetic", "--preset", "smoke",
            "--results", str(results), "--cache-dir", str(cache), "--device", "cpu", "--max-concurrent", "1", *extra]


def env():
    return {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}


def write_yaml(tmp_path, name, **doc):
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump({"name": name, "clean_fractions": [0.1], **doc}))
    return path


def report_cell(text, row_label, after=""):
    lines = text.splitlines()
    start = next(i for i, ln in enumerate(lines) if after in ln)
    line = next(ln for ln in lines[start:] if ln.startswith(f"| {row_label} |"))
    return [c.strip() for c in line.strip("|").split("|")]


@pytest.mark.slow
def test_a_killed_campaign_resumes_without_recomputing_and_reports_the_measured_numbers(tmp_path):
    path = write_yaml(tmp_path, "tiny", attacks=["badnets"], defenses=["ft", "nba"],
                      report={"rows": "attack", "columns": "defense"})
    results, cache = tmp_path / "results", tmp_path / "cache"
    root = results / "tiny"
    log = open(tmp_path / "first.log", "w")
    proc = subprocess.Popen(campaign_cmd(path, results, cache), cwd=REPO, env=env(), start_new_session=True,
                            stdout=log, stderr=subprocess.STDOUT)
    deadline = time.time() + 600
    while time.time() < deadline and not (root.exists() and parquet_files(root)) and proc.poll() is None:
        time.sleep(0.5)
    assert proc.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
    os.killpg(proc.pid, signal.SIGKILL)  # the first cell has landed, the second is running
    proc.wait()
    first = read_table(root).to_pylist()
    assert len(first) == 1 and first[0]["status"] == "ok"

    again = subprocess.run(campaign_cmd(path, results, cache), cwd=REPO, env=env(), capture_output=True, text=True)
    assert again.returncode == 2 and "pass --resume" in again.stderr

    r = subprocess.run(campaign_cmd(path, results, cache, "--resume"), cwd=REPO, env=env(), capture_output=True,
                       text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "finished already: 1; to run: 1 trials" in r.stdout
    rows = {x["trial_id"]: x for x in read_table(root).to_pylist()}
    assert set(rows) == {"badnets-ft-cf0.1-s0", "badnets-nba-cf0.1-s0"}
    kept = rows[first[0]["trial_id"]]
    assert (kept["started"], kept["finished"]) == (first[0]["started"], first[0]["finished"])  # not recomputed
    assert all(x["status"] == "ok" and x["campaign"] == "tiny" for x in rows.values())

    done = subprocess.run(campaign_cmd(path, results, cache, "--resume"), cwd=REPO, env=env(),
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and "to run: 0 trials" in done.stdout and "nothing to run" in done.stdout
    mixed = subprocess.run(campaign_cmd(path, results, cache, "--resume", "--set", "badnets.rate=0.3"), cwd=REPO,
                           env=env(), capture_output=True, text=True, timeout=300)
    assert mixed.returncode == 2 and "was run with set" in mixed.stderr  # no silent mix of two configurations

    out = tmp_path / "report"
    rep = subprocess.run([sys.executable, "-m", "nba_scale.report", str(results), "--out", str(out)], cwd=REPO,
                         env=env(), capture_output=True, text=True, timeout=300)
    assert rep.returncode == 0, rep.stderr
    text = (out / "README.md").read_text()
    cells = report_cell(text, "badnets")
    ft, nba = rows["badnets-ft-cf0.1-s0"], rows["badnets-nba-cf0.1-s0"]
    assert cells[1] == f"{100 * ft['asr_before']:.1f} / {100 * ft['ba_before']:.1f}"
    assert cells[2] == f"{100 * ft['asr']:.1f} / {100 * ft['ba']:.1f}"
    assert cells[3] == f"{100 * nba['asr']:.1f} / {100 * nba['ba']:.1f}"
    assert "python -m nba_scale.campaign" in text and "--resume" in text  # the commands that made it
    for png in ("tiny_bars.png", "tiny_pareto.png", "tiny_training.png"):
        assert (out / png).stat().st_size > 5000
    # how each cell's defense trained: FT its cross-entropy, NBA each of its terms, per epoch
    from nba_scale.sweep.store import read_curves

    curves = read_curves(root).to_pylist()
    assert {c["trial_id"] for c in curves} == set(rows) and all(c["loss"] > 0 for c in curves)
    assert all(c.get("loss_udl") is not None for c in curves if c["defense"] == "nba")


@pytest.mark.slow
def test_leave_one_attack_out_on_two_synthetic_attacks_reports_held_out_scores(tmp_path):
    path = write_yaml(tmp_path, "loao", attacks=["badnets", "blend"], defenses=["nba"],
                      sample={"space": "nba", "n": 2, "seed": 0},
                      report={"rows": "attack", "columns": "variant", "transfer": True})
    results, cache = tmp_path / "results", tmp_path / "cache"
    r = subprocess.run(campaign_cmd(path, results, cache, "--set", "nba.optim.epochs=1"), cwd=REPO, env=env(),
                       capture_output=True, text=True, timeout=1200)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    rows = read_table(results / "loao").to_pylist()
    assert len(rows) == 4 and all(x["status"] == "ok" for x in rows)
    score = {(x["variant"], x["attack"]): (x["asr"], x["ba"]) for x in rows}
    out = tmp_path / "report"
    rep = subprocess.run([sys.executable, "-m", "nba_scale.report", str(results / "loao"), "--out", str(out)],
                         cwd=REPO, env=env(), capture_output=True, text=True, timeout=300)
    assert rep.returncode == 0, rep.stderr
    text = (out / "README.md").read_text()
    for held, other in (("badnets", "blend"), ("blend", "badnets")):
        cells = report_cell(text, held, after="Leave-one-attack-out")
        chosen = cells[1]
        # chosen on the other attack alone: its BA - ASR there is the best of the pool
        assert chosen == max(("cfg0", "cfg1"), key=lambda v: (score[(v, other)][1] - score[(v, other)][0], v == "cfg0"))
        asr, ba = score[(chosen, held)]
        assert cells[2] == f"{100 * asr:.1f} / {100 * ba:.1f}"
    assert re.search(r"\| cfg[01] \| [\d.]+ \| (badnets|blend) \| [\d.]+ \|", text)  # worst-case table


def test_report_of_a_clean_fraction_grid_groups_by_attack_and_draws_curves(tmp_path, monkeypatch):
    """Rows written straight to Parquet (no training): the report's layout for a campaign whose
    columns are clean fractions, one table per attack, plus the curves figure; the machine's
    paths are shown relative to the home folder."""
    import json

    from nba_scale.sweep.report import write_report
    from nba_scale.sweep.store import write_row

    root = tmp_path / "results" / "clean-fraction"
    rows = []
    for attack, defense, cf, seed in itertools.product(["badnets", "blend"], ["ft", "nba"], [0.01, 0.1], [0, 1]):
        r = {"dataset": "synthetic", "attack": attack, "defense": defense, "clean_fraction": cf, "seed": seed,
             "variant": "default", "status": "ok", "asr": 0.5 - cf - 0.01 * seed, "ba": 0.6 + cf + 0.01 * seed,
             "asr_before": 0.99, "ba_before": 0.9, "wall_s": 5.0, "time_defense_s": 4.0,
             "trial_id": f"{attack}-{defense}-cf{cf:g}-s{seed}"}
        write_row(root, r)
        rows.append(r)
    (root / "campaign.json").write_text(json.dumps({
        "campaign": "clean-fraction", "file": "clean-fraction", "title": "t", "paper": "Figs 6-7",
        "report": {"rows": "defense", "columns": "clean_fraction", "curves": "clean_fraction"},
        "dataset": f"npz:{tmp_path}/d.npz", "preset": "smoke", "seeds": [0, 1], "set": [],
        "commands": [f"python -m x --results {tmp_path}/results"]}))
    monkeypatch.setenv("HOME", str(tmp_path))
    path = write_report(tmp_path / "results", tmp_path / "out")
    text = path.read_text()
    assert str(tmp_path) not in text and "--results ~/results" in text and "`npz:~/d.npz`" in text
    assert "### attack badnets" in text and "### attack blend" in text
    cells = report_cell(text, "nba", after="### attack blend")
    # cf 0.01, cf 0.1 over seeds 0 and 1 (1 point apart): ± the t interval, 12.7 x std / sqrt(2) at two seeds
    assert cells[1:3] == ["48.5±6.4 / 61.5±6.4", "39.5±6.4 / 70.5±6.4"]
    for png in ("clean-fraction_bars.png", "clean-fraction_pareto.png", "clean-fraction_curves.png"):
        assert (tmp_path / "out" / png).stat().st_size > 5000

    # --with-rows keeps the record beside the report; the copy reports the same table.
    kept = write_report(tmp_path / "results", tmp_path / "kept", with_rows=True).read_text()
    assert "(its rows: `rows/` here)" in kept
    copy = tmp_path / "kept" / "rows" / "clean-fraction"
    assert sorted(p.name for p in copy.iterdir()) == ["campaign.json", "rows.parquet"]
    again = write_report(copy, tmp_path / "again").read_text()
    assert report_cell(again, "nba", after="### attack blend") == cells
    # An OUT inside the folder the report reads (the results folder itself, or below it, or below
    # a campaign) is refused before anything is written: its copied rows would be counted twice.
    from nba_scale.sweep.store import read_table

    for src, out in [(root, root / "report"), (tmp_path / "results", tmp_path / "results"),
                     (tmp_path / "results", tmp_path / "results" / "report")]:
        with pytest.raises(ConfigError, match="which this report reads"):
            write_report(src, out, with_rows=True)
    assert not (root / "report").exists() and not (tmp_path / "results" / "report").exists()
    assert not (tmp_path / "results" / "rows").exists() and not (tmp_path / "results" / "README.md").exists()
    assert read_table(tmp_path / "results").num_rows == len(rows)


@pytest.mark.slow
def test_compare_runs_the_table2_grid_serially_with_the_reports_table(tmp_path, capsys):
    from nba_scale.sweep.compare import main
    from nba_scale.sweep.report import write_report

    args = ["--dataset", "synthetic", "--attack", "badnets", "--defenses", "ft", "nad", "--preset", "smoke",
            "--results", str(tmp_path / "r"), "--cache-dir", str(tmp_path / "c"), "--device", "cpu"]
    assert main(args) == 0
    out = capsys.readouterr().out
    root = tmp_path / "r" / "compare_synthetic"
    rows = {x["trial_id"]: x for x in read_table(root).to_pylist()}
    assert set(rows) == {"badnets-ft-cf0.05-s0", "badnets-nad-cf0.05-s0"}
    assert all(x["status"] == "ok" and x["sweep"] == "compare_synthetic" for x in rows.values())
    cells = report_cell(out, "badnets")
    ft, nad = rows["badnets-ft-cf0.05-s0"], rows["badnets-nad-cf0.05-s0"]
    assert cells[1] == f"{100 * ft['asr_before']:.1f} / {100 * ft['ba_before']:.1f}"
    assert cells[2:4] == [f"{100 * r['asr']:.1f} / {100 * r['ba']:.1f}" for r in (ft, nad)]
    assert main(args) == 0 and "2 cells (2 already in" in capsys.readouterr().out  # nothing recomputed
    assert main(args + ["--set", "badnets.rate=0.3"]) == 2  # no silent mix of two configurations
    assert "was run with set" in capsys.readouterr().err
    text = write_report(root, tmp_path / "out").read_text()  # the same folder, as a campaign report
    assert report_cell(text, "badnets")[2] == cells[2]


@pytest.mark.slow
def test_a_packed_campaign_writes_the_rows_of_the_unpacked_one(tmp_path):
    """`campaign --pack 3`: three NBA variants against one backdoored model train as one pack (FT
    beside them runs alone); every cell's row has the ASR/BA it has unpacked, and names its pack."""
    path = write_yaml(tmp_path, "pk", attacks=["badnets"], defenses=["nba", "ft"],
                      sample={"space": "nba", "n": 3, "seed": 0})
    cache = tmp_path / "cache"
    runs = {}
    for label, extra in (("alone", []), ("packed", ["--pack", "3"])):
        r = subprocess.run(campaign_cmd(path, tmp_path / label, cache, "--set", "nba.optim.epochs=1", *extra),
                           cwd=REPO, env=env(), capture_output=True, text=True, timeout=1200)
        assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
        runs[label] = {x["trial_id"]: x for x in read_table(tmp_path / label / "pk").to_pylist()}
    alone, packed = runs["alone"], runs["packed"]
    assert set(alone) == set(packed) and sum(x["defense"] == "nba" for x in alone.values()) == 3
    # the three NBA cells are one trial; FT's cells do not pack
    assert f"{len(alone)} cells in {len(alone) - 2} trials (packs of up to 3)" in r.stdout
    for cell, x in packed.items():
        assert x["status"] == alone[cell]["status"] == "ok"
        assert (x["asr"], x["ba"]) == (alone[cell]["asr"], alone[cell]["ba"]), cell
    members = [x for x in packed.values() if x["defense"] == "nba"]
    assert len({x["pack_id"] for x in members}) == 1 and sorted(x["member"] for x in members) == [0, 1, 2]


def test_cells_start_longest_first_by_the_earlier_rows_of_their_defense(tmp_path):
    from nba_scale.sweep.campaign import estimate_s, longest_first, mean_walls
    from nba_scale.sweep.store import write_row

    earlier = [("nba", 900.0, "ok", "npz:a"), ("nba", 1000.0, "ok", "npz:a"), ("ft", 150.0, "ok", "npz:a"),
               ("nad", 220.0, "ok", "npz:a"), ("ft", 5000.0, "failed", "npz:a"), ("fp", 9000.0, "ok", "npz:b")]
    for i, (defense, wall, status, spec) in enumerate(earlier):
        write_row(tmp_path / "old", {"trial_id": f"t{i}", "dataset": spec[4:], "dataset_spec": spec, "attack": "badnets",
                                     "defense": defense, "clean_fraction": 0.05, "status": status, "wall_s": wall})
    walls = mean_walls(tmp_path, "npz:a")  # failed rows and other datasets say nothing about these cells
    assert walls == {"nba": 950.0, "ft": 150.0, "nad": 220.0}

    cells = load_campaign("table2").cells([0], {"attack": ["blend", "sig"], "defense": ["ft", "nad", "nba"]})
    ordered = [c for c, _ in longest_first([(c, {}) for c in cells], walls)]
    assert [(c.attack, c.defense) for c in ordered] == [("blend", "nba"), ("sig", "nba"), ("blend", "nad"),
                                                         ("sig", "nad"), ("blend", "ft"), ("sig", "ft")]
    assert estimate_s(cells, walls, 2) == pytest.approx((950 + 220 + 150) * 2 / 2)
    one = load_campaign("table2").cells([0], {"attack": ["blend"], "defense": ["ft", "nad", "nba"]})
    assert estimate_s(one, walls, 2) == pytest.approx(950)  # NBA alone on one worker outlasts the other two
    fp = load_campaign("table2").cells([0], {"attack": ["blend"], "defense": ["ft", "fp"]})
    assert estimate_s(fp, walls, 2) is None  # never measured on this dataset
    assert [c.defense for c, _ in longest_first([(c, {}) for c in fp], walls)] == ["fp", "ft"]  # unknown first


def test_a_campaign_run_seed_by_seed_records_every_seed_and_command(tmp_path):
    """`--seeds 0`, then `--seeds 1 --resume`: the manifest keeps both seeds and both commands."""
    import argparse
    import json

    from nba_scale.sweep.campaign import Plan

    plan = Plan(load_campaign("table2"), tmp_path, [], {})
    tmp_path.mkdir(exist_ok=True)
    for seed in (0, 1):
        args = argparse.Namespace(dataset="synthetic", preset="smoke", seeds=[seed], set=["a=1"])
        plan.write_manifest(args, f"python -m nba_scale.campaign table2 --seeds {seed}")
    meta = json.loads((tmp_path / "campaign.json").read_text())
    assert meta["seeds"] == [0, 1] and len(meta["commands"]) == 2


def test_a_table_per_clean_fraction_names_the_defenders_images():
    from nba_scale.sweep.tables import grouped_tables

    rows = [{"attack": "sig", "defense": d, "clean_fraction": cf, "seed": s, "variant": "default", "status": "ok",
             "asr": 0.1, "ba": 0.7, "asr_before": 0.9, "ba_before": 0.75, "n_clean": n}
            for d in ("nad", "nba") for cf, n in ((0.05, 500), (0.25, 2500)) for s in (0, 1)]
    heads = [ln for ln in grouped_tables(rows, "attack", "defense", {}) if ln.startswith("###")]
    assert heads == ["### clean_fraction 0.05 (500 clean images)", "### clean_fraction 0.25 (2,500 clean images)"]
    for r in rows:  # rows from before n_clean was recorded keep the bare heading
        del r["n_clean"]
    assert [ln for ln in grouped_tables(rows, "attack", "defense", {}) if ln.startswith("###")][0] == \
        "### clean_fraction 0.05"


def test_der_rewards_asr_removed_charges_ba_lost_and_every_table_shows_it():
    from nba_scale.metrics import der
    from nba_scale.sweep.tables import grouped_tables

    assert der(0.9, 0.8, 0.1, 0.7) == pytest.approx((0.8 - 0.1 + 1) / 2)
    assert der(0.9, 0.8, 0.9, 0.8) == 0.5 and der(1.0, 0.8, 0.0, 0.8) == 1.0
    assert der(0.1, 0.8, 0.3, 0.9) == 0.5  # ASR up, BA up: neither counts (BackdoorBench's max(0, .))
    rows = [{"attack": "sig", "defense": d, "clean_fraction": 0.05, "seed": s, "variant": "default", "status": "ok",
             "asr": a, "ba": 0.7, "asr_before": 0.9, "ba_before": 0.75, "der": der(0.9, 0.75, a, 0.7)}
            for d, a in (("nad", 0.1), ("nba", 0.3)) for s in (0, 1)]
    lines = grouped_tables(rows, "attack", "defense", {})
    at = next(i for i, ln in enumerate(lines) if ln.startswith("DER %"))
    assert lines[at + 2] == "| attack | nad | nba |" and lines[at + 4] == "| sig | 87.5±0.0 | 77.5±0.0 |"
    for r in rows:  # rows written before DER was: no DER table, nothing made up
        del r["der"]
    assert not any(ln.startswith("DER") for ln in grouped_tables(rows, "attack", "defense", {}))
