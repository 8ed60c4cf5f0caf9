"""The five baselines beside NBA: losses on hand-made features, then each defense against the
synthetic BadNets model the end-to-end tests build (shared cache: trained once per session)."""
import pytest
import torch

from conftest import small_config
from nba_scale.config import ConfigError
from nba_scale.defenses import DEFENSES, get_defense
from nba_scale.defenses.argd import argd_terms
from nba_scale.defenses.distill import attention_map
from nba_scale.defenses.nad import nad_loss
from nba_scale.trial import run_trial


def feats(seed, b=4):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(b, c, s, s, generator=g) for c, s in ((16, 32), (32, 16), (64, 8))]


def test_every_registry_name_is_implemented():
    assert set(DEFENSES.names()) == {"none", "ft", "fp", "mcr", "nad", "argd", "nba", "anp", "ibau", "sau"}
    with pytest.raises(ConfigError, match="unknown defense 'nda'"):
        get_defense("nda")


def test_attention_map_is_the_normalised_channel_mean_of_powered_activations():
    f = torch.zeros(2, 3, 4, 4)
    f[0, :, 0, 0] = 2.0  # one hot spot
    f[1] = -1.0  # uniform, negative: |F|^p
    a = attention_map(f, p=2)
    assert a.shape == (2, 16) and torch.allclose(a.norm(dim=1), torch.ones(2))
    assert a[0, 0] == 1 and a[0, 1:].abs().sum() == 0
    assert torch.allclose(a[1], torch.full((16,), 0.25))
    # Scale-free: NAD compares where a layer attends, not how strongly.
    assert torch.allclose(attention_map(5 * feats(0)[1]), attention_map(feats(0)[1]), atol=1e-6)


def test_nad_and_argd_terms_vanish_for_identical_networks_only():
    t, s = feats(0), feats(1)
    assert nad_loss(t, t, 2.0, (500, 1000, 1000)) == 0 and nad_loss(t, s, 2.0, (500, 1000, 1000)) > 0
    same, diff = argd_terms(t, t, 2.0), argd_terms(t, s, 2.0)
    for key in ("vertex", "edge", "embed"):
        assert torch.all(same[key] == 0), key
        assert torch.all(diff[key] > 0), key
    assert diff["vertex"].shape == (3,)
    # Scale-free like NAD: a student whose activations are 3x the teacher's matches it.
    assert all(v.max() < 1e-9 for v in argd_terms(t, [3 * f for f in t], 2.0).values())


