import pytest

from nba_scale.config import ConfigError, build, flatten, key_fields, nest, parse_set
from nba_scale.trial import parse_config, with_preset


def test_parse_set_types_and_nesting():
    cfg = parse_set(["nba.beta=0.25", "backdoor.epochs=3", "nba.terms=[rnb, pnb]", "data.flip=false"])
    assert cfg == {"nba": {"beta": 0.25, "terms": ["rnb", "pnb"]}, "backdoor": {"epochs": 3}, "data": {"flip": False}}
    assert flatten(nest({"a.b": 1, "c": {"d": 2}})) == {"a.b": 1, "c.d": 2}


def test_plugin_sections_land_in_params():
    cfg = parse_config({"attack": "badnets", "badnets.rate": 0.05, "nba.beta": 1.0, "backdoor.epochs": 3})
    assert cfg.attack_params == {"rate": 0.05} and cfg.defense_params == {"beta": 1.0}
    assert cfg.backdoor.epochs == 3 and cfg.backdoor.lr == 0.1  # the rest keeps its defaults


@pytest.mark.parametrize("config, fragment", [
    ({"bogus": 1}, "unknown config key 'bogus'"),
    ({"backdoor.epochs": "ten"}, "backdoor.epochs='ten' should be an integer"),
    ({"backdoor.epochs": 2.5}, "should be an integer"),
    ({"clean_fraction": 0}, "clean_fraction=0.0 must be in (0, 1]"),
    ({"precision": "fp8"}, "precision='fp8' is not one of"),
    ({"nad.beta": 1}, "unknown config key 'nad'"),
])
def test_bad_config_is_one_line_naming_the_key(config, fragment):
    with pytest.raises(ConfigError) as e:
        parse_config(config)
    assert fragment in str(e.value) and "\n" not in str(e.value)


def test_preset_is_overridden_by_user_values():
    cfg = parse_config(with_preset({"backdoor": {"epochs": 7}}, "smoke"))
    assert cfg.backdoor.epochs == 7 and cfg.teacher.epochs == 2 and cfg.defense_params["optim"]["epochs"] == 2
    with pytest.raises(ConfigError, match="unknown preset 'fast'; known: smoke, quick, cpu-paper, paper"):
        with_preset({}, "fast")


def test_nested_dataclass_build_checks_plugin_keys():
    from nba_scale.defenses.nba import NBAConfig

    assert build(NBAConfig, {"optim.epochs": 3}).optim.epochs == 3
    with pytest.raises(ConfigError, match="nba.terms"):
        build(NBAConfig, {"terms": ["rnb", "xyz"]}, "nba")


def test_preact_resnet18_trains_every_stage_at_its_own_learning_rate_unless_the_user_sets_one():
    """At the WRN recipe's lr 0.1 PreAct-ResNet18 diverges (trial.ARCH_LR); FP's and MCR's 0.01
    stay, the user's own value wins, the WRN keeps 0.1."""
    def cfg(**c):
        return parse_config(with_preset({"dataset": "synthetic", **c}, "quick"))

    preact = cfg(defense="nba", model={"arch": "preact-resnet18"})
    assert (preact.backdoor.lr, preact.teacher.lr, preact.defense_params["optim"]["lr"]) == (0.01, 0.01, 0.01)
    assert cfg(defense="fp", arch="preact-resnet18").defense_params["optim"] == {"epochs": 10}
    mine = cfg(defense="nad", arch="PreAct-ResNet18", backdoor={"lr": 0.05}, nad={"optim": {"lr": 0.02}})
    assert (mine.backdoor.lr, mine.teacher.lr, mine.defense_params["optim"]["lr"]) == (0.05, 0.01, 0.02)
    wrn = cfg(defense="nba")
    assert (wrn.backdoor.lr, wrn.teacher.lr) == (0.1, 0.1) and "lr" not in wrn.defense_params["optim"]


def test_key_fields_leave_out_later_settings_only_while_all_hold_their_old_values():
    later = {"eps": 0.0, "steps": 1}
    assert key_fields({"a": 1, "eps": 0.0, "steps": 1}, later) == {"a": 1}
    assert key_fields({"a": 1, "eps": 0.1, "steps": 1}, later) == {"a": 1, "eps": 0.1, "steps": 1}
    assert key_fields({"a": 1, "eps": 0.0, "steps": 3}, later) == {"a": 1, "eps": 0.0, "steps": 3}
    assert key_fields({"a": 1}, {}) == {"a": 1}
