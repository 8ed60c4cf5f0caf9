import pickle

import pytest
import torch

from nba_scale.checkpoints import CheckpointError, load_into, load_weights, save_weights
from nba_scale.config import ConfigError
from nba_scale.models import WideResNet, build_model


def test_wrn_16_1_shapes_and_feature_taps():
    m = build_model("wrn-16-1", 10, (0.5,) * 3, (0.25,) * 3).eval()
    logits, feats = m(torch.rand(2, 3, 32, 32), features=True)
    assert logits.shape == (2, 10)
    assert [tuple(f.shape[1:]) for f in feats] == [(16, 32, 32), (32, 16, 16), (64, 8, 8)]
    assert sum(p.numel() for p in m.parameters()) == pytest.approx(175_000, rel=0.02)  # WRN-16-1: 0.17M
    assert m.last_conv.out_channels == 64
    with pytest.raises(ConfigError, match="6n\\+4"):
        WideResNet(depth=15)
    with pytest.raises(ConfigError, match="wrn-DEPTH-WIDTH"):
        build_model("resnet18", 10, (0,) * 3, (1,) * 3)


def test_safetensors_roundtrip_reproduces_outputs(tmp_path):
    a, b = WideResNet(16, 1, 43).eval(), WideResNet(16, 1, 43).eval()
    x = torch.rand(3, 3, 32, 32)
    save_weights(a.state_dict(), tmp_path / "m.safetensors")
    load_into(b, tmp_path / "m.safetensors")
    assert torch.equal(a(x), b(x))
    assert not list(tmp_path.glob("*.tmp"))  # nothing half-written left behind


class Payload:
    def __reduce__(self):  # what a malicious checkpoint does: run code when unpickled
        return (print, ("pwned",))


def test_pickle_payload_is_refused(tmp_path, capsys):
    path = tmp_path / "evil.pt"
    torch.save({"conv.weight": torch.zeros(1), "extra": Payload()}, path)
    with pytest.raises(CheckpointError, match="refusing to load .*pickled Python objects") as e:
        load_weights(path)
    assert "\n" not in str(e.value)
    assert "pwned" not in capsys.readouterr().out
    # A plain state_dict in .pt form is fine: weights_only unpickling allows tensors.
    torch.save(WideResNet().state_dict(), tmp_path / "ok.pt")
    load_into(WideResNet(), tmp_path / "ok.pt")


def test_corrupt_or_mismatched_checkpoints_get_clear_errors(tmp_path):
    (tmp_path / "bad.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    with pytest.raises(CheckpointError, match="corrupt checkpoint"):
        load_weights(tmp_path / "bad.safetensors")
    with pytest.raises(CheckpointError, match="not found"):
        load_weights(tmp_path / "nope.safetensors")
    save_weights(WideResNet(16, 1, 10).state_dict(), tmp_path / "ten.safetensors")
    with pytest.raises(CheckpointError, match="does not fit the model"):
        load_into(WideResNet(16, 1, 43), tmp_path / "ten.safetensors")
    with open(tmp_path / "raw.pt", "wb") as f:
        pickle.dump({"a": 1}, f)
    with pytest.raises(CheckpointError):
        load_weights(tmp_path / "raw.pt")
