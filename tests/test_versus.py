"""Paired comparisons beside the claims (sweep/versus.py): each variant against `default`, each
defense against its own teacher, `results --versus X Y`: pairing on the same backdoored model and
clean set, the figures, the refusals."""
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from nba_scale.config import ConfigError
from nba_scale.sweep import versus


def row(defense, attack, seed, asr, ba, variant="default", cf=0.25, teacher=None, before=0.99, model=None):
    art = {"backdoor": {"key": model or f"{attack}-{seed}"}}
    if teacher is not None:
        art["teacher"] = {"key": f"t-{attack}-{seed}-{cf}", "asr": teacher[0], "ba": teacher[1]}
    return {"defense": defense, "variant": variant, "attack": attack, "seed": seed, "clean_fraction": cf,
            "asr": asr, "ba": ba, "asr_before": before, "status": "ok", "n_clean": 2500 if cf == 0.25 else 500,
            "trial_id": f"{defense}-{variant}-{attack}-{seed}-{cf}", "artifacts": json.dumps(art)}


def grid(offset_asr=0.0, offset_ba=0.0, attacks=("sig", "blend"), seeds=(0, 1, 2)):
    """nba (with a teacher 0.03 ASR above it and 0.02 BA below) and nad, whose ASR is nba's plus
    `offset_asr` plus a seed-dependent wobble that averages to zero."""
    rows = []
    for a in attacks:
        for s in seeds:
            base = 0.05 + 0.01 * s
            rows.append(row("nba", a, s, base, 0.70, teacher=(base + 0.03, 0.68)))
            rows.append(row("nad", a, s, base + offset_asr + 0.002 * (s - 1), 0.70 + offset_ba))
    return rows


def test_pairs_differences_and_verdicts():
    rows = grid(offset_asr=0.10)
    got = versus.compare(rows, "nba", "nad")
    assert len(got) == 1 and got[0]["attacks"] == ["blend", "sig"]
    p = got[0]["paired"]
    assert p.asr[0] == pytest.approx(-0.10) and p.asr[1] < -0.10 + 1e-9 < p.asr[2] + 2e-3 and p.asr[2] < 0
    assert p.ba[0] == pytest.approx(0.0) and (p.attacks, p.cells, p.seeds) == (2, 6, 3)
    line = "\n".join(versus.table(rows, [("nba", "nad")]))
    assert "nba beats nad" in line and "-10.0 [" in line and "(2,500)" in line
    # The other way round the claim is contradicted: the verdict names the winner all the same.
    assert "| nba beats nad |" in "\n".join(versus.table(rows, [("nad", "nba")]))
    # Within the noise: inconclusive.
    assert "| inconclusive |" in "\n".join(versus.table(grid(offset_asr=0.0), [("nba", "nad")]))
    # Two seeds: nothing is tested.
    assert "untested (2 seeds" in "\n".join(versus.table(grid(0.1, seeds=(0, 1)), [("nba", "nad")]))


def test_only_rows_of_the_same_model_and_clean_set_pair():
    rows = grid(offset_asr=0.10)
    # nad's seed-2 rows repaired other models: they do not pair, two seeds remain.
    rows = [dict(r, artifacts=json.dumps({"backdoor": {"key": "other"}})) if r["defense"] == "nad" and r["seed"] == 2
            else r for r in rows]
    rows += [row("nad", "sig", 0, 0.5, 0.5, cf=0.05)]      # another clean set: its own group, unpaired
    got = versus.compare(rows, "nba", "nad")
    assert [g["clean_fraction"] for g in got] == [0.25] and got[0]["paired"].seeds == 2


def test_attacks_that_did_not_implant_are_left_out():
    rows = grid(offset_asr=0.10) + [row("nba", "cla", s, 0.0, 0.7, before=0.3 if s == 1 else 0.9) for s in range(3)] \
        + [row("nad", "cla", s, 0.5, 0.7, before=0.3 if s == 1 else 0.9) for s in range(3)]
    got = versus.compare(rows, "nba", "nad")[0]
    assert got["attacks"] == ["blend", "sig"] and got["left_out"] == ["cla"]
    assert got["paired"].asr[0] == pytest.approx(-0.10)


def test_teacher_rows_come_from_the_artifacts():
    rows = grid()
    got = versus.compare(rows, "nba", "nba@teacher")[0]
    assert got["paired"].asr[0] == pytest.approx(-0.03) and got["paired"].ba[0] == pytest.approx(0.02)
    assert got["y"] == (pytest.approx(0.09), pytest.approx(0.68))
    lines = "\n".join(versus.teacher_lines(rows))
    assert "its own teacher" in lines and "| nba | nba@teacher |" in lines and "nad@teacher" not in lines
    with pytest.raises(ConfigError, match="only 'teacher'"):
        versus.select(rows, "nba@student")


