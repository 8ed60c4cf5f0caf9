"""Every attack implants a backdoor on synthetic data (tests/conftest.py:small_config).

"Chance" is what a clean model (no poison, same recipe) scores on the same triggered test set;
each attack must beat it by a wide margin and keep BA. Thresholds sit well under what seed 1
measured here (docs/ATTACKS.md lists the runs): blend 99.6 %, trojan 100 %, sig 64.6 %,
cla 80.4 %, refool 28.3 %, with chance <= 2 % for all.

Clean-label attacks are weak on this easy synthetic task (every class is learnt perfectly from
its own object, so the network needs no trigger to fit the poisoned images): CLA runs at the
strong end of its paper's settings (all target-class images, eps 32/255: at the defaults, half
the class and 16/255, ASR stayed 0.0 %) and Refool with one strong reflection (the image its
selection round would keep; with the defaults ASR was 0.0 %, with 10 reflections 1.3 %, with 4
at weight 0.3-0.5 11.5 %).
"""
import pytest

from conftest import small_config
from nba_scale.metrics import score
from nba_scale.trial import poison_only, run_trial

pytestmark = pytest.mark.slow

OVERRIDES = {
    "blend": ({}, 0.8),
    "trojan": ({}, 0.8),
    "sig": ({}, 0.3),
    "cla": ({"cla.rate": 1.0, "cla.eps": 0.1255}, 0.4),  # 32/255
    "refool": ({"refool.rate": 1.0, "refool.n_reflections": 1, "refool.alpha_min": 0.4, "refool.alpha_max": 0.5}, 0.12),
}


@pytest.mark.parametrize("name", sorted(OVERRIDES))
def test_attack_implants_a_backdoor_well_above_a_clean_models_rate(name, cache_dir):
    params, min_asr = OVERRIDES[name]
    cfg = small_config(cache_dir, attack=name, defense="none", **params)
    r = run_trial(cfg)
    assert r["status"] == "ok", r["error"]
    _, ds, attack, poisoned, ctx = poison_only(cfg)
    chance = score(ctx.clean_model(), ds.x_test, ds.y_test, poisoned, "cpu", attack.params.target)["asr"]
    assert chance <= 0.05
    assert r["asr_before"] >= min_asr and r["asr_before"] >= chance + min_asr / 2, (r["asr_before"], chance)
    assert r["ba_before"] >= 0.85
