"""The report checks the paper's claims point by point: on the mean over seeds and in each seed,
over the attacks that implanted only, never on a half-finished seed. Rows are written straight
(no training), so every verdict below follows from numbers chosen to make it."""
import json

import pytest

from nba_scale.config import ConfigError
from nba_scale.sweep.claims import check_spec, evaluate
from nba_scale.sweep.grid import load_campaign

SPEC = {"subject": "nba", "removes_below": 0.10, "implanted_above": 0.5, "weaker": ["fp", "mcr"]}
# seed -> defense -> (ASR, BA) on every implanted attack. NBA's ASR is lowest in seeds 0 and 1
# and on the mean, not in seed 2; NAD removes too but keeps less BA; FP never removes.
SCORES = {
    0: {"nba": (0.02, 0.66), "nad": (0.04, 0.61), "fp": (0.70, 0.70), "mcr": (0.80, 0.68)},
    1: {"nba": (0.03, 0.65), "nad": (0.05, 0.62), "fp": (0.60, 0.69), "mcr": (0.75, 0.68)},
    2: {"nba": (0.06, 0.64), "nad": (0.04, 0.60), "fp": (0.65, 0.70), "mcr": (0.02, 0.55)},
}


def rows_for(scores, attacks=("badnets", "sig"), refool_nba_asr=0.9):
    rows = []
    for seed, per in scores.items():
        for d, (asr, ba) in per.items():
            for a in attacks:
                rows.append({"attack": a, "defense": d, "seed": seed, "clean_fraction": 0.05, "variant": "default",
                             "status": "ok", "asr": asr, "ba": ba, "asr_before": 0.99, "ba_before": 0.75,
                             "wall_s": 5.0, "time_defense_s": 4.0, "trial_id": f"{a}-{d}-cf0.05-s{seed}"})
            # Refool did not implant (10 % before): left out, else NBA's 90 % here would sink it.
            rows.append({"attack": "refool", "defense": d, "seed": seed, "clean_fraction": 0.05, "variant": "default",
                         "status": "ok", "asr": refool_nba_asr if d == "nba" else 0.05, "ba": 0.7,
                         "asr_before": 0.10, "ba_before": 0.75, "wall_s": 5.0, "time_defense_s": 4.0,
                         "trial_id": f"refool-{d}-cf0.05-s{seed}"})
    return rows


def by_claim(got):
    return {c["claim"].split(" (")[0]: c for c in got["claims"]}


def test_claims_hold_on_the_mean_and_say_in_how_many_seeds():
    got = evaluate(rows_for(SCORES), SPEC)
    assert got["attacks"] == ["badnets", "sig"] and got["left_out"] == {"refool": {s: pytest.approx(0.10) for s in SCORES}}
    assert got["seeds"] == [0, 1, 2]
    c = by_claim(got)
    lowest = c["nba has the lowest mean ASR of the 4 defenses"]
    assert lowest["holds"] and lowest["held"] == 2 and lowest["verdict"] == "on the mean only (2 of 3 seeds)"
    # mcr's seed-2 dip (2 %) makes it a remover there with BA 55 %: nba still keeps more.
    ba = c["nba has the highest BA of the defenses that remove the backdoor"]
    assert ba["holds"] and ba["held"] == 3 and ba["verdict"] == "reproduces (every seed)"
    assert ba["here"].startswith("removers by BA: nba 65.0±1.0, nad 61.0±1.0")
    fp, mcr = c["fp is weaker than nba"], c["mcr is weaker than nba"]
    assert fp["verdict"] == "reproduces (every seed)"
    assert mcr["holds"] and mcr["held"] == 2


def test_a_claim_that_fails_says_so_and_the_unimplanted_attack_would_have_changed_it():
    worse = {s: {**per, "nba": (0.09, 0.66)} for s, per in SCORES.items()}
    c = by_claim(evaluate(rows_for(worse), SPEC))
    assert c["nba has the lowest mean ASR of the 4 defenses"]["verdict"] == "does not reproduce (0 of 3 seeds hold it)"
    # Counting refool (where nba sits at 90 %) would pull nba's mean ASR over the 10 % cut:
    every = evaluate(rows_for(SCORES), {**SPEC, "implanted_above": 0.0})
    assert not by_claim(every)["nba has the highest BA of the defenses that remove the backdoor"]["holds"]


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


def test_a_half_finished_seed_is_not_compared():
    rows = [r for r in rows_for(SCORES) if not (r["seed"] == 2 and r["defense"] == "nba" and r["attack"] == "sig")]
    got = evaluate(rows, SPEC)
    assert got["seeds"] == [0, 1]
    assert by_claim(got)["nba has the lowest mean ASR of the 4 defenses"]["verdict"] == "reproduces (every seed)"


@pytest.mark.parametrize("spec, needle", [({"subject": "nbaa"}, "'nbaa'"), ({"weaker": ["fp", "xyz"]}, "'xyz'"),
                                          ({"removes_below": 10}, "claims.removes_below"), ({"cutoff": 1}, "mapping")])
def test_a_malformed_claims_spec_fails_in_one_line(spec, needle):
    with pytest.raises(ConfigError) as e:
        check_spec(spec, ["ft", "fp", "mcr", "nad", "argd", "nba"], "t.yaml")
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
    line = next(ln for ln in text.splitlines() if ln.startswith("| nba has the lowest mean ASR"))
    assert "on the mean only (2 of 3 seeds)" in line
    assert "Left out (the backdoor did not implant" in text and "refool (seed 0 10.0 %, seed 1 10.0 %" in text