# Smallest ASR drop each defense must reach on the test model (ASR before: 100 %), and the
# settings it is tested at. A CPU with another float path trains another test model, so these are
# chosen on four of them (seeds 1-4, 2026-11-27, AMD EPYC; ASR after, %), not on seed 1 alone:
# seed 1's choice (defaults, MCR at t = 0.6) held on the Intel CI and broke on an AMD one.
#   at their defaults: NAD 0, 0, 0, 0; ARGD 0, 0, 0, 0; FT 24.7, 67.1, 7.2, 0.2;
#                      FP 76.6, 100, 26.5, 38.4; MCR (t = 0.6) 97.4, 43.9, 82.9, 39.7
#   as tested here:    FT 0, 0, 0, 0; FP 0, 19.1, 0, 0; MCR (t = 0.9) 13.7, 0, 12.9, 1.6
# FT and FP keep lr 0.1 for 5 epochs, as the test teacher does (conftest.small_config: the NAD
# schedule's 2 epochs are 8 steps on this 200-image clean set); FP also prunes up to a 20 % drop.
# MCR's backdoor fades only near the fine-tuned end of its curve on this model (t = 0.8: 45.7,
# 0.5, 28.7, 4.1). The weak defaults are the paper's finding too (FIDELITY.md), not a bug.
# The repair defenses beyond the paper (issue 37), on seed 1's model (2026-12-06, Intel Xeon; ASR
# after, BA after, %): I-BAU at its defaults 7.5 / 96.8; SAU at 20 epochs and Adam lr 1e-3 3.5 /
# 100 (at its lr 1e-4: 81.2 / 99.6; its 100 epochs are 5x the time: this clean set is one batch,
# so 20 epochs are 20 steps); ANP after 200 mask iterations (theirs: 2,000) with the threshold chosen on the
# clean set (max_acc_drop 0.05): 0 / 99.0 (threshold 0.65; 0.1: 0 / 92.0). At its fixed 0.2,
# 500 iterations left the backdoor whole (100 / 100): the threshold is what matters here.
MIN_DROP = {"ft": 0.5, "fp": 0.5, "mcr": 0.5, "nad": 0.5, "argd": 0.5, "anp": 0.5, "ibau": 0.5, "sau": 0.5}
TEST_SCHEDULE = {"optim.lr": 0.1, "optim.schedule": "step", "optim.milestones": [5], "optim.epochs": 20}
AT = {"ft": {f"ft.{k}": v for k, v in TEST_SCHEDULE.items()},
      "fp": {**{f"fp.{k}": v for k, v in TEST_SCHEDULE.items()}, "fp.max_acc_drop": 0.2},
      "mcr": {"mcr.t": 0.9}, "anp": {"anp.iterations": 200, "anp.max_acc_drop": 0.05},
      "sau": {"sau.optim.epochs": 20, "sau.optim.lr": 0.001}}


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(MIN_DROP))
def test_each_defense_changes_the_model_and_lowers_badnets_asr(name, cache_dir):
    cfg = small_config(cache_dir, defense=name, **AT.get(name, {}))
    r = run_trial(cfg)
    assert r["status"] == "ok", r["error"]
    assert r["asr_before"] >= 0.9
    assert r["asr"] <= r["asr_before"] - MIN_DROP[name], (r["asr_before"], r["asr"])
    assert r["ba"] >= r["ba_before"] - 0.15
    trains = hasattr(get_defense(name)().cfg, "optim")
    assert r["epochs"] > 0 if trains else r["anp_pruned"] > 0  # ANP prunes and does not train


@pytest.mark.slow
def test_fine_pruning_prunes_exactly_the_channels_it_reports(cache_dir, tmp_path):
    from nba_scale.checkpoints import load_weights, saved_arch
    from nba_scale.models import build_model, head

    out = tmp_path / "fp.safetensors"
    cfg = small_config(cache_dir, defense="fp", save_path=str(out), **{"fp.optim.epochs": 1})
    r = run_trial(cfg)
    assert r["status"] == "ok" and r["fp_pruned"] > 0
    assert saved_arch(out) == "wrn-16-1"  # so `--model` of a repaired model needs no --arch
    pruned = [int(c) for c in r["fp_pruned_channels"].split(",")]
    assert len(pruned) == r["fp_pruned"]
    model = build_model("wrn-16-1", 10, (0.5,) * 3, (0.25,) * 3)
    model.load_state_dict(load_weights(out))
    dead = set(torch.nonzero((head(model).weight == 0).all(0)).flatten().tolist())
    assert set(pruned) == dead  # pruned channels reach no logit after fine-tuning, and only they
    x = torch.rand(8, 3, 32, 32)
    feats = {}
    head(model).register_forward_pre_hook(lambda m, i: feats.__setitem__("x", i[0]))
    base = model.eval()(x)
    bumped = feats["x"].clone()
    bumped[:, pruned] += 100.0
    assert torch.allclose(head(model)(bumped), base, atol=1e-4)  # whatever the channel carries


