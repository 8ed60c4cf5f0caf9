"""`nba_scale.diagnose`: the gradient budget of NBA's loss at the defense's start, and PGD -> target."""
import math

import pytest
from conftest import small_config

from nba_scale.diagnose import diagnose, format_table

PARTS = ["ce"] + [f"{p}_{t}" for p in ("ldl", "udl") for t in ("rnb", "lnb", "pnb")]


@pytest.mark.slow
def test_the_gradient_budget_adds_up_and_follows_the_weights(cache_dir):
    base = diagnose(small_config(cache_dir), batches=1, pgd_images=100)
    assert all(base[f"{p}_grad"] > 0 for p in PARTS)
    # the norm of a sum is at most the sum of the norms, and the clip is the optimiser's
    assert 0 < base["total_grad"] <= sum(base[f"{p}_grad"] for p in PARTS) * (1 + 1e-5)
    assert math.isclose(base["clip_factor"], min(1.0, 5.0 / base["total_grad"]), rel_tol=1e-6)
    assert math.isclose(base["ce_grad_after_clip"], base["ce_grad"] * base["clip_factor"], rel_tol=1e-9)
    assert base["asr_before"] > 0.8 and base["teacher_asr"] < base["asr_before"]
    assert 0 <= base["pgd_to_target_backdoored"] <= 1 and base["pgd_images"] == 100
    # λ1 = 0 removes RNB's gradient from both losses and nothing else; λ1 = 4 doubles it
    no_rnb = diagnose(small_config(cache_dir, **{"nba.lambda1": 0.0}), batches=1, pgd_images=100)
    assert no_rnb["ldl_rnb_grad"] == 0 and no_rnb["udl_rnb_grad"] == 0
    assert math.isclose(no_rnb["ce_grad"], base["ce_grad"], rel_tol=1e-5)
    assert math.isclose(no_rnb["ldl_lnb_grad"], base["ldl_lnb_grad"], rel_tol=1e-5)
    double = diagnose(small_config(cache_dir, **{"nba.lambda1": 4.0}), batches=1, pgd_images=100)
    assert math.isclose(double["ldl_rnb_grad"], 2 * base["ldl_rnb_grad"], rel_tol=1e-4)
    table = format_table([base, no_rnb])
    assert "clip factor" in table and "PGD -> target, teacher" in table
