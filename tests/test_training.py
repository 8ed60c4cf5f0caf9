import pytest
import torch

from nba_scale.training import OptimConfig, make_accelerator, plain_progress, train


def _tiny_run():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 2))
    x = torch.randint(0, 256, (16, 3, 8, 8), dtype=torch.uint8)
    y = torch.randint(0, 2, (16,))
    cfg = OptimConfig(epochs=3, lr=0.01, batch_size=8, augment=False)
    train(model, x, y, cfg, make_accelerator("cpu"), desc="tiny")


def test_plain_progress_prints_epoch_lines_only_where_a_driver_asks(capsys):
    # stderr is captured (no terminal): the bar is off, so without the context the loop is silent
    _tiny_run()
    assert "tiny" not in capsys.readouterr().err
    with plain_progress(every_s=0.0):
        _tiny_run()
    lines = [line for line in capsys.readouterr().err.splitlines() if "tiny: epoch" in line]
    assert [line.split(",")[0].strip() for line in lines] == [f"tiny: epoch {e}/3" for e in (1, 2, 3)]
    with plain_progress(every_s=3600.0):  # throttled: only the last epoch's line
        _tiny_run()
    assert [line.split(",")[0].strip() for line in capsys.readouterr().err.splitlines()] == ["tiny: epoch 3/3"]


@pytest.mark.slow
def test_a_driver_building_artifacts_prints_each_trainings_epochs(tmp_path, capsys):
    from conftest import small_config
    from nba_scale.trial import prepare_artifacts

    cfg = small_config(tmp_path, **{"data.synthetic_train": 200, "data.synthetic_test": 50,
                                    "backdoor.epochs": 2, "teacher.epochs": 1, "teacher.milestones": []})
    assert prepare_artifacts(cfg)["status"] == "ok"
    err = capsys.readouterr().err
    assert "backdoor[badnets]: epoch 2/2" in err and "teacher: epoch 1/1" in err


@pytest.mark.slow
def test_a_driver_builds_a_teacher_only_for_defenses_that_use_one(tmp_path, capsys):
    """A campaign's prebuild: FT cells need the backdoored model alone; the NAD cell adds the teacher."""
    from conftest import small_config
    from nba_scale.sweep.execution import prebuild

    tiny = {"data.synthetic_train": 200, "data.synthetic_test": 50, "backdoor.epochs": 1, "teacher.epochs": 1,
            "teacher.milestones": []}
    ft = [small_config(tmp_path, defense="ft", **tiny, **{"ft.optim.epochs": e}) for e in (1, 2)]
    prebuild("t", ft)
    assert (tmp_path / "backdoor").is_dir() and not (tmp_path / "teacher").exists()
    assert capsys.readouterr().out.count("artifacts 1/1") == 1  # two FT cells, one backdoored model
    prebuild("t", [*ft, small_config(tmp_path, defense="nad", **tiny)])
    assert len(list((tmp_path / "teacher").glob("*.safetensors"))) == 1