@pytest.mark.slow
@pytest.mark.parametrize("t", [0.0, 1.0])
def test_mcr_endpoints_are_the_backdoored_model_and_its_fine_tuned_copy(t, cache_dir):
    cfg = small_config(cache_dir, defense="mcr", **{"mcr.t": t})
    r = run_trial(cfg)
    assert r["status"] == "ok", r["error"]
    if t == 0.0:
        assert (r["ba"], r["asr"]) == (r["ba_before"], r["asr_before"])
    else:
        teacher = r["artifacts"]["teacher"]
        assert (r["ba"], r["asr"]) == (teacher["ba"], teacher["asr"])


def test_mcr_interior_point_lies_on_the_trained_curve_with_its_own_batchnorm_statistics(monkeypatch):
    """t = 0.5: the repaired model is (1-t)^2 w0 + 2t(1-t) theta + t^2 w1 with the control point
    theta trained away from its start (the endpoints' midpoint), and its BatchNorm statistics
    are those of the clean set at that point, not either endpoint's."""
    import copy

    from nba_scale.defenses.base import DefenseContext
    from nba_scale.defenses.mcr import BezierCurve
    from nba_scale.models import WideResNet
    from nba_scale.training import make_accelerator

    torch.manual_seed(0)
    w0 = WideResNet(10, 1)
    w1 = copy.deepcopy(w0)
    with torch.no_grad():
        for q in w1.parameters():
            q.add_(0.05 * torch.randn_like(q))
    x = torch.randint(0, 256, (64, 3, 32, 32), dtype=torch.uint8)
    y = torch.randint(0, 10, (64,))
    curves = []
    real_point = BezierCurve.point

    def spy(self, t, x_clean, batch_size=128):
        curves.append(self)
        return real_point(self, t, x_clean, batch_size)

    monkeypatch.setattr(BezierCurve, "point", spy)
    ctx = DefenseContext(x, y, 10, True, make_accelerator("cpu"), seed=0, teacher=w1)
    start = {n: q.detach().clone() for n, q in w0.named_parameters()}
    end = {n: q.detach().clone() for n, q in w1.named_parameters()}
    out = get_defense("mcr")({"t": 0.5, "optim": {"epochs": 2, "batch_size": 16}}).repair(copy.deepcopy(w0), ctx)
    (curve,) = curves
    theta = dict(zip(curve.names, curve.theta))
    moved = max((theta[n] - (start[n] + end[n]) / 2).abs().max().item() for n in curve.names)
    assert moved > 1e-4  # the control point was trained
    for n, q in out.named_parameters():
        expected = 0.25 * start[n] + 0.5 * theta[n] + 0.25 * end[n]
        assert torch.allclose(q, expected, atol=1e-6), n
    # The first BatchNorm sees conv1 of the normalised input: its running mean is that mean over x.
    with torch.no_grad():
        o = out.conv1((x.float() / 255 - out.mean) / out.std)
    bn = out.groups[0][0].bn1
    assert torch.allclose(bn.running_mean, o.mean((0, 2, 3)), atol=1e-5)
    assert not torch.allclose(bn.running_mean, w0.groups[0][0].bn1.running_mean, atol=1e-3)


def test_anp_prunes_the_channels_at_or_below_the_threshold_and_chooses_it_on_clean_accuracy(monkeypatch):
    """`prune` zeroes exactly the BN weights whose mask is <= t; `choose_threshold` keeps the
    largest threshold of the sweep whose clean accuracy stays within max_acc_drop."""
    from nba_scale.defenses import anp

    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 1), torch.nn.BatchNorm2d(4))
    masks = {"1": torch.tensor([0.05, 0.2, 0.21, 0.9])}
    pruned = anp.prune(net, masks, 0.2)
    assert pruned == ["1:0", "1:1"] and net[1].weight.tolist() == [0.0, 0.0, 1.0, 1.0]
    cfg = get_defense("anp")({"max_acc_drop": 0.1}).cfg
    # Accuracy by how many channels are pruned: up to 2 cost nothing, 3 cost 5 %, 4 cost 50 %.
    acc = {4: 1.0, 3: 1.0, 2: 1.0, 1: 0.95, 0: 0.5}  # by channels left
    monkeypatch.setattr(anp, "accuracy", lambda m, x, y, d: acc[int((m[1].weight != 0).sum())])
    fresh = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 1), torch.nn.BatchNorm2d(4))
    assert abs(anp.choose_threshold(fresh, masks, None, None, "cpu", cfg) - 0.85) < 1e-9  # 3 pruned, 4 not
    assert fresh[1].weight.tolist() == [1.0] * 4  # the sweep prunes copies
    cfg.max_acc_drop = 0.01
    assert abs(anp.choose_threshold(fresh, masks, None, None, "cpu", cfg) - 0.2) < 1e-9
    with pytest.raises(ConfigError, match="max_acc_drop"):
        get_defense("anp")({"max_acc_drop": 1.5})


