"""The one config path every driver uses (nba_scale/cli.py), without running a trial."""
import math

import pytest

from nba_scale import cli
from nba_scale.config import ConfigError
from nba_scale.sweep.search_space import find_space, load_search_space


def test_layers_merge_in_order_the_preset_goes_under_and_unused_sections_are_dropped():
    cfg = cli.trial_config({"dataset": "synthetic", "nba": {"beta": 0.2}},
                           {"attack": "blend", "defense": "nba", "seed": 3},
                           {"badnets": {"rate": 0.3}, "blend": {"alpha": 0.1}, "nad": {"p": 3.0},
                            "nba": {"optim": {"epochs": 7}}},
                           preset="smoke")
    assert cfg["attack"] == "blend" and cfg["seed"] == 3 and cfg["blend"] == {"alpha": 0.1}
    assert "badnets" not in cfg and "nad" not in cfg  # other plug-ins' sections
    assert cfg["nba"] == {"beta": 0.2, "optim": {"epochs": 7}}  # the --set layer beats the preset's 2 epochs
    assert cfg["backdoor"]["epochs"] == 4  # the preset fills what no layer set
    kept = cli.trial_config({"attack": "badnets"}, {"blend": {"alpha": 0.1}}, keep_sections=True)
    assert kept["blend"] == {"alpha": 0.1}
    assert "blend" not in cli.drop_unused_sections(kept)


def test_a_set_section_that_no_trial_uses_is_refused_in_one_line():
    sets = {"nad": {"p": 3.0}}
    cfg = cli.trial_config({"dataset": "synthetic", "defense": "nba"}, sets, preset="smoke")
    with pytest.raises(ConfigError) as e:
        cli.check_run([cfg], sets)
    msg = str(e.value)
    assert "no trial of this run uses defense 'nad'" in msg and "it runs nba" in msg and "\n" not in msg
    cli.check_run([cli.trial_config({"dataset": "synthetic", "defense": "nad"}, sets, preset="smoke")], sets)


def test_a_bad_plugin_key_fails_before_any_trial_with_the_label_of_its_trial():
    sets = {"blend": {"alfa": 0.1}}
    cfgs = [cli.trial_config({"dataset": "synthetic", "attack": a}, sets, preset="smoke") for a in ("badnets", "blend")]
    with pytest.raises(ConfigError, match=r"^trial 1: unknown config key 'blend.alfa'"):
        cli.check_run(cfgs, sets, label=lambda i: f"trial {i}: ")


def tune_args(*extra):
    from nba_scale.sweep.tune import build_parser

    return build_parser().parse_args(["--dataset", "synthetic", "--preset", "smoke", *extra])


def test_worst_case_sweep_accepts_a_set_for_one_of_its_attacks():
    """`tune --objective worst-case --attack badnets blend --set blend.alpha=0.1` used to be refused
    before Ray started: the study's base config is badnets' and `blend` was an unknown key there."""
    from nba_scale.sweep.tune import plan

    space = load_search_space(find_space("nba"))
    args = tune_args("--attack", "badnets", "blend", "--objective", "worst-case", "--set", "blend.alpha=0.1")
    [study] = plan(args, space)
    assert study.id == "worst-badnets+blend-cf0.05" and study.attacks == ("badnets", "blend")
    assert study.base["blend"] == {"alpha": 0.1}  # kept: each attack's trial takes its own section
    per_attack = plan(tune_args("--attack", "badnets", "blend", "--set", "blend.alpha=0.1"), space)
    assert [(s.id, "blend" in s.base) for s in per_attack] == [("badnets-cf0.05", False), ("blend-cf0.05", True)]
    with pytest.raises(ConfigError, match="no trial of this run uses attack 'blend'"):
        plan(tune_args("--attack", "badnets", "--set", "blend.alpha=0.1"), space)


def test_main_turns_bad_input_into_one_line_and_exit_2(capsys):
    def run(args):
        raise ConfigError("unknown attack 'x'; known: badnets")

    assert cli.main(cli.parser("prog", "doc"), run, []) == 2
    err = capsys.readouterr().err
    assert err == "error: unknown attack 'x'; known: badnets\n"


def test_a_failed_trial_row_never_holds_a_metric(tmp_path):
    from nba_scale.sweep.store import read_table, write_row

    ident = {"dataset": "synthetic", "attack": "badnets", "defense": "nba", "clean_fraction": 0.1}
    write_row(tmp_path, {**ident, "trial_id": "a", "status": "failed", "error": "x", "asr": 1.0, "ba": 0.0})
    write_row(tmp_path, {**ident, "trial_id": "b", "status": "ok", "asr": 0.25, "ba": 0.75, "ra": 0.5})
    rows = {r["trial_id"]: r for r in read_table(tmp_path).to_pylist()}
    assert all(math.isnan(rows["a"][m]) for m in ("asr", "ba", "ra")) and rows["a"]["error"] == "x"
    assert (rows["b"]["asr"], rows["b"]["ba"], rows["b"]["ra"]) == (0.25, 0.75, 0.5)
    assert not list(tmp_path.rglob(".*.tmp"))


def test_code_version_names_this_checkout():
    import subprocess
    from pathlib import Path

    from nba_scale.provenance import code_version

    repo = Path(__file__).resolve().parent.parent
    head = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    v = code_version()
    assert v["git_commit"] == head and isinstance(v["git_dirty"], bool) and v["version"]
    import optuna
    import ray
    import torch

    # The libraries that decide results, as installed (not as imported: a trial need not import Ray).
    assert (v["torch_version"], v["ray_version"], v["optuna_version"]) == (torch.__version__, ray.__version__,
                                                                          optuna.__version__)
    assert v["cuda_version"] == torch.version.cuda and v["python_version"].count(".") == 2


def test_one_console_script_runs_every_command(tmp_path):
    """`nba-scale COMMAND` (installed by pip with the package) and `python -m nba_scale COMMAND`
    dispatch to the commands; an unknown one is refused in one line."""
    import subprocess
    import sys
    from pathlib import Path

    from nba_scale.console import COMMANDS
    from nba_scale.sweep.store import write_row

    script = Path(sys.executable).parent / "nba-scale"
    assert script.is_file(), "pip install -e . installs the nba-scale console script beside python"
    listed = subprocess.run([str(script), "--help"], capture_output=True, text=True)
    assert listed.returncode == 0 and all(f"  {name}" in listed.stdout for name in COMMANDS)
    bad = subprocess.run([str(script), "tuen"], capture_output=True, text=True)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "'tuen'" in bad.stderr
    write_row(tmp_path, {"trial_id": "t1", "dataset": "synthetic", "attack": "badnets", "defense": "nba",
                         "clean_fraction": 0.1, "status": "ok", "asr": 0.25, "ba": 0.75, "ra": 0.5})
    for cmd in ([str(script)], [sys.executable, "-m", "nba_scale"]):
        r = subprocess.run([*cmd, "results", str(tmp_path)], capture_output=True, text=True)
        assert r.returncode == 0 and "t1" in r.stdout and "0.2500" in r.stdout, r.stderr
