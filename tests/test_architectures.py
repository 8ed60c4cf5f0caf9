"""The built-in architectures, their named taps, and every attack and defense on each of them."""
import dataclasses

import pytest
import torch

from conftest import DEVICE
from nba_scale.attacks import ATTACKS
from nba_scale.config import ConfigError
from nba_scale.defenses import DEFENSES
from nba_scale.models import build_model, head, last_conv
from nba_scale.trial import check_config, run_trial

ARCHS = {  # arch -> (tap shapes on a 32-px image, classifier width)
    "wrn-16-1": ([(16, 32, 32), (32, 16, 16), (64, 8, 8)], 64),
    "preact-resnet18": ([(128, 16, 16), (256, 8, 8), (512, 4, 4)], 512),
    "vgg16-bn": ([(256, 8, 8), (512, 4, 4), (512, 2, 2)], 512),
    "vgg19-bn": ([(256, 8, 8), (512, 4, 4), (512, 2, 2)], 4096),  # torchvision's: three linear layers
}


@pytest.mark.parametrize("arch", sorted(ARCHS))
def test_each_architecture_returns_its_stage_outputs_as_taps(arch):
    shapes, width = ARCHS[arch]
    torch.manual_seed(0)
    m = build_model(arch, 7, (0.5,) * 3, (0.25,) * 3).eval()
    x = torch.rand(2, 3, 32, 32)
    logits, taps = m(x, features=True)
    assert logits.shape == (2, 7) and [tuple(t.shape[1:]) for t in taps] == shapes
    assert torch.equal(m(x), logits)  # the taps change nothing
    assert head(m).in_features == width and head(m).out_features == 7
    assert isinstance(last_conv(m), torch.nn.Conv2d)
    # The taps are the named modules' outputs: the same tensors a hook of our own sees.
    seen = []
    hooks = [m.get_submodule(n).register_forward_hook(lambda mod, i, o: seen.append(o)) for n in m.taps]
    m(x)
    for h in hooks:
        h.remove()
    assert all(torch.equal(a, b) for a, b in zip(seen, taps))


def test_taps_can_be_chosen_by_name_and_a_wrong_name_is_one_line():
    m = build_model("preact-resnet18", 10, (0.5,) * 3, (0.25,) * 3, taps=["layer1", "layer4.1.conv2"])
    _, taps = m(torch.rand(1, 3, 32, 32), features=True)
    assert [tuple(t.shape[1:]) for t in taps] == [(64, 32, 32), (512, 4, 4)]
    assert list(check_config({"model.arch": "vgg16-bn", "model.taps": ["features.5"]}).taps) == ["features.5"]
    with pytest.raises(ConfigError, match="model.taps=.*lacks; its top-level modules: conv1, groups") as e:
        check_config({"model.taps": ["groups.0", "layer9"]})
    assert "\n" not in str(e.value)
    with pytest.raises(ConfigError, match="unknown arch 'resnet50'.*preact-resnet18, vgg16-bn or vgg19-bn"):
        check_config({"model.arch": "resnet50"})


def tiny(cache_dir, arch, attack, defense):
    """Seconds per trial even for VGG-16 and ResNet-18 on the CPU: it checks that everything runs
    on the architecture and scores finite numbers, not how well. lr 0.01 (BackdoorBench's for
    these networks): after a handful of steps at 0.1 their BatchNorm running statistics lag the
    weights so far that the eval-mode logits reach 1e6-1e12 (measured: PreAct-ResNet18 and VGG16-BN,
    4 steps on 200 images; the WRN stays at 0.2), and NAD's attention maps overflow."""
    cfg = {"dataset": "synthetic", "attack": attack, "defense": defense, "device": DEVICE["name"], "seed": 1,
           "cache_dir": str(cache_dir), "arch": arch, "clean_fraction": 0.2, "data.synthetic_train": 200,
           "data.synthetic_test": 60, "backdoor.epochs": 1, "backdoor.batch_size": 64, "backdoor.lr": 0.01,
           "teacher.epochs": 1, "teacher.milestones": [], "teacher.lr": 0.01}
    trains = any(f.name == "optim" for f in dataclasses.fields(DEFENSES.get(defense).Config))
    budget = {f"{defense}.optim.epochs": 1, f"{defense}.optim.lr": 0.01} if trains else {}
    return {**cfg, **budget, **QUICK.get(defense, {}), **QUICK.get(attack, {})}


# Adam's rates (I-BAU, SAU) stay theirs: 0.01 is ten to a hundred times them.
QUICK = {"trojan": {"trojan.steps": 5}, "cla": {"cla.steps": 2}, "anp": {"anp.iterations": 3}, "lf": {"lf.passes": 1},
         "iad": {"iad.images": 100, "iad.mask_epochs": 1, "iad.joint_epochs": 1},
         "ibau": {"ibau.optim.lr": 0.001}, "sau": {"sau.optim.lr": 0.0001},
         "refool": {"refool.n_candidates": 20, "refool.n_reflections": 5, "refool.selection_rounds": 1,
                    "refool.selection_epochs": 1}}
ATTACK_NAMES = ATTACKS.names()
DEFENSE_NAMES = [d for d in DEFENSES.names() if d != "none"]


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["preact-resnet18", "vgg16-bn"])
@pytest.mark.parametrize("k", range(max(len(ATTACK_NAMES), len(DEFENSE_NAMES))))
def test_every_attack_and_defense_runs_on_the_architecture(arch, k, cache_dir):
    attack, defense = ATTACK_NAMES[k % len(ATTACK_NAMES)], DEFENSE_NAMES[k % len(DEFENSE_NAMES)]
    r = run_trial(tiny(cache_dir, arch, attack, defense))
    assert r["status"] == "ok", r["error"]
    assert r["config"]["arch"] == arch
    for key in ("ba_before", "asr_before", "ba", "asr"):
        assert 0 <= r[key] <= 1, (key, r[key])
