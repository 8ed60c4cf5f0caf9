"""The report checks the paper's claims as paired comparisons over (attack, seed) cells with a
95 % interval: holds, inconclusive or contradicted; over the attacks that implanted only; BA
counted ("beats" is a lower ASR at a bounded BA loss). Rows are written straight (no training),
so every verdict below follows from numbers chosen to make it."""
import json

import pytest

from nba_scale.config import ConfigError
from nba_scale.sweep.claims import check_spec, evaluate
from nba_scale.sweep.grid import load_campaign

DEFENSES = ["ft", "fp", "mcr", "nad", "argd", "nba"]
SPEC = check_spec({"subject": "nba", "weaker": ["fp", "mcr"], "beats": [["argd", "nad"]], "reversed_at": {0.01: "argd"}},
                  DEFENSES, "t.yaml")
# seed -> defense -> (ASR, BA) on every implanted attack, before a per-seed level is added (below).
# fp and mcr keep the backdoor; nad removes more of it than nba but loses 30 points of BA; argd
# removes 3 points more than nba at the same BA; ft is as good as nba in one seed and worse or
# better in the others.
SCORES = {
    0: {"nba": (0.05, 0.66), "nad": (0.01, 0.36), "fp": (0.70, 0.67), "mcr": (0.80, 0.66), "argd": (0.02, 0.66),
        "ft": (0.05, 0.66)},
    1: {"nba": (0.06, 0.65), "nad": (0.02, 0.35), "fp": (0.60, 0.66), "mcr": (0.75, 0.65), "argd": (0.03, 0.65),
        "ft": (0.16, 0.65)},
    2: {"nba": (0.07, 0.64), "nad": (0.03, 0.34), "fp": (0.65, 0.65), "mcr": (0.85, 0.64), "argd": (0.04, 0.64),
        "ft": (0.01, 0.64)},
}


def rows_for(scores, attacks=("badnets", "sig"), fraction=0.05):
    rows = []
    for seed, per in scores.items():
        for d, (asr, ba) in per.items():
            for a in attacks:
                rows.append({"attack": a, "defense": d, "seed": seed, "clean_fraction": fraction, "variant": "default",
                             "status": "ok", "asr": asr, "ba": ba, "asr_before": 0.99, "ba_before": 0.75,
                             "wall_s": 5.0, "time_defense_s": 4.0, "trial_id": f"{a}-{d}-cf{fraction}-s{seed}"})
            # Refool did not implant (10 % before): left out, else nba's 90 % there would sink it.
            rows.append({"attack": "refool", "defense": d, "seed": seed, "clean_fraction": fraction, "variant": "default",
                         "status": "ok", "asr": 0.9 if d == "nba" else 0.05, "ba": 0.7,
                         "asr_before": 0.10, "ba_before": 0.75, "wall_s": 5.0, "time_defense_s": 4.0,
                         "trial_id": f"refool-{d}-cf{fraction}-s{seed}"})
    return rows


def by_claim(got):
    return {c["claim"].split(" (")[0]: c for c in got["claims"]}


def test_each_claim_is_a_paired_verdict_that_counts_ba():
    got = evaluate(rows_for(SCORES), SPEC)
    assert got["attacks"] == ["badnets", "sig"] and got["left_out"] == {"refool": {s: pytest.approx(0.10) for s in SCORES}}
    c = by_claim(got)
    best = c["nba beats every other defense"]
    parts = {lab: v for lab, _, v in best["rows"]}
    # nad's lower ASR is bought with 30 points of BA: it beats nothing (the old claim counted it).
    assert parts["vs nad"] == "holds" and parts["vs fp"] == "holds" and parts["vs mcr"] == "holds"
    assert parts["vs argd"] == "contradicted"  # 3 points lower ASR in every cell at the same BA
    assert parts["vs ft"] == "inconclusive"  # ft is better at seed 2, worse at seed 1
    assert best["verdict"] == "contradicted (by argd)"
    argd = next(p for lab, p, _ in best["rows"] if lab == "vs argd")
    assert argd.asr[0] == pytest.approx(0.03) and argd.cells == 6 and argd.seeds == 3
    assert c["fp is weaker than nba"]["verdict"] == "holds" and c["argd beats nad"]["verdict"] == "holds"
    # The BA claim: fp keeps 1 point more BA but 60+ points more ASR (far past asr_margin): not "as
    # well". nba keeps 30 points more BA than nad at 4 points more ASR (past the 2 allowed): a
    # trade-off, not a win; argd's BA equals nba's.
    ba = {lab: v for lab, _, v in c["nba has the highest BA of the defenses that remove the backdoor as well"]["rows"]}
    assert ba["vs fp"] == "holds" and ba["vs nad"] == "inconclusive" and ba["vs argd"] == "inconclusive"
    loose = by_claim(evaluate(rows_for(SCORES), {**SPEC, "asr_margin": 0.05}))
    assert {lab: v for lab, _, v in loose[next(k for k in loose if k.startswith("nba has the highest BA"))]["rows"]
            }["vs nad"] == "holds"


