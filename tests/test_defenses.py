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
    assert set(DEFENSES.names()) == {"none", "ft", "fp", "mcr", "nad", "argd", "nba"}
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
MIN_DROP = {"ft": 0.5, "fp": 0.5, "mcr": 0.5, "nad": 0.5, "argd": 0.5}
TEST_SCHEDULE = {"optim.lr": 0.1, "optim.schedule": "step", "optim.milestones": [5], "optim.epochs": 20}
AT = {"ft": {f"ft.{k}": v for k, v in TEST_SCHEDULE.items()},
      "fp": {**{f"fp.{k}": v for k, v in TEST_SCHEDULE.items()}, "fp.max_acc_drop": 0.2},
      "mcr": {"mcr.t": 0.9}}


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(MIN_DROP))
def test_each_defense_changes_the_model_and_lowers_badnets_asr(name, cache_dir):
    cfg = small_config(cache_dir, defense=name, **AT.get(name, {}))
    r = run_trial(cfg)
    assert r["status"] == "ok", r["error"]
    assert r["asr_before"] >= 0.9
    assert r["asr"] <= r["asr_before"] - MIN_DROP[name], (r["asr_before"], r["asr"])
    assert r["ba"] >= r["ba_before"] - 0.15
    assert r["epochs"] > 0


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
