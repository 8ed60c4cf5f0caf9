"""Device and precision handling that a GPU run relies on, checked on the CPU (bench/gpu_check.sh
proves the CUDA side)."""
import argparse

import pytest
import torch

from nba_scale.attacks.badnets import BadNets
from nba_scale.config import ConfigError
from nba_scale.sweep.resources import Shape
from nba_scale.trial import check_config
from nba_scale.training import make_accelerator


def test_one_process_can_run_trials_of_different_precisions_one_after_another():
    """A Ray actor runs trial after trial: Accelerate's process-wide state must follow each one
    (it used to refuse the second precision, or keep the first device)."""
    first = make_accelerator("cpu", "no")
    assert first.mixed_precision == "no"
    second = make_accelerator("cpu", "bf16")
    assert second.mixed_precision == "bf16" and second.device.type == "cpu"
    with second.autocast():
        assert torch.nn.Linear(2, 2)(torch.randn(1, 2)).dtype == torch.bfloat16
    assert make_accelerator("cpu", "no").mixed_precision == "no"


def test_fp16_is_refused_in_one_line_that_names_bf16():
    with pytest.raises(ConfigError, match="fp16 is not supported.*use bf16") as e:
        check_config({"dataset": "synthetic", "precision": "fp16"})
    assert "\n" not in str(e.value)


def test_a_trigger_is_copied_to_the_device_once():
    attack = BadNets({}, num_classes=10)
    x = torch.zeros(4, 3, 32, 32, dtype=torch.uint8)
    attack.apply_trigger(x)
    cached = dict(attack._on_device)
    out = attack.apply_trigger(x)
    assert attack._on_device == cached and len(cached) == 1  # the same tensor, not a new copy
    assert out[..., -3:, -3:].float().std() > 0 and out[..., :20, :20].sum() == 0


def test_trials_default_to_one_gpu_each_where_there_are_gpus(monkeypatch, capsys):
    args = argparse.Namespace(gpus_per_trial=None, cpus_per_trial=1.0, workers_per_trial=None, address=None)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    assert Shape.from_args(args).gpus == 0.0
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert Shape.from_args(args).gpus == 1.0
    assert "2 GPU(s) found: each trial gets one" in capsys.readouterr().out
    assert Shape.from_args(argparse.Namespace(**{**vars(args), "gpus_per_trial": 0.0})).gpus == 0.0


def test_a_stage_can_train_in_bf16_inside_an_fp32_trial_and_keys_its_artifact_alike():
    """The attacker's model (which the defense only reads) may train in bf16 while the defense
    runs in fp32; its artifact is the one a whole-bf16 trial would build, and not an fp32 one."""
    import dataclasses

    from nba_scale.training import OptimConfig, train

    seen = []

    def loss_fn(model, x, y):
        seen.append(torch.is_autocast_enabled("cpu"))
        return torch.nn.functional.cross_entropy(model(x.float().mean((2, 3))), y)

    x, y = torch.randint(0, 255, (8, 3, 4, 4), dtype=torch.uint8), torch.arange(8) % 2
    acc = make_accelerator("cpu", "no")
    stage = OptimConfig(epochs=1, lr=0.01, batch_size=4, augment=False)
    for precision, expected in ((None, False), ("bf16", True)):
        seen.clear()
        train(torch.nn.Linear(3, 2), x, y, dataclasses.replace(stage, precision=precision), acc, loss_fn=loss_fn)
        assert seen == [expected] * 2
    with pytest.raises(ConfigError, match="precision=no inside a bf16 trial"):
        train(torch.nn.Linear(3, 2), x, y, dataclasses.replace(stage, precision="no"), make_accelerator("cpu", "bf16"),
              loss_fn=loss_fn)
    with pytest.raises(ConfigError, match="precision=no inside a bf16 trial"):
        check_config({"dataset": "synthetic", "precision": "bf16", "backdoor.precision": "no"})
    with pytest.raises(ConfigError, match="precision=no inside a bf16 trial"):  # before any trial starts
        check_config({"dataset": "synthetic", "precision": "bf16", "defense": "nba", "nba.optim.precision": "no"})

    from nba_scale.attacks import get_attack
    from nba_scale.data import load_dataset
    from nba_scale.trial import artifact_specs

    small = {"dataset": "synthetic", "data.synthetic_train": 200, "data.synthetic_test": 50}
    whole, staged, plain = (check_config({**small, **c}) for c in
                            ({"precision": "bf16"}, {"backdoor.precision": "bf16"}, {}))
    ds = load_dataset("synthetic", plain.data, 0)
    whole, staged, plain = (artifact_specs(c, ds, get_attack("badnets")({}, ds.num_classes, 0))
                            for c in (whole, staged, plain))
    assert whole["backdoor"] == staged["backdoor"] != plain["backdoor"]
    assert not {"cutout", "precision"} & set(plain["backdoor"]["train"])  # later fields: older keys hold
    assert staged["teacher"]["precision"] == "no" and whole["teacher"]["precision"] == "bf16"


@pytest.mark.parametrize("flags, warned", [("fpu sse2 avx512f", True), ("fpu avx512f avx512_bf16", False),
                                           ("fpu amx_bf16 amx_tile", False), ("", False)])
def test_bf16_on_a_cpu_without_bf16_units_warns_once(tmp_path, monkeypatch, caplog, flags, warned):
    """oneDNN emulates bf16 where the CPU has no AMX or AVX512-BF16 (slower than fp32): the user is
    told once per process; a CPU with them, or one whose flags cannot be read, says nothing."""
    from nba_scale import training

    info = tmp_path / "cpuinfo"
    info.write_text(f"processor\t: 0\nflags\t\t: {flags}\n" if flags else "processor\t: 0\n")
    monkeypatch.setattr(training, "CPUINFO", str(info))
    training.cpu_bf16_native.cache_clear()
    training._warn_emulated_bf16.cache_clear()
    try:
        with caplog.at_level("WARNING", logger="nba_scale"):
            make_accelerator("cpu", "bf16")
            training.warn_if_slow_bf16("cpu")
    finally:
        training.cpu_bf16_native.cache_clear()
        training._warn_emulated_bf16.cache_clear()
    hits = [r for r in caplog.records if "emulated" in r.getMessage()]
    assert len(hits) == (1 if warned else 0)
