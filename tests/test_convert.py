"""Checkpoints from other toolkits: read without running them, mapped onto ours, defended."""
import json
import os
import re

import numpy as np
import pytest
import torch

from conftest import small_config
from nba_scale import convert
from nba_scale.checkpoints import CheckpointError, load_weights
from nba_scale.config import ConfigError
from nba_scale.models import WideResNet, build_model
from nba_scale.trial import parse_config, with_preset


def nad_layout(state):
    """Our WRN's names in the NAD authors' code: groups.G.I -> blockG+1.layer.I, shortcut ->
    convShortcut, bn -> bn1; no normalisation buffers (their model reads raw pixels)."""
    out = {}
    for k, v in state.items():
        m = re.fullmatch(r"groups\.(\d)\.(\d+)\.(\w+)\.(.+)", k)
        if m:
            g, i, layer, rest = m.groups()
            out[f"block{int(g) + 1}.layer.{i}.{layer.replace('shortcut', 'convShortcut')}.{rest}"] = v
        elif k.startswith("bn."):
            out["bn1." + k[3:]] = v
        elif k not in ("mean", "std"):
            out[k] = v
    return out


def test_a_nad_checkpoint_maps_onto_our_wrn_and_computes_the_same_logits(tmp_path):
    torch.manual_seed(0)
    theirs = WideResNet(16, 2, 10, mean=(0, 0, 0), std=(1, 1, 1)).eval()  # raw-pixel input, as NAD's
    for m in theirs.modules():  # non-trivial BN statistics, so a swapped name would show
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2)
    torch.save({"epoch": 20, "state_dict": nad_layout(theirs.state_dict()), "best_clean_acc": 0.81},
               tmp_path / "nad.tar")
    assert convert.main([str(tmp_path / "nad.tar"), str(tmp_path / "ours.safetensors"), "--from", "nad"]) == 0
    side = json.loads((tmp_path / "ours.json").read_text())
    assert side["arch"] == "wrn-16-2" and side["classes"] == 10 and side["mean"] == [0, 0, 0] and side["source"] == "nad"
    ours = build_model("wrn-16-2", 10, (0.5,) * 3, (0.25,) * 3)  # the file's stats replace these
    ours.load_state_dict(load_weights(tmp_path / "ours.safetensors"))
    x = torch.rand(4, 3, 32, 32)
    assert torch.allclose(ours.eval()(x), theirs(x), atol=1e-5)


def test_an_unknown_layout_names_the_keys_that_did_not_map(tmp_path):
    state = nad_layout(WideResNet(16, 1).state_dict())
    state["block1.layer.0.extra.weight"] = torch.zeros(3)
    torch.save(state, tmp_path / "odd.pt")
    with pytest.raises(CheckpointError, match=r"unmapped keys \['block1.layer.0.extra.weight'\]"):
        convert.convert(tmp_path / "odd.pt", "nad")
    torch.save(WideResNet(16, 1).state_dict(), tmp_path / "ours.pt")
    with pytest.raises(CheckpointError, match="not NAD's WideResNet layout"):
        convert.convert(tmp_path / "ours.pt", "nad")
    assert convert.main([str(tmp_path / "ours.pt"), str(tmp_path / "x.safetensors"), "--from", "torchvision"]) == 2
    # Our own layout with its buffers: its normalisation is kept, not replaced by ImageNet's.
    assert convert.main([str(tmp_path / "ours.pt"), str(tmp_path / "x.safetensors"), "--from", "torchvision",
                         "--arch", "wrn-16-1"]) == 0
    side = json.loads((tmp_path / "x.json").read_text())
    assert side["mean"] == [0.5] * 3 and side["std"] == [0.25] * 3


