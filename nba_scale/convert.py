"""Bring a backdoored model from another toolkit: read its checkpoint without running it, map its
layer names to ours, check every shape, write safetensors plus a JSON sidecar.

    python -m nba_scale.convert IN OUT.safetensors --from nad [--classes 10]
    python -m nba_scale.convert attack_result.pt OUT.safetensors --from backdoorbench --dataset cifar10
    python -m nba_scale.convert model.pth OUT.safetensors --from torchvision --arch preact-resnet18 \\
        --mean 0.4914 0.4822 0.4465 --std 0.247 0.243 0.261

then `python -m nba_scale.run --model OUT.safetensors ...` (the architecture comes from the file).
Formats (docs/CONVERT.md lists the exact key patterns):
- `nad`: the NAD authors' WideResNet (`block{1,2,3}.layer.{i}.{bn1,conv1,bn2,conv2,convShortcut}`,
  `conv1`, `bn1`, `fc`), fed raw [0, 1] pixels (mean 0, std 1); depth and width read from the keys.
- `backdoorbench`: BackdoorBench's `attack_result.pt` (the state dict under `model`, the
  architecture under `model_name`: preactresnet18 or vgg19_bn) or a bare state dict of those
  layouts; their inputs are normalised outside the model with the dataset's statistics
  (`--dataset cifar10 | gtsrb`, or `--mean/--std`).
- `torchvision`: a plain `model.state_dict()` whose names are already ours (`--arch`), trained
  with `transforms.Normalize(mean, std)` outside the model (`--mean/--std`, default ImageNet's).

Nothing is executed: a file of tensors is read with `torch.load(weights_only=True)`; one that
pickles whole objects (BackdoorBench's) is read by an allow-listed unpickler that rebuilds
tensors and plain containers and turns every other object into an inert placeholder that runs no
code. The normalisation goes into the weights (`mean`, `std` buffers), so the model behaves as in
its source on our [0, 1] inputs.
"""
from __future__ import annotations

import argparse
import codecs
import collections
import json
import os
import pickle
import re
import sys
from pathlib import Path
from typing import Any

import torch

from .atomic import atomic_write
from .checkpoints import CheckpointError, save_weights, sniff
from .config import ConfigError
from .models import build_model

FORMATS = ("nad", "backdoorbench", "torchvision")
# Dataset statistics the toolkits normalise with outside the model (BackdoorBench's
# get_dataset_normalization; torchvision's ImageNet default).
STATS = {"cifar10": ((0.4914, 0.4822, 0.4465), (0.247, 0.243, 0.261)), "gtsrb": ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0)),
         "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)), "raw": ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0))}
# BackdoorBench's `model_name`s with a counterpart here. Their VGG is torchvision's vgg19_bn (a 7x7
# pool, three linear layers); their "vgg16" is torchvision's vgg16 without BatchNorm, which
# nothing here matches (our vgg16-bn is kuangliu's CIFAR VGG, for --from torchvision).
BACKDOORBENCH_ARCHS = {"preactresnet18": "preact-resnet18", "vgg19_bn": "vgg19-bn"}


class _Inert:
    """What any pickled object other than a tensor or a plain container becomes: it keeps the
    arguments it was given and runs nothing."""

    def __init__(self, *args, **kwargs):
        self.args = args

    def __setstate__(self, state):
        self.state = state

    def __call__(self, *args, **kwargs):
        return type(self)(*args)


# `_codecs.encode` (str -> bytes, nothing else) is how pickle protocol 2, torch.save's, writes bytes;
# torch's own weights_only loader allows it too.
_ALLOWED = {("collections", "OrderedDict"): collections.OrderedDict, ("builtins", "set"): set,
            ("builtins", "frozenset"): frozenset, ("builtins", "slice"): slice, ("torch", "Size"): torch.Size,
            ("_codecs", "encode"): codecs.encode}


