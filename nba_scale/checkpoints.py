"""Safe weight I/O: the model under test is untrusted, so nothing here ever unpickles.

Weights are written as safetensors (atomically, through `atomic.atomic_write`). Reading accepts
safetensors, or a PyTorch `.pt/.pth` state dict through `torch.load(weights_only=True)`, which
refuses pickled Python objects; that refusal becomes a one-line `CheckpointError`.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .atomic import atomic_write


class CheckpointError(ValueError):
    """A checkpoint that cannot be trusted or read; the message names the file and the fix."""


def save_weights(state: dict[str, torch.Tensor], path: str | os.PathLike, metadata: dict[str, str] | None = None) -> None:
    with atomic_write(path) as tmp:
        save_file({k: v.detach().cpu().contiguous() for k, v in state.items()}, str(tmp), metadata=metadata)


def load_weights(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {str(path)!r} not found")
    if path.suffix == ".safetensors":
        try:
            return load_file(str(path))
        except (SafetensorError, OSError, ValueError, RuntimeError) as e:
            raise CheckpointError(f"corrupt checkpoint {path}: {str(e).splitlines()[0]}; re-create or re-download it") from None
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:  # weights_only refusals are UnpicklingError; truncation is RuntimeError
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        if "weights_only" in str(e) or "Unsupported global" in str(e) or "pickle" in type(e).__name__.lower():
            raise CheckpointError(
                f"refusing to load {path}: it carries pickled Python objects, not just tensors; "
                f"save a plain state_dict (or convert it to .safetensors) and load that"
            ) from None
        raise CheckpointError(f"corrupt checkpoint {path}: {first}") from None
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{path} is not a state_dict of tensors; save model.state_dict() instead")
    return obj


def load_into(model: torch.nn.Module, path: str | os.PathLike) -> torch.nn.Module:
    state = load_weights(path)
    # Accept checkpoints saved from DataParallel/DDP wrappers.
    state = {k.removeprefix("module."): v for k, v in state.items()}
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as e:  # shape mismatches
        raise CheckpointError(f"{path} does not fit the model: {str(e).splitlines()[1].strip()}; "
                              f"check --arch and the dataset's class count") from None
    missing = [k for k in missing if k not in ("mean", "std")]  # older files without the input stats
    if missing or unexpected:
        raise CheckpointError(
            f"{path} does not fit the model ({len(missing)} missing keys e.g. {missing[:2]}, "
            f"{len(unexpected)} unexpected e.g. {unexpected[:2]}); check --arch and the dataset's class count"
        )
    return model
