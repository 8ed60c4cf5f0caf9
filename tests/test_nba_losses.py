import math

import pytest
import torch
import torch.nn.functional as F

from nba_scale.config import ConfigError
from nba_scale.defenses import get_defense
from nba_scale.defenses import nba as nba_mod
from nba_scale.defenses.base import DefenseContext
from nba_scale.defenses.nba_losses import behaviour_loss, gram, layer_changes, lnb, pnb, rnb
from nba_scale.models import WideResNet


def feats(seed, b=2):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(b, c, s, s, generator=g) for c, s in ((16, 32), (32, 16), (64, 8))]


def test_gram_and_rnb_match_a_hand_computed_example():
    f = torch.tensor([[[[1.0, 2.0]], [[0.0, 1.0]]]])  # (B=1, C=2, H=1, W=2)
    assert torch.equal(gram(f), torch.tensor([[[5.0, 2.0], [2.0, 1.0]]]))
    g = torch.tensor([[[[1.0, 0.0]], [[0.0, 1.0]]]])  # Gram = identity
    # sum of squared differences (5-1)^2 + 2*(2-0)^2 + (1-1)^2 = 24; / (4 * C^2 * (HW)^2) = 4*4*4 = 64
    assert rnb([f], [g]).item() == pytest.approx(24 / 64)
    assert rnb([f], [f]).item() == 0


def test_rnb_and_lnb_vanish_only_for_identical_networks():
    a, b = feats(0), feats(1)
    assert rnb(a, a).item() == 0 and lnb(a, a).item() == 0
    assert rnb(a, b).item() > 0 and lnb(a, b).item() > 0
    assert rnb(a, b, "feature").item() > 0 and lnb(a, a, "feature").item() == 0


def test_layer_change_is_well_defined_across_channel_counts_and_scale_free():
    a = feats(0)
    m = layer_changes(a)
    assert len(m) == 2 and all(t.shape == (2,) and (t >= 0).all() and (t <= 4).all() for t in m)
    scaled = layer_changes([3 * f for f in a])  # activation scale does not change M
    assert all(torch.allclose(x, y, atol=1e-5) for x, y in zip(m, scaled))
    assert len(layer_changes(a, "feature")) == 2


def test_pnb_is_hintons_soft_cross_entropy():
    u, z, T = torch.randn(4, 10), torch.randn(4, 10), 5.0
    expected = -(F.softmax(u / T, 1) * F.log_softmax(z / T, 1)).sum(1).mean()
    assert pnb(u, z, T).item() == pytest.approx(expected.item(), rel=1e-6)
    assert pnb(u, z, T, t2=True).item() == pytest.approx(T * T * expected.item(), rel=1e-6)
    # Its minimum over z is at z = u (up to a constant shift), where it equals the teacher's entropy.
    p = F.softmax(u / T, 1)
    assert pnb(u, u, T).item() == pytest.approx(-(p * p.log()).sum(1).mean().item(), rel=1e-5)


def test_each_ablation_switch_removes_its_term():
    ft, fs = feats(0), feats(1)
    lt, ls = torch.randn(2, 10), torch.randn(2, 10, requires_grad=True)
    kw = dict(weights={"rnb": 2.0, "lnb": 3.0, "pnb": 0.5}, T=4.0)
    full, parts = behaviour_loss(ft, lt, fs, ls, **kw)
    assert set(parts) == {"rnb", "lnb", "pnb"}
    assert full.item() == pytest.approx(2 * parts["rnb"].item() + 3 * parts["lnb"].item() + 0.5 * parts["pnb"].item(), rel=1e-5)
    for keep in (("rnb",), ("lnb",), ("pnb",), ("rnb", "pnb")):
        total, p = behaviour_loss(ft, lt, fs, ls, terms=keep, **kw)
        assert set(p) == set(keep)
        assert total.item() == pytest.approx(sum({"rnb": 2, "lnb": 3, "pnb": 0.5}[k] * p[k].item() for k in keep), rel=1e-5)
    fs = [f.requires_grad_(True) for f in fs]
    no_pnb, _ = behaviour_loss(ft, lt, fs, ls, terms=("rnb", "lnb"), **kw)
    assert torch.autograd.grad(no_pnb, ls, allow_unused=True)[0] is None  # logits untouched
    only_pnb, _ = behaviour_loss(ft, lt, fs, ls, terms=("pnb",), **kw)
    assert all(g is None for g in torch.autograd.grad(only_pnb, fs, allow_unused=True))  # features untouched


