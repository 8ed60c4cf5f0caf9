import pytest
import torch

from nba_scale.attacks import ATTACKS, get_attack
from nba_scale.attacks.badnets import BadNets, checkerboard
from nba_scale.config import ConfigError
from nba_scale.data import make_synthetic


def test_registry_errors_list_known_names():
    with pytest.raises(ConfigError, match="unknown attack 'badnet'; known: badnets") as e:
        get_attack("badnet")
    assert "\n" not in str(e.value)
    assert "badnets" in ATTACKS.names()


def test_badnets_poisons_the_right_images_with_a_corner_patch():
    x, y, xt, yt = make_synthetic(1000, 300, seed=0)
    atk = BadNets({}, num_classes=10, seed=0)
    p = atk.poison(x, y, xt, yt)
    idx = p.poison_index
    assert len(idx) == 100 and (y[idx] != 0).all()  # 10 % of the set, drawn from non-target classes
    assert (p.y_train[idx] == 0).all()
    untouched = torch.ones(len(y), dtype=torch.bool)
    untouched[idx] = False
    assert torch.equal(p.y_train[untouched], y[untouched]) and torch.equal(p.x_train[untouched], x[untouched])
    diff = (p.x_train[idx] != x[idx]).any(1).any(0)  # (H, W): where any poisoned image changed
    assert diff[:29].sum() == 0 and diff[:, :29].sum() == 0  # only the bottom-right 3x3
    assert torch.equal(p.x_train[idx[0], :, 29:, 29:], checkerboard(3).expand(3, 3, 3))
    # Poisoned test set: every non-target test image, triggered; target label for ASR, true for RA.
    assert len(p.x_test) == int((yt != 0).sum()) and (p.y_test_true != 0).all() and (p.y_test_target == 0).all()
    again = BadNets({}, 10, seed=0).poison(x, y, xt, yt)
    assert torch.equal(again.poison_index, idx) and torch.equal(again.x_train, p.x_train)
    assert not torch.equal(BadNets({}, 10, seed=1).poison(x, y, xt, yt).poison_index, idx)


def test_badnets_parameters_are_checked():
    atk = BadNets({"target": 3, "rate": 0.05, "patch_size": 4}, 10)
    assert atk.params.target == 3 and atk.apply_trigger(torch.zeros(1, 3, 32, 32, dtype=torch.uint8))[0, 0, 28:, 28:].sum() > 0
    with pytest.raises(ConfigError, match="attack.target=12 is not a class"):
        BadNets({"target": 12}, 10)
    with pytest.raises(ConfigError, match="unknown config key 'attack.size'"):
        BadNets({"size": 3}, 10)