class Payload:
    """What a hostile checkpoint could carry: unpickling it would run a shell command."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_backdoorbench_result_file_is_read_without_running_what_it_pickles(tmp_path):
    torch.manual_seed(0)
    net = build_model("preact-resnet18", 10, (0.0,) * 3, (1.0,) * 3).eval()
    state = {k: v for k, v in net.state_dict().items() if k not in ("mean", "std")}
    marker = tmp_path / "pwned"
    torch.save({"model_name": "preactresnet18", "num_classes": 10, "model": state,
                "bd_test": {"x": np.zeros((2, 32, 32, 3), np.uint8), "hook": Payload(marker)}},
               tmp_path / "attack_result.pt")
    with pytest.raises(CheckpointError, match="pickled Python objects"):  # the plain loader refuses it
        load_weights(tmp_path / "attack_result.pt")
    out = tmp_path / "bb.safetensors"
    assert convert.main([str(tmp_path / "attack_result.pt"), str(out), "--from", "backdoorbench",
                         "--dataset", "cifar10"]) == 0
    assert not marker.exists()  # the payload never ran
    side = json.loads(out.with_suffix(".json").read_text())
    assert side["arch"] == "preact-resnet18" and side["std"] == [0.247, 0.243, 0.261]
    ours = build_model("preact-resnet18", 10, (0.5,) * 3, (0.25,) * 3).eval()
    ours.load_state_dict(load_weights(out))
    x = torch.rand(2, 3, 32, 32)
    mean, std = torch.tensor(side["mean"]).view(1, 3, 1, 1), torch.tensor(side["std"]).view(1, 3, 1, 1)
    assert torch.allclose(ours(x), net((x - mean) / std), atol=1e-4)  # their normalisation, now inside
    # A run on the converted file takes its architecture (and that architecture's lr) from the file.
    brought = parse_config(with_preset({"dataset": "synthetic", "model_path": str(out)}, "quick"))
    assert brought.arch == "preact-resnet18" and brought.teacher.lr == 0.01
    with pytest.raises(ConfigError, match="holds a preact-resnet18, but the run asks arch=wrn-16-1: drop --arch"):
        with_preset({"dataset": "synthetic", "model_path": str(out), "model": {"arch": "wrn-16-1"}}, None)


@pytest.mark.slow
def test_a_nad_style_checkpoint_is_converted_defended_by_nba_and_scored_on_its_own_trigger(cache_dir, tmp_path):
    """The other toolkit's whole path: a WRN trained on raw pixels with NAD's layer names and its
    own BadNets trigger (a 4x4 checkerboard one pixel from the corner, target 3), its triggered
    test set as an .npz; converted, defended by NBA here, ASR measured on that test set."""
    from nba_scale.metrics import predict
    from nba_scale.trial import poison_only, run_trial
    from nba_scale.training import OptimConfig, make_accelerator, setup_run, train

    theirs = {"badnets.patch_size": 4, "badnets.margin": 1, "badnets.target": 3, "badnets.rate": 0.2}
    cfg = small_config(cache_dir, attack="badnets", defense="nba", **theirs)
    _, ds, attack, poisoned, _ = poison_only(cfg)
    setup_run(5)
    model = WideResNet(16, 1, 10, mean=(0, 0, 0), std=(1, 1, 1))
    train(model, poisoned.x_train, poisoned.y_train, OptimConfig(epochs=8, lr=0.1, batch_size=64),
          make_accelerator("cpu", "no"), seed=5)
    torch.save({"state_dict": nad_layout(model.state_dict()), "epoch": 8}, tmp_path / "WRN-16-1-badnets.tar")
    np.savez(tmp_path / "their_test.npz", x=poisoned.x_test.permute(0, 2, 3, 1).numpy(), target=np.int64(3),
             y=poisoned.y_test_true.numpy())
    out = tmp_path / "converted.safetensors"
    assert convert.main([str(tmp_path / "WRN-16-1-badnets.tar"), str(out), "--from", "nad"]) == 0
    # Our own attack flags say nothing about their trigger here: the test set comes from the file.
    r = run_trial({**small_config(cache_dir, attack="badnets", defense="nba"), "model_path": str(out),
                   "poisoned_test": str(tmp_path / "their_test.npz")})
    assert r["status"] == "ok", r["error"]
    # It reads their model as they trained it: the same accuracy as their own network's.
    mine = (predict(model, ds.x_test, "cpu") == ds.y_test).float().mean().item()
    assert r["ba_before"] == pytest.approx(mine, abs=1e-6) and r["asr_before"] >= 0.9
    assert r["asr"] <= 0.2 and r["ba"] >= r["ba_before"] - 0.1, (r["asr"], r["ba"], r["ba_before"])
    assert 0 <= r["ra"] <= 1
    np.savez(tmp_path / "no_labels.npz", x=poisoned.x_test.numpy(), target=np.int64(3))
    r2 = run_trial({**small_config(cache_dir, attack="badnets", defense="none"), "model_path": str(out),
                    "poisoned_test": str(tmp_path / "no_labels.npz")})
    assert r2["asr_before"] == r["asr_before"] and np.isnan(r2["ra_before"])  # no labels: no RA, not 0


def test_backdoorbenchs_vgg19_bn_is_torchvisions_and_maps_name_for_name():
    """BackdoorBench's `vgg19_bn` is torchvision's (a 7x7 pool, three linear layers) trained on
    32-px images: its state dict loads into vgg19-bn key for key and gives the same logits."""
    import torchvision

    assert convert.BACKDOORBENCH_ARCHS["vgg19_bn"] == "vgg19-bn" and "vgg16_bn" not in convert.BACKDOORBENCH_ARCHS
    torch.manual_seed(0)
    theirs = torchvision.models.vgg19_bn(num_classes=10).eval()
    ours = build_model("vgg19-bn", 10, (0.0,) * 3, (1.0,) * 3).eval()
    assert set(theirs.state_dict()) == set(ours.state_dict()) - {"mean", "std"}
    ours.load_state_dict({**theirs.state_dict(), "mean": ours.mean, "std": ours.std})
    x = torch.rand(2, 3, 32, 32)
    assert torch.allclose(ours(x), theirs(x), atol=1e-5)
    with pytest.raises(ConfigError, match="fp works on the pooled last-stage channels"):
        from nba_scale.models import head

        head(ours, "fp")


def backdoorbench_record(root, net, model_name, images, labels, target):
    """A miniature of what a BackdoorBench attack leaves (attack/badnet.py, utils/bd_dataset_v2.py):
    RECORD/attack_result.pt (the state dict, `bd_test` as `prepro_cls_DatasetBD_v2.retrieve_state()`,
    NumPy arrays and NumPy integer keys included) and RECORD/bd_test_dataset/<label>/<index>.png."""
    from PIL import Image

    folder = root / "record" / "badnet_demo"
    data_dict = {}
    for i, (img, label) in enumerate(zip(images, labels)):
        index = np.int64(3 * i + 1)  # test-set indices, as their subset keeps them
        path = folder / "bd_test_dataset" / str(int(label)) / f"{index}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(path)
        # the target as their label transforms return it: a Python int, or a NumPy one (all-to-all)
        data_dict[index] = {"path": f"/their/machine/{path.relative_to(root)}",
                            "other_info": [np.int64(target) if i % 2 else target, int(label)]}
    state = {k: v for k, v in net.state_dict().items() if k not in ("mean", "std")}
    torch.save({"model_name": model_name, "num_classes": 10, "model": state, "data_path": "../data/cifar10",
                "img_size": (32, 32, 3), "clean_data": "cifar10", "bd_train": None,
                "bd_test": {"bd_data_container": {"save_folder_path": "/their/machine/bd_test_dataset",
                                                  "data_dict": data_dict, "save_file_format": ".png"},
                            "getitem_all": True, "getitem_all_switch": False,
                            "original_index_array": np.array(sorted(data_dict), dtype=np.int64),
                            "poison_indicator": np.ones(3 * len(images) + 1), "save_folder_path": None}},
               folder / "attack_result.pt")
    return folder


@pytest.mark.slow
def test_a_backdoorbench_record_folder_is_converted_and_scored_on_its_own_triggered_test_set(cache_dir, tmp_path):
    """BackdoorBench's model zoo end to end: their record folder (model + bd_test_dataset/), the
    model converted, scored here on their own triggered images with their own target labels; DER
    beside ASR/BA/RA."""
    from nba_scale.data import load_dataset, load_poisoned_test
    from nba_scale.metrics import predict
    from nba_scale.trial import run_trial

    ds = load_dataset("synthetic", parse_config(small_config(cache_dir)).data, 0)
    torch.manual_seed(1)
    net = build_model("preact-resnet18", 10, (0.0,) * 3, (1.0,) * 3).eval()
    images = ds.x_test[:40].permute(0, 2, 3, 1).numpy().copy()
    images[:, -4:, -4:] = 255  # their trigger, whatever it is: the PNGs carry it
    record = backdoorbench_record(tmp_path, net, "preactresnet18", images, ds.y_test[:40].numpy(), target=2)
    x, target, true = load_poisoned_test(record, 10)
    assert x.shape == (40, 3, 32, 32) and set(target.tolist()) == {2}
    assert torch.equal(true, ds.y_test[:40]) and torch.equal(x, torch.from_numpy(images).permute(0, 3, 1, 2))
    assert torch.equal(load_poisoned_test(record / "bd_test_dataset", 10)[0], x)  # either folder
    out = tmp_path / "zoo.safetensors"
    assert convert.main([str(record / "attack_result.pt"), str(out), "--from", "backdoorbench",
                         "--dataset", "raw"]) == 0
    r = run_trial({**small_config(cache_dir, defense="none"), "arch": "preact-resnet18", "model_path": str(out),
                   "poisoned_test": str(record)})
    assert r["status"] == "ok", r["error"]
    expected = (predict(net, x.float() / 255, "cpu") == 2).float().mean().item()  # their model on their images
    assert r["asr_before"] == pytest.approx(expected, abs=1e-6) and r["n_poison_test"] == 40
    assert r["der"] == 0.5  # no defense: nothing removed, nothing lost
    # A folder whose file lacks an image's target is refused in one line, not scored wrongly.
    extra = record / "bd_test_dataset" / "0" / "999.png"
    extra.write_bytes((record / "bd_test_dataset" / str(int(ds.y_test[0])) / "1.png").read_bytes())
    with pytest.raises(ConfigError, match="1 image.s. have no target label"):
        load_poisoned_test(record, 10)