def test_variants_against_default_and_ambiguous_labels():
    rows = grid()
    rows += [dict(r, variant="l1_0.05", asr=r["asr"] - 0.04, trial_id=r["trial_id"] + "-v")
             for r in rows if r["defense"] == "nba"]
    lines = "\n".join(versus.variant_lines(rows))
    assert "| nba/l1_0.05 | nba/default |" in lines and "-4.0 [" in lines and "nad/" not in lines
    with pytest.raises(ConfigError, match="name a variant"):
        versus.select(rows, "nba")
    # The variants share one teacher: `nba@teacher` is one row per cell, not a clash.
    assert len(versus.select(rows, "nba@teacher")) == 6
    assert "| nba/l1_0.05 | nba/l1_0.05@teacher |" in "\n".join(versus.teacher_lines(rows))
    assert versus.variant_lines(grid()) == []          # one variant: no section


def test_results_cli_versus(tmp_path, capsys):
    from nba_scale.sweep import results

    folder = tmp_path / "r" / "camp"
    folder.mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(grid(offset_asr=0.10)), folder / "rows-1.parquet")
    assert results.main([str(tmp_path / "r"), "--versus", "nba", "nad"]) == 0
    assert "nba beats nad" in capsys.readouterr().out
    assert results.main([str(tmp_path / "r"), "--versus", "nba", "fp"]) == 2
    err = capsys.readouterr().err
    assert "no cell" in err and "defenses here: nad, nba" in err and len(err.strip().splitlines()) == 1


def test_a_table2_report_with_two_clean_sets_has_curves_and_the_teacher_section(tmp_path):
    """Rows straight to Parquet (no training): a table2 campaign run at two clean sets draws the
    clean-set curves and compares each teacher-using defense with its teacher, paired."""
    from nba_scale.sweep.report import write_report
    from nba_scale.sweep.store import write_row

    root = tmp_path / "results" / "table2"
    for cf in (0.05, 0.25):
        for r in grid(offset_asr=0.05, offset_ba=-0.01):
            r = dict(r, clean_fraction=cf, n_clean=int(cf * 10000), trial_id=f"{r['trial_id']}-{cf}",
                     dataset="synthetic", ba_before=0.75, wall_s=1.0)
            if r["defense"] == "nad":  # NAD has the same teacher as NBA in its cell
                r["artifacts"] = next(x["artifacts"] for x in grid() if x["defense"] == "nba"
                                      and (x["attack"], x["seed"]) == (r["attack"], r["seed"]))
            write_row(root, r)
    (root / "campaign.json").write_text(json.dumps({
        # Run from a worktree that is gone since: the package's campaign of that name gives the
        # report its orders and claims.
        "campaign": "table2", "file": str(tmp_path / "gone" / "table2.yaml"), "title": "t", "paper": "Table 2", "dataset": "synthetic",
        "preset": "smoke", "seeds": [0, 1, 2], "set": [], "commands": ["python -m x"]}))
    text = write_report(tmp_path / "results", tmp_path / "out").read_text()
    assert (tmp_path / "out" / "table2_curves.png").stat().st_size > 10_000
    teacher = text[text.index("#### Each defense against its own teacher"):]
    assert "| nad | nad@teacher | 0.05 (500) |" in teacher and "| nba | nba@teacher | 0.25 (2,500) |" in teacher
    # NBA is 0.03 under its teacher in every cell; NAD 0.02 above it (0.05 over NBA).
    assert "| -3.0 [-3.0, -3.0] |" in teacher and "| +2.0 [" in teacher
    assert "Each variant against" not in text
    assert "#### The paper's claims at this budget, clean fraction 0.25" in text


def test_a_campaign_prefix_picks_one_campaigns_rows():
    rows = [dict(r, sweep="table2") for r in grid(offset_asr=0.10)]
    # Another campaign ran nba's default on the same models: `nba` is ambiguous, `table2:nba` is not.
    rows += [dict(r, sweep="fidelity", asr=r["asr"] + 0.01, trial_id=r["trial_id"] + "-f")
             for r in rows if r["defense"] == "nba"]
    with pytest.raises(ConfigError, match=r"its campaign \(fidelity:nba\)"):
        versus.select(rows, "nba")
    got = versus.compare(rows, "fidelity:nba", "table2:nba")[0]["paired"]
    assert got.asr[0] == pytest.approx(0.01) and got.cells == 6
    assert versus.compare(rows, "fidelity:nba", "nad")[0]["paired"].asr[0] == pytest.approx(-0.09)