def test_nba_pgd_precision_is_bf16_or_unset():
    assert get_defense("nba")({"pgd_precision": "bf16"}).cfg.pgd_precision == "bf16"
    with pytest.raises(ConfigError, match=r"nba.pgd_precision='fp16' is not one of \['bf16'\]"):
        get_defense("nba")({"pgd_precision": "fp16"})


def _nba_loss(monkeypatch, **params):
    """(total loss, PGD calls, CE, the total computed by hand from the loss terms) on one batch."""
    import copy

    calls = {"pgd": 0}
    real = nba_mod.pgd_untargeted

    def counting(*a, **k):
        calls["pgd"] += 1
        return real(*a, **k)

    monkeypatch.setattr(nba_mod, "pgd_untargeted", counting)
    torch.manual_seed(0)
    teacher, student = WideResNet(10, 1).eval(), WideResNet(10, 1)
    params = {"pgd_random_start": False, **params}  # deterministic PGD: the hand computation can repeat it
    defense = get_defense("nba")(params)
    c = defense.cfg
    ctx = DefenseContext(torch.zeros(0), torch.zeros(0), 10, True, None)
    x, y = torch.rand(4, 3, 32, 32), torch.randint(0, 10, (4,))
    state = copy.deepcopy(student.state_dict())  # the loss's forward passes move BatchNorm's statistics
    total, parts = defense.distill_loss(teacher, ctx)(student, x, y)
    total = total.item()
    # The terms the curves record add up to the loss, each weighted as it enters it.
    assert sum(v.item() for k, v in parts.items() if k in ("ce", "ldl", "udl")) == pytest.approx(total, rel=1e-5)
    for name in ("ldl", "udl"):
        if name in parts:
            assert sum(parts[f"{name}_{p}"].item() for p in c.terms) == pytest.approx(parts[name].item(), rel=1e-5)
    pgd_calls = calls["pgd"]
    student.load_state_dict(state)

    with torch.no_grad():
        lt, ft = teacher(x, features=True)
    weights = {"rnb": c.lambda1, "lnb": c.lambda2, "pnb": c.lambda3}

    def terms(fs, ls):
        return (weights["rnb"] * rnb(ft, fs) + weights["lnb"] * lnb(ft, fs) + weights["pnb"] * pnb(lt, ls, c.T)).item()

    ls, fs = student(x, features=True)
    ce = F.cross_entropy(ls, y).item()
    ldl = terms(fs, ls) if c.losses in ("both", "ldl") else 0.0
    udl = 0.0
    if c.losses in ("both", "udl"):
        xu = real(student, x, y, c.pgd_eps, c.pgd_steps, c.step_size, random_start=False)
        lu, fu = student(xu, features=True)
        udl = terms(fu, lu)
    return total, pgd_calls, ce, ce + c.alpha * (ldl + c.beta * udl)


@pytest.mark.parametrize("params", [{}, {"losses": "ldl"}, {"losses": "udl"}, {"alpha": 0.0},
                                    {"alpha": 1.7, "beta": 0.3, "lambda1": 0.05, "lambda3": 4.0}])
def test_total_loss_is_ce_plus_alpha_times_ldl_plus_beta_udl(monkeypatch, params):
    total, pgd_calls, ce, by_hand = _nba_loss(monkeypatch, **params)
    assert total == pytest.approx(by_hand, rel=1e-5)
    assert pgd_calls == (0 if params.get("losses") == "ldl" else 1)  # LDL alone never crafts a pseudo sample
    if params.get("alpha") == 0.0:
        assert total == pytest.approx(ce, rel=1e-5)
    else:
        assert total > ce * 1.001  # the distillation terms are not negligible on unrelated networks


def test_nan_hyper_parameter_is_accepted_for_the_trial_to_fail():
    assert math.isnan(get_defense("nba")({"lambda1": float("nan")}).cfg.lambda1)
