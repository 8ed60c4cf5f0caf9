"""Safe weight I/O: the model under test is untrusted, so nothing here ever unpickles.

Weights are written as safetensors (atomically, through `atomic.atomic_write`). Reading accepts
safetensors, or a PyTorch `.pt/.pth` state dict through `torch.load(weights_only=True)`, which
refuses pickled Python objects; that refusal becomes a one-line `CheckpointError`.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Optional

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from .atomic import atomic_write
from .config import ConfigError


class CheckpointError(ConfigError):
    """A checkpoint that cannot be trusted or read; the message names the file and the fix. Bad
    input like any other (exit code 2), so a ConfigError."""


def save_weights(state: dict[str, torch.Tensor], path: str | os.PathLike, metadata: dict[str, str] | None = None) -> None:
    with atomic_write(path) as tmp:
        save_file({k: v.detach().cpu().contiguous() for k, v in state.items()}, str(tmp), metadata=metadata)


def sniff(path: Path) -> str:
    """The file's format from its first bytes, whatever its name: "safetensors" (an 8-byte header
    length, then a JSON header), "torch" (a zip archive or a legacy pickle stream) or "unknown"."""
    with open(path, "rb") as f:
        head = f.read(9)
    if len(head) == 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") < path.stat().st_size:
        return "safetensors"
    if head[:4] == b"PK\x03\x04" or head[:1] == b"\x80":
        return "torch"
    return "unknown"


def saved_arch(path: str | os.PathLike) -> Optional[str]:
    """The architecture a safetensors file names in its metadata (`nba_scale.convert` writes it),
    or None: another format, no such entry, or a file that cannot be read (loading it says why)."""
    path = Path(path).expanduser()
    if not path.is_file() or sniff(path) != "safetensors":
        return None
    try:
        with safe_open(str(path), "pt") as f:
            arch = (f.metadata() or {}).get("arch")
    except (SafetensorError, OSError, ValueError):
        return None
    try:  # convert writes JSON values ("\"wrn-16-1\""), a trial's --save the bare name
        arch = json.loads(arch) if arch is not None else None
    except ValueError:
        pass
    return arch if isinstance(arch, str) else None


def load_tensors(path: str | os.PathLike) -> object:
    """A `torch.save`d file of tensors in plain containers (a state dict, an optimizer's state)
    through `torch.load(weights_only=True)`; a pickled object, a truncated or foreign file is a
    one-line `CheckpointError` (torch's own message advises `weights_only=False`: never here)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {str(path)!r} not found")
    try:
        with open(path, "rb") as f:  # a file object: torch.load would pick a loader from the file's name
            return torch.load(f, map_location="cpu", weights_only=True)
    except Exception as e:  # weights_only refusals are UnpicklingError; truncation is RuntimeError
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        if "weights_only" in str(e) or "Unsupported global" in str(e) or "pickle" in type(e).__name__.lower():
            raise CheckpointError(
                f"refusing to load {path}: it carries pickled Python objects, not just tensors; "
                f"save a plain state_dict (or convert it to .safetensors) and load that"
            ) from None
        raise CheckpointError(f"corrupt checkpoint {path}: {first}") from None


def load_weights(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {str(path)!r} not found")
    kind = sniff(path)
    if kind == "safetensors" or (kind == "unknown" and path.suffix == ".safetensors"):
        try:
            return load_file(str(path))
        except (SafetensorError, OSError, ValueError, RuntimeError) as e:
            raise CheckpointError(f"corrupt checkpoint {path}: {str(e).splitlines()[0]}; re-create or re-download it") from None
    if kind == "unknown":
        raise CheckpointError(f"{path} is neither safetensors nor a PyTorch file (torch.save); re-create or re-download it")
    obj = load_tensors(path)
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{path} is not a state_dict of tensors; save model.state_dict() instead")
    return obj


def convert_hint(state: dict[str, torch.Tensor]) -> str:
    """The `convert` command for a foreign state dict, its format guessed from its key names."""
    keys = list(state)
    if any(k.startswith("block1.layer.") for k in keys):  # the NAD authors' WideResNet
        fmt = "nad"
    elif "linear.weight" in keys or "features.0.weight" in keys:  # BackdoorBench's PreAct-ResNet18 / VGG
        fmt = "backdoorbench"
    else:
        fmt = "nad|backdoorbench|torchvision"
    return f"python -m nba_scale.convert IN OUT.safetensors --from {fmt}"


def load_into(model: torch.nn.Module, path: str | os.PathLike) -> torch.nn.Module:
    state = load_weights(path)
    # Accept checkpoints saved from DataParallel/DDP wrappers.
    state = {k.removeprefix("module."): v for k, v in state.items()}
    expected = model.state_dict()
    for k, v in state.items():
        if k in expected and tuple(v.shape) != tuple(expected[k].shape):
            raise CheckpointError(f"{path} does not fit the model: {k} has shape {list(v.shape)} in the file, "
                                  f"{list(expected[k].shape)} in the model; check --arch and the dataset's class count")
        if k in expected and expected[k].is_floating_point() and not v.is_floating_point():
            # Copied into float parameters they would load "fine" and score as broken logits.
            raise CheckpointError(f"{path}: {k} is {str(v.dtype).removeprefix('torch.')}, not floating point; "
                                  f"weights must be float32, float16 or bfloat16 (save the model's own state_dict)")
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if k not in ("mean", "std")]  # older files without the input stats
    if missing or unexpected:
        theirs = [k for k in state if k not in expected][:3]
        ours = [k for k in expected if k not in state and k not in ("mean", "std")][:3]
        raise CheckpointError(
            f"{path} does not fit the model: {len(unexpected)} of its {len(state)} keys are not the model's, "
            f"e.g. {theirs}, and {len(missing)} of the model's are missing, e.g. {ours}; a checkpoint from "
            f"another toolkit names its layers its own way: convert it to this layout first with "
            f"{convert_hint(state)}")
    return model