class _TensorsOnly(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if (module, name) in _ALLOWED:
            return _ALLOWED[(module, name)]
        if module == "torch._utils" and name in ("_rebuild_tensor_v2", "_rebuild_parameter",
                                                 "_rebuild_parameter_with_state"):
            return getattr(torch._utils, name)
        if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
            return getattr(torch, name)
        return type(f"Inert[{module}.{name}]", (_Inert,), {})


class _TensorsOnlyPickle:
    """A `pickle_module` for torch.load: its unpickler is `_TensorsOnly`."""
    Unpickler = _TensorsOnly

    @staticmethod
    def load(f, **kwargs):
        return _TensorsOnly(f, **kwargs).load()


def read_checkpoint(path: Path) -> Any:
    if not path.is_file():
        raise CheckpointError(f"checkpoint {str(path)!r} not found")
    if sniff(path) == "safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    if sniff(path) != "torch":
        raise CheckpointError(f"{path} is neither safetensors nor a PyTorch file (torch.save)")
    try:
        return _torch_load(path, weights_only=True)
    except pickle.UnpicklingError:  # it pickles objects: read it again, tensors only
        try:
            # weights_only=False only to hand torch our own unpickler, which builds nothing but
            # tensors and plain containers (see _TensorsOnly).
            return _torch_load(path, weights_only=False, pickle_module=_TensorsOnlyPickle)
        except Exception as e:
            raise CheckpointError(f"corrupt checkpoint {path}: {str(e).strip().splitlines()[0]}") from None
    except Exception as e:
        raise CheckpointError(f"corrupt checkpoint {path}: {str(e).strip().splitlines()[0]}") from None


def _torch_load(path: Path, **kwargs) -> Any:
    with open(path, "rb") as f:  # a file object: torch.load would pick a loader from the file's name
        return torch.load(f, map_location="cpu", **kwargs)


def is_state(obj: Any) -> bool:
    return isinstance(obj, dict) and bool(obj) and all(isinstance(v, torch.Tensor) for v in obj.values())


def state_of(obj: Any, path: Path) -> dict[str, torch.Tensor]:
    """The state dict in a checkpoint: the object itself, or under `state_dict`, `model`, `net`."""
    if is_state(obj):
        found = obj
    else:
        found = next((obj[k] for k in ("state_dict", "model", "net", "model_state_dict")
                      if isinstance(obj, dict) and is_state(obj.get(k))), None)
    if found is None:
        keys = list(obj)[:6] if isinstance(obj, dict) else type(obj).__name__
        raise CheckpointError(f"{path} holds no state dict of tensors (top-level: {keys}); save model.state_dict()")
    return {k.removeprefix("module."): v for k, v in found.items()}


def map_nad(state: dict[str, torch.Tensor]) -> tuple[str, dict[str, torch.Tensor]]:
    """NAD's WideResNet -> ours: blockG.layer.I -> groups.(G-1).I, convShortcut -> shortcut, bn1 -> bn."""
    out, blocks = {}, set()
    for k, v in state.items():
        m = re.fullmatch(r"block([123])\.layer\.(\d+)\.(bn1|conv1|bn2|conv2|convShortcut)\.(.+)", k)
        if m:
            g, i, layer, rest = m.groups()
            blocks.add(int(i)) if g == "1" else None
            out[f"groups.{int(g) - 1}.{i}.{layer.replace('convShortcut', 'shortcut')}.{rest}"] = v
        elif k.startswith("bn1."):
            out["bn." + k[4:]] = v
        else:
            out[k] = v  # conv1.*, fc.*; anything else is reported unmapped by the check
    width = state.get("fc.weight")
    if not blocks or width is None:
        raise CheckpointError("not NAD's WideResNet layout: no block1.layer.N.* or fc.weight keys "
                              f"(first keys: {list(state)[:4]})")
    return f"wrn-{6 * len(blocks) + 4}-{width.shape[1] // 64}", out


def convert(src: Path, fmt: str, arch: str | None = None, classes: int | None = None,
            mean: tuple | None = None, std: tuple | None = None, dataset: str | None = None
            ) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(our state dict with `mean`/`std`, sidecar) from another toolkit's checkpoint."""
    if fmt not in FORMATS:
        raise ConfigError(f"unknown --from {fmt!r}; known: {', '.join(FORMATS)}")
    obj = read_checkpoint(src)
    state = state_of(obj, src)
    if fmt == "nad":
        found, state = map_nad(state)
        default_stats = STATS["raw"]
    elif fmt == "backdoorbench":
        name = obj.get("model_name") if isinstance(obj, dict) and isinstance(obj.get("model_name"), str) else None
        found = BACKDOORBENCH_ARCHS.get(name) if name else None
        if name and not found:
            raise ConfigError(f"BackdoorBench model {name!r} has no counterpart here; supported: "
                              f"{', '.join(BACKDOORBENCH_ARCHS)}")
        if found is None:  # a bare state dict: recognise the layout by its keys
            found = "vgg19-bn" if "classifier.6.weight" in state else "preact-resnet18"
        default_stats = STATS.get(dataset or "cifar10")
        if default_stats is None:
            raise ConfigError(f"--dataset {dataset!r}: known {', '.join(STATS)}; or give --mean and --std")
    else:
        if arch is None:
            raise ConfigError("--from torchvision needs --arch (wrn-D-W, preact-resnet18 or vgg16-bn)")
        found, default_stats = arch, STATS["imagenet"]
    arch = arch or found
    if arch != found:
        raise ConfigError(f"--arch {arch} but the checkpoint is a {found}")
    # A file that already carries our buffers knows its own normalisation.
    carried = [tuple(state[k].flatten().tolist()) if k in state else None for k in ("mean", "std")]
    mean, std = mean or carried[0] or default_stats[0], std or carried[1] or default_stats[1]
    head = next((state[k] for k in ("fc.weight", "linear.weight", "classifier.weight", "classifier.6.weight")
                 if k in state), None)
    if head is None or head.dim() != 2:
        raise CheckpointError(f"{src}: no linear classifier head (fc / linear / classifier / classifier.6 .weight) "
                              f"among its keys")
    classes = classes or head.shape[0]
    model = build_model(arch, classes, mean, std)
    ours = model.state_dict()
    unmapped = [k for k in state if k not in ours]
    missing = [k for k in ours if k not in state and k not in ("mean", "std")]
    if unmapped or missing:
        raise CheckpointError(f"{src} ({fmt}) does not map onto {arch}: unmapped keys {unmapped[:5]}"
                              f"{' ...' if len(unmapped) > 5 else ''}, missing {missing[:5]}"
                              f"{' ...' if len(missing) > 5 else ''}")
    wrong = [f"{k} {list(v.shape)} vs {list(ours[k].shape)}" for k, v in state.items() if v.shape != ours[k].shape]
    if wrong:
        raise CheckpointError(f"{src}: shapes differ from {arch} with {classes} classes: {'; '.join(wrong[:3])}")
    state = {k: v.to(ours[k].dtype) for k, v in state.items()}
    state["mean"], state["std"] = ours["mean"], ours["std"]
    model.load_state_dict(state)  # strict: every key placed
    sidecar = {"arch": arch, "classes": classes, "mean": list(mean), "std": list(std), "source": fmt,
               "from_file": str(src)}
    return state, sidecar


def _plain_int(v: Any) -> int | None:
    """An int from a pickle read by `_TensorsOnly`: a Python int, or a NumPy integer scalar, which
    arrives inert as numpy's `scalar(dtype, raw bytes)` and is decoded from its bytes here (never
    by running NumPy's reconstructor); None for anything else."""
    if isinstance(v, int) and not isinstance(v, bool):
        return v
    args = getattr(v, "args", ())
    if isinstance(v, _Inert) and type(v).__name__.endswith("multiarray.scalar]") and len(args) == 2 \
            and isinstance(args[1], bytes) and len(args[1]) in (1, 2, 4, 8):
        dtype = getattr(args[0], "args", ("",))[0]
        if isinstance(dtype, str) and dtype[:1] in ("i", "u"):
            return int.from_bytes(args[1], "little", signed=dtype[0] == "i")
    return None


def read_backdoorbench_test(folder: Path) -> dict[str, Any]:
    """BackdoorBench's triggered test set as `data.load_poisoned_test` takes it: {"x" (uint8 N x H x
    W x 3), "target", "y"}. Their attacks write it as `RECORD/bd_test_dataset/<true label>/<test
    index>.png` (utils/bd_dataset_v2.py, `poisonedCLSDataContainer`) and the label each image is
    scored against in `RECORD/attack_result.pt` (`bd_test` -> `bd_data_container` -> `data_dict`:
    {index: {"path", "other_info": [target, true label]}}), read here tensors-only like their
    models. `folder`: the record folder or its `bd_test_dataset/`."""
    import numpy as np
    from PIL import Image

    folder = Path(folder).expanduser()
    images = folder / "bd_test_dataset" if (folder / "bd_test_dataset").is_dir() else folder
    record = images.parent
    files = sorted((p for p in images.glob("*/*.png") if p.parent.name.isdigit() and p.stem.isdigit()),
                   key=lambda p: int(p.stem))
    if not files:
        raise ConfigError(f"--poisoned-test {folder}: no BackdoorBench test images (bd_test_dataset/<label>/<index>.png)"
                          f"; give their attack's record folder or an .npz with x and target")
    result = record / "attack_result.pt"
    if not result.is_file():
        raise ConfigError(f"--poisoned-test {folder}: {result} is missing; BackdoorBench keeps each image's target "
                          f"label there: copy the record folder whole")
    try:
        obj = read_checkpoint(result)
        entries = obj["bd_test"]["bd_data_container"]["data_dict"].values()
    except (CheckpointError, KeyError, TypeError, AttributeError):
        raise ConfigError(f"--poisoned-test {folder}: {result} holds no bd_test data_dict (BackdoorBench's "
                          f"attack_result.pt of bd_dataset_v2); give an .npz with x and target instead") from None
    targets: dict[tuple[int, int], int] = {}
    for e in entries:
        info = e.get("other_info") if isinstance(e, dict) else None
        path = Path(str(e.get("path", ""))) if isinstance(e, dict) else Path()
        target = _plain_int(info[0]) if isinstance(info, (list, tuple)) and info else None
        if target is not None and path.stem.isdigit() and path.parent.name.isdigit():
            targets[(int(path.parent.name), int(path.stem))] = target
    missing = [f for f in files if (int(f.parent.name), int(f.stem)) not in targets]
    if missing:
        raise ConfigError(f"--poisoned-test {folder}: {len(missing)} image(s) have no target label in {result} "
                          f"(first: {missing[0].relative_to(record)}); the folder and the file are of different runs")
    x = np.stack([np.asarray(Image.open(f).convert("RGB")) for f in files]).astype(np.uint8)
    y = np.array([int(f.parent.name) for f in files], dtype=np.int64)
    target = np.array([targets[(int(f.parent.name), int(f.stem))] for f in files], dtype=np.int64)
    return {"x": x, "target": target, "y": y}


def writable_target(path: Path, name: str) -> None:
    """`path` can be written (its folder exists or can be made, and is writable), checked before
    the work that would then be lost: the nearest existing ancestor must be a writable folder."""
    if path.is_dir():
        raise ConfigError(f"{name} {path} is a folder; give a file path such as {path / 'model.safetensors'}")
    above = path.parent
    while not above.exists() and above != above.parent:
        above = above.parent
    if not above.is_dir():
        raise ConfigError(f"{name} {path}: {above} is a file, not a folder; give a path in a folder")
    if not os.access(above, os.W_OK | os.X_OK):
        raise ConfigError(f"{name} {path}: {above} is not writable; give a path in a writable folder")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser("python -m nba_scale.convert", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("src", type=Path)
    p.add_argument("out", type=Path, help="the .safetensors to write (its sidecar: the same name, .json)")
    p.add_argument("--from", dest="fmt", required=True, choices=FORMATS)
    p.add_argument("--arch", default=None, help="our architecture name (torchvision: required)")
    p.add_argument("--classes", type=int, default=None, help="class count (default: the classifier's rows)")
    p.add_argument("--dataset", default=None, help=f"normalisation statistics by name: {', '.join(STATS)}")
    p.add_argument("--mean", type=float, nargs=3, default=None)
    p.add_argument("--std", type=float, nargs=3, default=None)
    args = p.parse_args(argv)
    try:
        writable_target(args.out, "OUT")
        if args.dataset and args.dataset not in STATS:
            raise ConfigError(f"--dataset {args.dataset!r}: known {', '.join(STATS)}")
        stats = STATS[args.dataset] if args.dataset and args.fmt != "backdoorbench" else (None, None)
        state, sidecar = convert(args.src, args.fmt, args.arch, args.classes,
                                 tuple(args.mean) if args.mean else stats[0],
                                 tuple(args.std) if args.std else stats[1], args.dataset)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    try:
        save_weights(state, args.out, metadata={k: json.dumps(v) for k, v in sidecar.items()})
        with atomic_write(args.out.with_suffix(".json")) as tmp:
            Path(tmp).write_text(json.dumps(sidecar, indent=1) + "\n")
    except OSError as e:
        print(f"error: cannot write OUT {args.out} ({e.strerror or e}); give a writable path", file=sys.stderr)
        return 2
    print(f"wrote {args.out} ({sidecar['arch']}, {sidecar['classes']} classes, mean {sidecar['mean']}, "
          f"std {sidecar['std']}); defend it with: python -m nba_scale.run --model {args.out} ...")
    return 0


if __name__ == "__main__":
    sys.exit(main())