def test_the_comparison_is_paired_over_seeds():
    """Seeds move every defense together by tens of points (each seed its own backdoored model);
    nba is 2 points under argd in every cell. Paired, that is a clear difference; the spread of
    the means alone would hide it."""
    level = {0: 0.0, 1: 0.3, 2: 0.6}
    scores = {s: {"nba": (0.10 + level[s], 0.66), "argd": (0.12 + level[s], 0.66)} for s in level}
    spec = check_spec({"subject": "nba"}, ["argd", "nba"], "t.yaml")
    c = by_claim(evaluate(rows_for(scores), spec))["nba beats every other defense"]
    (_, p, v), = c["rows"]
    assert v == "holds" and p.asr[1] == pytest.approx(-0.02) and p.asr[2] == pytest.approx(-0.02)
    # Unpaired, the two means' t intervals overlap almost entirely:
    means = evaluate(rows_for(scores), spec)["means"]
    assert means["nba"][1] > 0.5 and means["argd"][1] > 0.5


def test_where_the_paper_reverses_its_claim_only_the_reverse_is_checked():
    got = evaluate(rows_for(SCORES, fraction=0.01), SPEC)
    c = by_claim(got)
    assert got["reversed"] == "argd" and not got["per_attack"]
    assert "nba beats every other defense" not in c and "fp is weaker than nba" not in c
    assert c["argd beats nba"]["verdict"] == "holds" and "argd beats nad" in c


def test_under_three_seeds_nothing_is_tested():
    got = evaluate(rows_for({s: SCORES[s] for s in (0, 1)}), SPEC)
    c = by_claim(got)
    assert c["nba beats every other defense"]["verdict"] == "untested (2 seeds; 3 needed)"
    assert c["fp is weaker than nba"]["verdict"] == "untested (2 seeds; 3 needed)"


def test_an_attack_that_did_not_implant_in_one_seed_is_left_out():
    """BadNets' corner trigger was not learnt at seed 0 on one machine (ASR 11 %, 99-100 % at seeds
    1 and 2): its seed-0 cells would count a backdoor that was never there."""
    rows = rows_for(SCORES)
    for r in rows:
        if r["attack"] == "badnets" and r["seed"] == 0:
            r["asr_before"] = 0.11
    got = evaluate(rows, SPEC)
    assert got["attacks"] == ["sig"] and set(got["left_out"]) == {"badnets", "refool"}
    assert got["left_out"]["badnets"][0] == pytest.approx(0.11) and got["left_out"]["badnets"][1] == pytest.approx(0.99)
    assert set(got["per_attack"]) == {"sig"}


def test_a_missing_cell_drops_that_pair_only():
    rows = [r for r in rows_for(SCORES) if not (r["seed"] == 2 and r["defense"] == "nba" and r["attack"] == "sig")]
    got = evaluate(rows, SPEC)
    assert got["seeds"] == [0, 1]  # the means: only seeds where every defense has every attack
    argd = next(p for lab, p, _ in by_claim(got)["nba beats every other defense"]["rows"] if lab == "vs argd")
    assert argd.cells == 5 and argd.seeds == 2  # sig has two seeds left: under three, untested
    assert by_claim(got)["argd beats nad"]["rows"][0][1].cells == 6


@pytest.mark.parametrize("spec, needle", [({"subject": "nbaa"}, "'nbaa'"), ({"weaker": ["fp", "xyz"]}, "'xyz'"),
                                          ({"removes_below": 0.1}, "delete it"), ({"cutoff": 1}, "mapping"),
                                          ({"ba_margin": 5}, "claims.ba_margin"), ({"beats": [["argd"]]}, "pairs"),
                                          ({"reversed_at": {"small": "argd"}}, "reversed_at")])
def test_a_malformed_claims_spec_fails_in_one_line(spec, needle):
    with pytest.raises(ConfigError) as e:
        check_spec(spec, DEFENSES, "t.yaml")
    assert needle in str(e.value) and "\n" not in str(e.value)


def test_the_table2_report_prints_the_claims_table(tmp_path):
    from nba_scale.sweep.report import write_report
    from nba_scale.sweep.store import write_row

    assert load_campaign("table2").claims["weaker"] == ["fp", "mcr"]
    root = tmp_path / "results" / "table2"
    for r in rows_for(SCORES):
        write_row(root, {**r, "dataset": "synthetic"})
    (root / "campaign.json").write_text(json.dumps({
        "campaign": "table2", "file": "table2", "title": "t", "paper": "Table 2", "dataset": "synthetic",
        "preset": "smoke", "seeds": [2], "set": [], "commands": []}))  # as after `--seeds 2 --resume`
    text = write_report(tmp_path / "results", tmp_path / "out").read_text()
    assert "seeds [0, 1, 2]" in text  # the rows' seeds, not the last invocation's
    assert "#### The paper's claims at this budget" in text
    line = next(ln for ln in text.splitlines() if ln.startswith("| nba beats every other defense"))
    assert "contradicted (by argd)" in line
    line = next(ln for ln in text.splitlines() if "vs argd | ASR" in ln)
    assert "ASR +3.0 [+3.0, +3.0]" in line and line.endswith("| contradicted |")
    assert "Left out (the backdoor did not implant" in text and "refool (seed 0 10.0 %, seed 1 10.0 %" in text