def test_anp_masks_learn_on_a_copy_and_refuse_a_model_without_batchnorm():
    from nba_scale.defenses.anp import learn_masks

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.ReLU(),
                              torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(4, 3))
    before = {k: v.clone() for k, v in net.state_dict().items()}
    x, y = torch.randint(0, 256, (16, 3, 8, 8), dtype=torch.uint8), torch.randint(0, 3, (16,))
    cfg = get_defense("anp")({"iterations": 5, "batch_size": 8, "augment": False}).cfg
    masks = learn_masks(net, x, y, cfg, "cpu", flip=False, seed=0)
    assert set(masks) == {"1"} and masks["1"].shape == (4,)
    assert bool(((masks["1"] >= 0) & (masks["1"] <= 1)).all()) and not bool((masks["1"] == 1).all())
    assert all(torch.equal(v, before[k]) for k, v in net.state_dict().items())  # running stats too
    with pytest.raises(ConfigError, match="no affine BatchNorm"):
        learn_masks(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(192, 3)), x, y, cfg, "cpu", False, 0)


def test_ibau_loss_carries_the_implicit_hypergradient_of_the_truncated_neumann_series():
    """On a linear model small enough for full Jacobians: the loss's value is the outer CE and its
    gradient is dL_o/dθ + (dδ'/dθ)^T Σ_{k<K} (dδ'/dδ)^T^k dL_o/dδ, δ' = δ - η ∇_δ L_i."""
    from torch.autograd.functional import jacobian
    from torch.func import functional_call

    from nba_scale.defenses.ibau import hypergradient_loss

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 4))
    x, y = torch.rand(5, 3, 2, 2), torch.randint(0, 4, (5,))
    delta = 0.3 * torch.randn(1, 3, 2, 2)
    cfg = get_defense("ibau")({"portion": 1.0, "fixed_point_iters": 3, "inner_lr": 0.5}).cfg
    loss = hypergradient_loss(net, x, y, delta, cfg)
    got = torch.autograd.grad(loss, list(net.parameters()))
    names = [n for n, _ in net.named_parameters()]
    theta = [q.detach().clone().requires_grad_(True) for q in net.parameters()]

    def f(params, d):
        return functional_call(net, dict(zip(names, params)), (d,))

    def outer(d, *params):
        return torch.nn.functional.cross_entropy(f(params, x + d), y)

    def mapped(d, *params):
        inner = -torch.nn.functional.cross_entropy(f(params, x + d), y) + cfg.pert_reg * d.pow(2).sum()
        (g,) = torch.autograd.grad(inner, [d], create_graph=True)
        return d - cfg.inner_lr * g

    d0 = delta.clone().requires_grad_(True)
    assert torch.allclose(loss, outer(d0, *theta))
    g_d, *g_theta = torch.autograd.grad(outer(d0, *theta), [d0, *theta])
    jac = jacobian(lambda d, *p: mapped(d, *p), (d0, *theta), create_graph=False)
    n = delta.numel()
    j_dd = jac[0].reshape(n, n)
    v, term = torch.zeros(n), g_d.reshape(n)
    for _ in range(cfg.fixed_point_iters):
        v = j_dd.T @ v + term
    expected = [gt + (jac[1 + i].reshape(n, -1).T @ v).reshape(gt.shape) for i, gt in enumerate(g_theta)]
    for a, b in zip(got, expected):
        assert torch.allclose(a, b, atol=1e-5), (a, b)
    assert not torch.allclose(got[0], g_theta[0], atol=1e-4)  # the implicit term is not nothing


def test_sau_shared_pgd_stays_in_its_bound_and_the_unlearning_term_targets_the_reference_class():
    from nba_scale.defenses.sau import js_divergence, shared_pgd, unlearning_loss

    a, b = torch.randn(6, 5), torch.randn(6, 5)
    assert torch.allclose(js_divergence(a, a), torch.zeros(6), atol=1e-6)
    assert torch.allclose(js_divergence(a, b), js_divergence(b, a)) and bool((js_divergence(a, b) > 0).all())
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 4))
    ref = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 4))
    x, y = torch.rand(8, 3, 2, 2), torch.randint(0, 4, (8,))
    cfg = get_defense("sau")({"bound": 0.1, "pgd_step": 0.03, "pgd_steps": 4}).cfg
    delta = shared_pgd(net, ref, x, y, cfg)
    assert delta.shape == x.shape and delta.abs().max() <= 0.1 + 1e-7
    assert not torch.allclose(delta, torch.full_like(x, 0.1))  # it moved from its corner start
    logits = torch.zeros(4, 3, requires_grad=True)
    cls = torch.tensor([0, 1, 2, 0])
    assert unlearning_loss(logits, cls, torch.zeros(4, dtype=torch.bool)) == 0
    loss = unlearning_loss(logits, cls, torch.tensor([True, False, False, False]))
    (g,) = torch.autograd.grad(loss, [logits])
    assert loss > 0 and g[0, 0] > 0 and g[0, 1] < 0 and bool((g[1:] == 0).all())  # lowers class 0 on sample 0 only


def test_each_preset_sets_the_defenses_own_budget():
    from nba_scale.spec import with_preset

    def at(defense, preset, **over):
        return with_preset({"defense": defense, **over}, preset).get(defense, {})

    assert at("anp", "quick") == {"iterations": 1000} and at("anp", "smoke") == {"iterations": 20}
    assert at("anp", "quick", anp={"iterations": 7}) == {"iterations": 7}  # the user's setting wins
    assert at("ibau", "quick")["optim"]["epochs"] == 5 and at("ibau", "smoke")["optim"]["epochs"] == 2
    assert at("sau", "quick")["optim"]["epochs"] == 20 and at("nba", "quick")["optim"]["epochs"] == 10


def test_adam_is_an_optimiser_choice_that_leaves_sgd_keys_alone_and_does_not_stack():
    from nba_scale.stacking import why_not_stacked
    from nba_scale.trial import _recipe
    from nba_scale.training import OptimConfig, make_optimizer, nad_schedule

    net = torch.nn.Linear(3, 2)
    assert isinstance(make_optimizer(net, get_defense("sau")().cfg.optim), torch.optim.Adam)
    assert isinstance(make_optimizer(net, nad_schedule()), torch.optim.SGD)
    assert "optimizer" not in _recipe(nad_schedule())  # the cached teachers keep their keys
    assert _recipe(nad_schedule(optimizer="adam"))["optimizer"] == "adam"
    with pytest.raises(ConfigError, match="use sgd or adam"):
        OptimConfig(epochs=1, lr=0.1, batch_size=8, optimizer="rmsprop").validate()
    nba = get_defense("nba")
    pack = [nba({"optim": {"optimizer": "adam"}}), nba({"optim": {"optimizer": "adam"}})]
    from nba_scale.models import WideResNet
    assert "SGD" in why_not_stacked(pack, WideResNet(10, 1))
