"""Datasets as uint8 tensors, the defender's clean subset, and a device-side batch loader.

Every image set is held as uint8 (N, 3, S, S) tensors of one square size S (32 for CIFAR and GTSRB,
64 for Tiny-ImageNet, any for an `.npz` or a folder; `data.image_size` resizes on load), loaded once
per process (and kept across Ray trials by `load_dataset`'s cache). Augmentation (4-pixel-pad random crop, optional horizontal
flip) runs batched on the training device, as airbench's CifarLoader does: no per-image PIL in any
training loop.

Dataset names: `synthetic`, `synthetic-hard`, `cifar10`, `cifar100`, `gtsrb`, `tiny-imagenet`,
`npz:PATH`, `folder:PATH` (an image folder: `train/<class>/*` beside `test/<class>/*` or
`val/<class>/*`, or Tiny-ImageNet's own layout; `image_folder` below).
"""
from __future__ import annotations

import dataclasses
import functools
import math
import os
from pathlib import Path
from typing import Iterator, Optional

import numpy as np
import torch

from .atomic import atomic_write
from .config import ConfigError, require

# Per-channel statistics for the model's input normalisation (the model normalises internally so
# that PGD budgets and triggers live in [0, 1] pixel space).
CIFAR10_MEAN, CIFAR10_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
GTSRB_MEAN, GTSRB_STD = (0.3403, 0.3121, 0.3214), (0.2724, 0.2608, 0.2669)
CIFAR100_MEAN, CIFAR100_STD = (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)
REAL = ("cifar10", "cifar100", "gtsrb", "tiny-imagenet")  # named real datasets (and npz:PATH, folder:PATH)


@dataclasses.dataclass
class DataConfig:
    data_dir: Optional[str] = None  # default: $NBA_DATA_DIR or ~/.cache/nba_scale/data
    train_subset: Optional[int] = None  # stratified, seeded subset of the training set (CPU budgets)
    test_subset: Optional[int] = None  # stratified, seeded subset of the test set
    synthetic_train: int = 4000  # synthetic dataset sizes
    synthetic_test: int = 1000
    flip: Optional[bool] = None  # None: the dataset's default (no flip for traffic signs)
    # Images of the selection split (`Dataset.x_val`), disjoint from the training subset (hence the
    # defender's clean set) and the test split: what a sweep selects on, so that what it reports
    # (on test) was not chosen on the same images. 0: none. Where they come from: `selection_split`.
    val_size: int = 0
    # Side of the square images in pixels. None: the dataset's own (synthetic data: 32). Real data
    # of another size is resized once on load (antialiased bilinear), e.g. Tiny-ImageNet to 32 for
    # a CPU budget; synthetic data is drawn at this size (objects scaled with it).
    image_size: Optional[int] = None

    def validate(self) -> None:
        require(self.val_size >= 0, f"val_size={self.val_size} must be an image count >= 0")
        require(self.image_size is None or 8 <= self.image_size <= 512,
                f"image_size={self.image_size} must be a side in pixels, 8..512 (or unset: the dataset's own)")
        for name in ("train_subset", "test_subset"):
            v = getattr(self, name)
            require(v is None or v > 0, f"{name}={v} must be a positive image count")
        for name in ("synthetic_train", "synthetic_test"):
            require(getattr(self, name) >= 10, f"{name}={getattr(self, name)} must be at least 10 (one per class)")


@dataclasses.dataclass
class Dataset:
    name: str
    x_train: torch.Tensor  # (N, 3, S, S) uint8
    y_train: torch.Tensor  # (N,) int64
    x_test: torch.Tensor
    y_test: torch.Tensor
    num_classes: int
    mean: tuple
    std: tuple
    flip: bool  # horizontal flip is a valid augmentation (not for traffic signs)
    x_val: Optional[torch.Tensor] = None  # the selection split (DataConfig.val_size), None without one
    y_val: Optional[torch.Tensor] = None
    val_source: str = ""  # where it came from: synthetic-draw | train-pool | test-spare | test-held-out
    n_train_full: int = 0  # training images before `data.train_subset` (the paper counts the defender's in these)


@dataclasses.dataclass
class PoisonedData:
    """What an attack makes of a Dataset (see attacks/base.py): the attacked training set and the
    triggered test set on which ASR and RA are measured."""
    x_train: torch.Tensor  # (N,3,H,W) uint8, clean images with the poisoned ones replaced
    y_train: torch.Tensor  # labels after poisoning
    poison_index: torch.Tensor  # indices of the poisoned training images (rows of x_train)
    x_test: torch.Tensor  # every non-target test image, triggered
    y_test_target: torch.Tensor  # the attack's target label (ASR)
    y_test_true: torch.Tensor  # the true label (RA: robust accuracy)
    # Row i of x_train is clean training image train_index[i]: all of them, unless the attack held
    # some out of the attacked training set (Refool's fallback reflections).
    train_index: torch.Tensor
    # Rows replaced by a perturbed copy under their true label (WaNet's noise mode, BPP's negative
    # samples): neither clean nor poisoned.
    noise_index: torch.Tensor = dataclasses.field(default_factory=lambda: torch.empty(0, dtype=torch.long))


def load_poisoned_test(path: str | os.PathLike, num_classes: int, image_shape: Optional[tuple[int, ...]] = None
                       ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """An attacker's own triggered test set (`--poisoned-test`): BackdoorBench's record folder
    (`convert.read_backdoorbench_test`), or an .npz with `x` (uint8 images,
    N x H x W x 3 or N x 3 x H x W, the dataset's size), `target` (the label ASR counts: one int,
    or one per image) and optionally `y` (the images' true labels, for RA; without it RA is NaN).
    `image_shape` (C, H, W): the dataset's, which the images must have (None: any).
    Returns (x, y_target, y_true) with y_true -1 where unknown. Anything else is a ConfigError
    naming the fix: a set the model cannot be scored on is never scored."""
    path = Path(path).expanduser()
    where = f"--poisoned-test {path}"
    require(path.exists(), f"--poisoned-test {str(path)!r} is not a file; give an .npz with x (uint8) and target, "
                           f"or a BackdoorBench record folder")
    if path.is_dir():  # BackdoorBench's own: RECORD/bd_test_dataset/<label>/<index>.png + attack_result.pt
        from .convert import read_backdoorbench_test

        arrays = read_backdoorbench_test(path)
    else:
        try:
            with np.load(path, allow_pickle=False) as z:
                arrays = {k: z[k] for k in z.files}
        except Exception as e:  # noqa: BLE001 -- a truncated zip raises BadZipFile, EOFError or zlib.error, not OSError
            raise ConfigError(f"cannot read {where} ({type(e).__name__}: {str(e)[:120]}); "
                              f"give an .npz written by numpy.savez with x (uint8) and target") from None
    require("x" in arrays and "target" in arrays,
            f"{where} holds {sorted(arrays)}; it needs x (uint8 images) and target (the label)")
    x = arrays["x"]
    require(x.dtype == np.uint8 and x.ndim == 4 and 3 in (x.shape[1], x.shape[3]),
            f"{where}: x must be uint8 N x H x W x 3 or N x 3 x H x W, got {x.dtype} {x.shape}")
    require(len(x) > 0, f"{where}: x holds no images")
    xt = torch.from_numpy(np.ascontiguousarray(x)) if x.shape[1] == 3 else _from_hwc(x)
    if image_shape is not None and tuple(xt.shape[1:]) != tuple(image_shape):
        raise ConfigError(f"{where}: its images are {xt.shape[2]}x{xt.shape[3]}, the dataset's are "
                          f"{image_shape[1]}x{image_shape[2]}; trigger images of the dataset's size")
    labels = {}
    for name in ("target", "y"):
        if name not in arrays:
            continue
        v = np.asarray(arrays[name])
        require(np.issubdtype(v.dtype, np.integer),
                f"{where}: {name} must hold integer class indices, got dtype {v.dtype}; store it as np.int64")
        v = torch.from_numpy(v.astype(np.int64)).flatten()
        labels[name] = v.expand(len(xt)).clone() if name == "target" and v.numel() == 1 else v
        require(len(labels[name]) == len(xt),
                f"{where}: x has {len(xt)} images but {name} has {len(labels[name])} labels")
        bad = labels[name][(labels[name] < 0) | (labels[name] >= num_classes)].tolist()
        if bad:
            raise ConfigError(f"{where}: {name} holds {bad[0]}; labels must lie in 0..{num_classes - 1}, "
                              f"the dataset's classes")
    true = labels.get("y", torch.full((len(xt),), -1, dtype=torch.long))
    return xt, labels["target"], true


def default_data_dir() -> Path:
    return Path(os.environ.get("NBA_DATA_DIR") or Path.home() / ".cache" / "nba_scale" / "data")


def _from_hwc(x: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(x)).permute(0, 3, 1, 2).contiguous()


# ---------------------------------------------------------------------------------------------
# synthetic


@dataclasses.dataclass(frozen=True)
class SyntheticStyle:
    """How hard a synthetic set is: how far each class's orientation and wavelength spread (the
    classes overlap once the orientation spread passes half the 36 degrees between neighbours),
    how visible the object is against the clutter, how large it is, and the pixel noise."""
    orientation_jitter: float  # full width of the uniform orientation spread, radians
    wavelengths: tuple[float, float]  # pixels, the two frequency classes
    wavelength_jitter: float  # relative full width of the wavelength spread
    contrast: tuple[float, float]  # object amplitude range
    sigma: tuple[float, float]  # Gaussian envelope radius range, pixels
    noise: float  # pixel noise std, [0, 1] units


SYNTHETIC_STYLES = {
    # Every class learnt perfectly at any budget: plumbing and implant tests.
    "synthetic": SyntheticStyle(math.pi / 18, (8.0, 4.0), 0.15, (0.25, 0.45), (4.0, 6.0), 0.04),
    # Neighbouring orientations overlap (spread 1.1x their spacing: ~4.5 % of images lie nearer the
    # wrong class), fainter and smaller objects, more noise: a BadNets WRN-16-1 at the main job's
    # budget (`--preset quick`: 4,000 images, 30 epochs) reached BA 86.6 %, ASR 100 % (seed 0);
    # spread 0.8x gave BA 98.4 %, 1.2x gave 79.5 % (docs/DEVELOPING.md). The main job's dataset.
    "synthetic-hard": SyntheticStyle(math.pi / 5 * 1.1, (6.0, 4.0), 0.3, (0.10, 0.30), (3.0, 5.0), 0.08),
}


def make_synthetic(n_train: int, n_test: int, seed: int = 0, num_classes: int = 10,
                   style: SyntheticStyle = SYNTHETIC_STYLES["synthetic"], size: int = 32):
    """Gabor "objects" on clutter: class = (orientation, spatial frequency), 5 x 2 = 10 classes.

    Each image holds one Gabor patch (an oriented grating under a Gaussian envelope) at a random
    position, with its own phase, size, contrast and colour, on a background of smooth random
    clutter plus pixel noise. The class is a local, oriented, frequency-specific structure to be
    found anywhere in the image, as objects are in natural images: a network must learn
    oriented filters and some translation invariance; no pixel or colour identifies the class.
    (A first version with image-wide gratings was so uniformly separable that a 3x3 BadNets patch
    was never learned: global evidence drowned the local trigger, which natural images don't do.)
    Flipping changes orientation (class), so the dataset's default is no horizontal flip.
    Deterministic per seed; train and test are disjoint draws from one stream. `size` (pixels) draws
    the same scene at another resolution: positions, envelopes and wavelengths scale with it, so a
    64-px set is the 32-px one sampled twice as finely (same classes, same difficulty).
    """
    assert num_classes == 10, "the synthetic family has exactly 10 classes"
    g = torch.Generator().manual_seed(10_007 + seed)
    n = n_train + n_test
    y = torch.arange(n) % num_classes
    y = y[torch.randperm(n, generator=g)]
    u = lambda *s: torch.rand(*s, generator=g)  # noqa: E731
    between = lambda lo_hi, v: lo_hi[0] + (lo_hi[1] - lo_hi[0]) * v  # noqa: E731
    theta = (y % 5).float() * (math.pi / 5) + (u(n) - 0.5) * style.orientation_jitter
    long_, short = style.wavelengths
    k = size / 32  # the styles' pixel figures are at 32 px
    wavelength = k * torch.where(y < 5, long_, short) * (1 + (u(n) - 0.5) * style.wavelength_jitter)  # pixels
    cy, cx = k * (8 + 16 * u(n)), k * (8 + 16 * u(n))  # patch centre, pixels
    sigma = k * between(style.sigma, u(n))
    r = torch.arange(size).float() - (k - 1) / 2  # pixel centres, in 32-px coordinates times k
    dy, dx = r[None, :, None] - cy[:, None, None], r[None, None, :] - cx[:, None, None]  # (n,S,1),(n,1,S)
    proj = dx * torch.cos(theta)[:, None, None] + dy * torch.sin(theta)[:, None, None]
    envelope = torch.exp(-(dx ** 2 + dy ** 2) / (2 * sigma[:, None, None] ** 2))
    gabor = envelope * torch.cos(2 * math.pi * proj / wavelength[:, None, None] + 2 * math.pi * u(n, 1, 1))
    clutter = torch.nn.functional.interpolate(u(n, 3, 5, 5), size=(size, size), mode="bicubic", align_corners=False)
    img = 0.25 + 0.5 * clutter * (0.3 + 0.4 * u(n, 1, 1, 1))
    img = img + between(style.contrast, u(n, 1, 1, 1)) * (0.5 + 0.5 * u(n, 3, 1, 1)) * gabor[:, None]
    img = img + style.noise * torch.randn(n, 3, size, size, generator=g)
    x = (img.clamp(0, 1) * 255).round().to(torch.uint8)
    return x[:n_train], y[:n_train], x[n_train:], y[n_train:]


# ---------------------------------------------------------------------------------------------
# real data


def _load_npz(path: str):
    p = Path(path).expanduser()
    if not p.is_file():
        raise ConfigError(f"npz dataset {str(p)!r} not found; give an existing file as --dataset npz:PATH")
    try:
        with np.load(p, allow_pickle=False) as z:
            arrays = {k: z[k] for k in ("x_train", "y_train", "x_test", "y_test")}
            flip = bool(z["hflip"]) if "hflip" in z.files else "gtsrb" not in p.name.lower()
    except KeyError as e:
        raise ConfigError(f"{p}: missing array {e}; an npz dataset needs x_train, y_train, x_test, y_test") from None
    except (ValueError, OSError) as e:
        raise ConfigError(f"{p}: not a readable npz of plain arrays ({e})") from None
    check_arrays(str(p), arrays)
    return arrays, flip


def check_arrays(where: str, arrays: dict[str, np.ndarray]) -> None:
    """Images and labels of a real dataset, as the loaders need them, or one line naming the fix:
    uint8 (N,S,S,3) images of one square size S for both splits, one integer class index >= 0 per
    image, every test class among the training classes (the class count comes from the training
    labels)."""
    for split in ("train", "test"):
        x, y = arrays[f"x_{split}"], np.asarray(arrays[f"y_{split}"])
        if x.dtype != np.uint8 or x.ndim != 4 or x.shape[3] != 3:
            raise ConfigError(f"{where}: x_{split} must be uint8 (N,S,S,3) RGB images, got {x.dtype} {x.shape}")
        if x.shape[1] != x.shape[2] or x.shape[1] < 8:
            raise ConfigError(f"{where}: x_{split}'s images are {x.shape[1]}x{x.shape[2]}; they must be square, "
                              f"8 px or more: set data.image_size=S to resize them on load")
        if len(x) == 0:
            raise ConfigError(f"{where}: x_{split} holds no images")
        if y.ndim != 1:
            raise ConfigError(f"{where}: y_{split} must hold one class index per image, shape (N,), got shape "
                              f"{y.shape}" + ("; for one-hot labels store y.argmax(1)" if y.ndim == 2 else ""))
        if not np.issubdtype(y.dtype, np.integer):
            raise ConfigError(f"{where}: y_{split} must hold integer class indices, got dtype {y.dtype}; "
                              f"store y.astype(np.int64) (class names: map them to 0..K-1 first)")
        if len(y) != len(x):
            raise ConfigError(f"{where}: x_{split} has {len(x)} images but y_{split} has {len(y)} labels")
        if y.min() < 0:
            raise ConfigError(f"{where}: y_{split} holds negative labels (min {y.min()}); classes are 0..K-1")
    # The class count is max + 1, so one stray label (1000 among 0..9) would silently build a
    # 1001-class model: every class 0..K-1 must have training images.
    if arrays["x_train"].shape[1:] != arrays["x_test"].shape[1:]:
        raise ConfigError(f"{where}: training images are {arrays['x_train'].shape[1]} px, test images "
                          f"{arrays['x_test'].shape[1]} px; give both splits one size (or set data.image_size=S)")
    present = np.unique(arrays["y_train"])
    if len(present) < 2:
        raise ConfigError(f"{where}: y_train holds one class ({present[0]}); a classifier needs two or more")
    absent = sorted(set(range(int(present[-1]) + 1)) - set(present.tolist()))
    if absent:
        raise ConfigError(f"{where}: y_train's labels run to {present[-1]} but no training image has class "
                          f"{', '.join(map(str, absent[:5]))}{' ...' if len(absent) > 5 else ''}; classes must be "
                          f"0..K-1, each with images (a stray label? map the classes to 0..K-1)")
    stray = sorted(set(np.unique(arrays["y_test"]).tolist()) - set(present.tolist()))
    if stray:
        raise ConfigError(f"{where}: y_test has classes no training image has ({', '.join(map(str, stray[:5]))}"
                          f"{' ...' if len(stray) > 5 else ''}); test classes must be training classes")


def _torchvision_offline_error(name: str, root: Path, expected: str) -> ConfigError:
    return ConfigError(
        f"{name} is not in {root} and cannot be downloaded (offline?): put {expected} there "
        f"(or point --data-dir / NBA_DATA_DIR at it), or convert it to an npz and use --dataset npz:PATH"
    )


def _load_torchvision_cifar(cls, name: str, root: Path, expected: str):
    """A torchvision CIFAR dataset's two splits as arrays: read from `root`, downloaded when it is
    not there and the network is, else one line saying what to put where."""
    def get(train: bool, download: bool):
        return cls(str(root), train=train, download=download)

    try:
        try:
            tr, te = get(True, False), get(False, False)
        except RuntimeError:
            tr, te = get(True, True), get(False, True)
    except Exception:
        raise _torchvision_offline_error(name, root, expected) from None
    arrays = dict(x_train=tr.data, y_train=np.array(tr.targets), x_test=te.data, y_test=np.array(te.targets))
    check_arrays(str(root), arrays)
    return arrays


def _load_cifar10(root: Path):
    from torchvision.datasets import CIFAR10

    return _load_torchvision_cifar(CIFAR10, "CIFAR-10", root, "the extracted folder cifar-10-batches-py/")


def _load_cifar100(root: Path):
    """CIFAR-100 (fine labels) from `root/cifar100.npz` if there is one, else torchvision's
    `cifar-100-python/` folder (their loader checks each file's MD5 before unpickling it, so only
    the published files are read). No download is attempted offline: the error says what to put."""
    if (root / "cifar100.npz").is_file():
        return _load_npz(str(root / "cifar100.npz"))[0]
    from torchvision.datasets import CIFAR100

    return _load_torchvision_cifar(CIFAR100, "CIFAR-100", root, "the extracted folder cifar-100-python/ (or "
                                   "cifar100.npz with x_train, y_train, x_test, y_test)")


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".ppm", ".webp")


def _images_under(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


def folder_layout(root: Path) -> dict[str, list[tuple[Path, str]]]:
    """The labelled images of an image folder, {"train": [(file, class name)], "test": [...]}, in
    one of the two layouts datasets are published in:

    - ImageFolder's (torchvision): `train/<class>/...` and `test/<class>/...` (or `val/<class>/...`),
      any depth below the class folder;
    - Tiny-ImageNet's: `wnids.txt`, `train/<wnid>/images/*.JPEG`, and the labelled validation set
      `val/images/*.JPEG` with `val/val_annotations.txt` (file, wnid, box) as the test split (its
      `test/` has no labels).
    Anything else is one line naming the layouts."""
    layouts = ("train/<class>/* with test/<class>/* or val/<class>/*, or Tiny-ImageNet's "
               "(wnids.txt, train/<wnid>/images, val/images + val/val_annotations.txt)")
    require(root.is_dir(), f"image folder {str(root)!r} not found; give a folder laid out as {layouts}")
    require((root / "train").is_dir(), f"{root} has no train/ folder; lay it out as {layouts}")
    train = [(f, c.name) for c in sorted(d for d in (root / "train").iterdir() if d.is_dir()) for f in _images_under(c)]
    annotations = root / "val" / "val_annotations.txt"
    if annotations.is_file() and (root / "val" / "images").is_dir():
        test = []
        for line in annotations.read_text().splitlines():
            parts = line.split("\t")
            if len(parts) >= 2:
                test.append((root / "val" / "images" / parts[0], parts[1]))
        missing = [f for f, _ in test if not f.is_file()]
        require(not missing, f"{annotations} names {len(missing)} images not in val/images (first: {missing[:1]})")
    else:
        split = next((root / s for s in ("test", "val") if (root / s).is_dir()), None)
        require(split is not None, f"{root} has train/ but no test/ or val/ folder; lay it out as {layouts}")
        test = [(f, c.name) for c in sorted(d for d in split.iterdir() if d.is_dir()) for f in _images_under(c)]
    require(train, f"{root}/train holds no images ({', '.join(IMAGE_SUFFIXES)}) in class folders; "
                   f"lay it out as {layouts}")
    require(test, f"{root} holds no labelled test images; lay it out as {layouts}")
    return {"train": train, "test": test}


def _decode(files: list[Path], size: Optional[int], where: str) -> np.ndarray:
    """uint8 (N,H,W,3); every image at `size` x `size` (PIL bilinear, which filters when it shrinks)
    if given, else all must share one size."""
    from PIL import Image

    out, first = [], None
    for f in files:
        with Image.open(f) as im:
            im = im.convert("RGB")
            if size is not None and im.size != (size, size):
                im = im.resize((size, size), Image.BILINEAR)
            a = np.asarray(im)
        if first is None:
            first = a.shape
        elif a.shape != first:
            raise ConfigError(f"{where}: images of several sizes ({first[1]}x{first[0]} and {a.shape[1]}x{a.shape[0]}, "
                              f"{f.name}); set data.image_size=S to resize them to S x S on load")
        out.append(a)
    return np.stack(out).astype(np.uint8)


def image_folder(root: Path, size: Optional[int] = None, cache: Optional[Path] = None) -> dict[str, np.ndarray]:
    """An image folder (`folder_layout`) decoded into the arrays an npz holds, classes numbered
    by their sorted names (ImageFolder's rule) and cached as an npz at `cache` (decoding
    Tiny-ImageNet's 110,000 JPEGs takes about a minute, once; a cache older than the folder's
    newest file or of another size is rebuilt)."""
    files = folder_layout(root)
    newest = max(f.stat().st_mtime for split in files.values() for f, _ in split)
    if cache is not None and cache.is_file() and cache.stat().st_mtime >= newest:
        arrays, _ = _load_npz(str(cache))
        if size is None or arrays["x_train"].shape[1] == size:
            return arrays
    classes = sorted({c for _, c in files["train"]})
    index = {c: i for i, c in enumerate(classes)}
    stray = sorted({c for _, c in files["test"]} - set(index))
    require(not stray, f"{root}: test classes {', '.join(stray[:5])} have no training images; test classes "
                       f"must be training classes")
    arrays = {}
    for split, pairs in files.items():
        arrays[f"x_{split}"] = _decode([f for f, _ in pairs], size, str(root))
        arrays[f"y_{split}"] = np.array([index[c] for _, c in pairs], dtype=np.int64)
    check_arrays(str(root), arrays)
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        with atomic_write(cache) as tmp, open(tmp, "wb") as f:
            np.savez(f, **arrays)
    return arrays


def _folder_cache(root: Path, size: Optional[int]) -> Path:
    import hashlib

    tag = hashlib.sha256(str(root.resolve()).encode()).hexdigest()[:16]
    return Path.home() / ".cache" / "nba_scale" / "folders" / f"{root.name}-{tag}-{size or 'native'}.npz"


def resize(x: torch.Tensor, size: int) -> torch.Tensor:
    """uint8 (N,3,H,W) -> (N,3,size,size), antialiased bilinear (torch's, as PIL's resize filters),
    in chunks so a 100,000-image set never needs a float copy of itself."""
    out = torch.empty((len(x), 3, size, size), dtype=torch.uint8)
    for i in range(0, len(x), 4096):
        f = torch.nn.functional.interpolate(x[i:i + 4096].float(), size=(size, size), mode="bilinear",
                                            align_corners=False, antialias=True)
        out[i:i + 4096] = f.round_().clamp_(0, 255).to(torch.uint8)
    return out


def _load_gtsrb(root: Path):
    """torchvision's GTSRB, resized once to 32x32 and cached beside it as gtsrb32.npz."""
    cached = root / "gtsrb32.npz"
    if cached.is_file():
        return _load_npz(str(cached))[0]
    from torchvision.datasets import GTSRB

    try:
        try:
            splits = {s: GTSRB(str(root), split=s, download=False) for s in ("train", "test")}
        except RuntimeError:
            splits = {s: GTSRB(str(root), split=s, download=True) for s in ("train", "test")}
    except Exception:
        raise _torchvision_offline_error(
            "GTSRB", root, "gtsrb/GTSRB/Training, gtsrb/GTSRB/Final_Test and gtsrb/GT-final_test.csv (torchvision layout)"
        ) from None
    arrays = {}
    for split, ds in splits.items():
        # One-time conversion at load, never in a training loop.
        xs = [np.asarray(ds[i][0].convert("RGB").resize((32, 32))) for i in range(len(ds))]
        arrays[f"x_{split}"] = np.stack(xs).astype(np.uint8)
        arrays[f"y_{split}"] = np.array([t for _, t in ds._samples], dtype=np.int64)
    check_arrays(str(root), arrays)
    with atomic_write(cached) as tmp, open(tmp, "wb") as f:
        np.savez(f, **arrays)
    return arrays


def stratified_indices(y: torch.Tensor, fraction: float | None = None, count: int | None = None,
                       seed: int = 0) -> torch.Tensor:
    """A seeded, class-stratified sample of indices (sorted), by fraction or by total count.

    Each class keeps round(fraction * n_c) images, at least one, so rare GTSRB classes survive
    a 1 % budget.
    """
    y = y.cpu()
    n = len(y)
    if count is not None:
        fraction = min(1.0, count / n)
    require(fraction is not None and 0 < fraction <= 1, f"clean_fraction={fraction} must be in (0, 1]")
    g = torch.Generator().manual_seed(7919 * seed + 17)
    keep = []
    for c in torch.unique(y).tolist():
        idx = torch.nonzero(y == c).flatten()
        k = max(1, int(round(fraction * len(idx))))
        keep.append(idx[torch.randperm(len(idx), generator=g)[:k]])
    return torch.sort(torch.cat(keep)).values


# The paper's defender holds 5 % of the training data: 2,500 of CIFAR-10's 50,000 images.
PAPER_CLEAN_SHARE = 0.05


def clean_fraction_for(ds: Dataset, images: int | str) -> float:
    """The clean fraction of the attacker's training set (after `data.train_subset`) that gives the
    defender `images` clean images, or `"paper"`: 5 % of the dataset's full training set, the
    paper's count (2,500 for CIFAR-10 whatever subset the attacker trained on). The clean set is
    then drawn as every clean set is (`stratified_indices`, seeded), so the teacher, the study and
    the Parquet partition stay keyed by a clean fraction; rows say how many images it was
    (`n_clean`: per-class rounding may move it by a few on unbalanced classes)."""
    n = len(ds.y_train)
    count = int(round(PAPER_CLEAN_SHARE * (ds.n_train_full or n))) if images == "paper" else int(images)
    require(count >= ds.num_classes,
            f"clean images {count}: fewer than the {ds.num_classes} classes; give at least {ds.num_classes}")
    require(count <= n, f"clean images {count}: the attacker's training set holds {n}; give at most {n} "
                        f"or raise data.train_subset")
    return count / n


@functools.lru_cache(maxsize=4)
def _load_cached(name: str, cfg_key: tuple, seed: int) -> Dataset:
    cfg = DataConfig(**dict(cfg_key))
    root = Path(cfg.data_dir) if cfg.data_dir else default_data_dir()
    if name in SYNTHETIC_STYLES:
        xtr, ytr, xte, yte = make_synthetic(cfg.synthetic_train, cfg.synthetic_test, seed, style=SYNTHETIC_STYLES[name],
                                            size=cfg.image_size or 32)
        ds = Dataset(name, xtr, ytr, xte, yte, 10, (0.5,) * 3, (0.25,) * 3, False)
    elif name in REAL or name.startswith(("npz:", "folder:")):
        stats = None  # None: measured on the training images themselves
        if name == "cifar10":
            arrays, flip, stats = _load_cifar10(root), True, (CIFAR10_MEAN, CIFAR10_STD)
        elif name == "cifar100":
            arrays, flip, stats = _load_cifar100(root), True, (CIFAR100_MEAN, CIFAR100_STD)
        elif name == "gtsrb":
            arrays, flip, stats = _load_gtsrb(root / "gtsrb"), False, (GTSRB_MEAN, GTSRB_STD)
        elif name == "tiny-imagenet":
            folder = root / "tiny-imagenet-200"
            if not folder.is_dir() and not (root / "tiny-imagenet64.npz").is_file():
                raise ConfigError(f"Tiny-ImageNet is not in {root}: put the extracted tiny-imagenet-200/ there (or "
                                  f"point --data-dir / NBA_DATA_DIR at it), or use --dataset npz:PATH / folder:PATH")
            arrays = (_load_npz(str(root / "tiny-imagenet64.npz"))[0] if not folder.is_dir()
                      else image_folder(folder, cache=root / "tiny-imagenet64.npz"))
            flip = True
        elif name.startswith("folder:"):
            folder = Path(name[7:]).expanduser()
            arrays, flip = image_folder(folder, cfg.image_size, _folder_cache(folder, cfg.image_size)), True
        else:
            arrays, flip = _load_npz(name[4:])
        xtr, xte = _from_hwc(arrays["x_train"]), _from_hwc(arrays["x_test"])
        if cfg.image_size and cfg.image_size != xtr.shape[-1]:
            xtr, xte = resize(xtr, cfg.image_size), resize(xte, cfg.image_size)
        ytr = torch.as_tensor(arrays["y_train"], dtype=torch.int64)
        yte = torch.as_tensor(arrays["y_test"], dtype=torch.int64)
        if stats is None:
            f = xtr[:20000].float() / 255
            stats = (tuple(f.mean((0, 2, 3)).tolist()), tuple(f.std((0, 2, 3)).tolist()))
        num_classes = int(ytr.max()) + 1  # check_arrays: every test class is a training class
        ds = Dataset(name, xtr, ytr, xte, yte, num_classes, stats[0], stats[1], flip)
    else:
        raise ConfigError(f"unknown dataset {name!r}; known: {', '.join(SYNTHETIC_STYLES)}, {', '.join(REAL)}, "
                          f"npz:PATH, folder:PATH")
    train_all, test_all = (ds.x_train, ds.y_train), (ds.x_test, ds.y_test)
    ds.n_train_full = len(ds.y_train)
    train_kept = test_kept = None
    if cfg.train_subset:
        train_kept = stratified_indices(ds.y_train, count=cfg.train_subset, seed=seed)
        ds.x_train, ds.y_train = ds.x_train[train_kept], ds.y_train[train_kept]
    if cfg.test_subset:
        test_kept = stratified_indices(ds.y_test, count=cfg.test_subset, seed=seed)
        ds.x_test, ds.y_test = ds.x_test[test_kept], ds.y_test[test_kept]
    if cfg.val_size:
        selection_split(ds, cfg, seed, train_all, train_kept, test_all, test_kept)
    if cfg.flip is not None:
        ds.flip = cfg.flip
    return ds


def selection_split(ds: Dataset, cfg: DataConfig, seed: int, train_all, train_kept: Optional[torch.Tensor],
                    test_all, test_kept: Optional[torch.Tensor]) -> None:
    """`cfg.val_size` images (stratified, seeded) that neither the attacker's model trained on nor
    the test split holds, into `ds.x_val`, from the first source that has them:

    - synthetic data: a fresh draw of the same generator (another seed's stream);
    - `train-pool`: training images outside the training subset (10,000 of CIFAR-10's 50,000
      leave 40,000); the defender's clean set is drawn from the subset, so it is disjoint too;
    - `test-spare`: test images outside the test subset;
    - `test-held-out`: else a part of the test split itself, which then shrinks by as much (and
      the artifacts, keyed by the test split they are scored on, are other ones than without).
    Fewer images are taken where a source has fewer than asked."""
    n = cfg.val_size
    if ds.name in SYNTHETIC_STYLES:
        x, y, _, _ = make_synthetic(n, 0, seed + 1_000_003, style=SYNTHETIC_STYLES[ds.name], size=ds.x_train.shape[-1])
        ds.x_val, ds.y_val, ds.val_source = x, y, "synthetic-draw"
        return
    for source, (x_all, y_all), kept in (("train-pool", train_all, train_kept), ("test-spare", test_all, test_kept)):
        if kept is None or len(kept) >= len(y_all):
            continue
        free = torch.ones(len(y_all), dtype=torch.bool)
        free[kept] = False
        pool = torch.nonzero(free).flatten()
        pick = pool[stratified_indices(y_all[pool], count=n, seed=seed + 31)]
        ds.x_val, ds.y_val, ds.val_source = x_all[pick], y_all[pick], source
        return
    held = stratified_indices(ds.y_test, count=min(n, len(ds.y_test) // 2), seed=seed + 31)
    rest = torch.ones(len(ds.y_test), dtype=torch.bool)
    rest[held] = False
    ds.x_val, ds.y_val, ds.val_source = ds.x_test[held], ds.y_test[held], "test-held-out"
    ds.x_test, ds.y_test = ds.x_test[rest], ds.y_test[rest]


def load_dataset(name: str, cfg: DataConfig | None = None, seed: int = 0) -> Dataset:
    """Load (once per process) a dataset by name. Synthetic data depends on `seed`; real data does
    not, except through the optional stratified subsets."""
    cfg = cfg or DataConfig()
    key = tuple(sorted(dataclasses.asdict(cfg).items()))
    return _load_cached(name, key, seed if name in SYNTHETIC_STYLES or cfg.train_subset or cfg.test_subset else 0)


# ---------------------------------------------------------------------------------------------
# device-side batches and augmentation


def augment(x: torch.Tensor, flip: bool, pad: int = 4, generator: torch.Generator | None = None,
            cutout: int = 0) -> torch.Tensor:
    """Random crop with zero padding + optional horizontal flip (+ `cutout`), on a whole uint8
    batch at once. `cutout` L > 0: one black square per image, centred anywhere, rows and columns
    [c - L//2, c + L//2) clipped to the image, as the NAD code's `Cutout(1, L)` (its teacher and
    NAD training use L = 3, a 2x2 hole)."""
    b, c, h, w = x.shape
    dev = x.device
    padded = torch.nn.functional.pad(x, (pad, pad, pad, pad))
    dy = torch.randint(0, 2 * pad + 1, (b,), device=dev, generator=generator)
    dx = torch.randint(0, 2 * pad + 1, (b,), device=dev, generator=generator)
    rows = (dy[:, None] + torch.arange(h, device=dev))[:, None, :, None]  # (B,1,H,1)
    cols = (dx[:, None] + torch.arange(w, device=dev))[:, None, None, :]  # (B,1,1,W)
    out = padded[torch.arange(b, device=dev)[:, None, None, None], torch.arange(c, device=dev)[None, :, None, None], rows, cols]
    if flip:
        mask = torch.rand(b, device=dev, generator=generator) < 0.5
        out = torch.where(mask[:, None, None, None], out.flip(3), out)
    if cutout:
        half = cutout // 2
        cy = torch.randint(0, h, (b, 1), device=dev, generator=generator)
        cx = torch.randint(0, w, (b, 1), device=dev, generator=generator)
        r, c = torch.arange(h, device=dev), torch.arange(w, device=dev)
        rows_in = (r >= cy - half) & (r < cy + half)  # (B, H)
        cols_in = (c >= cx - half) & (c < cx + half)  # (B, W)
        out = out.masked_fill((rows_in[:, :, None] & cols_in[:, None, :])[:, None], 0)
    return out


class Batches:
    """Yields (x float in [0,1], y) batches from uint8 tensors held on `device`.

    With `world > 1` each process takes a disjoint, equally sized shard of every epoch's shuffle
    (data parallel under `accelerate launch`).
    """

    def __init__(self, x: torch.Tensor, y: torch.Tensor, batch_size: int, device: torch.device | str,
                 shuffle: bool = True, augment: bool = False, flip: bool = True, seed: int = 0,
                 rank: int = 0, world: int = 1, cutout: int = 0):
        self.x, self.y = x.to(device), y.to(device)
        self.cutout = cutout
        self.batch_size, self.shuffle, self.aug, self.flip = batch_size, shuffle, augment, flip
        self.device = torch.device(device)
        self.rank, self.world = rank, world
        self.seed = seed
        self.gen = torch.Generator(device=self.device).manual_seed(seed)

    def set_epoch(self, epoch: int) -> None:
        """Make the epoch's order and augmentation a function of (seed, epoch) alone, so a run
        resumed at epoch k sees exactly the batches the uninterrupted run saw."""
        self.gen.manual_seed(self.seed * 1_000_003 + epoch)

    def __len__(self) -> int:
        per_rank = len(self.x) // self.world
        return max(1, math.ceil(per_rank / self.batch_size))

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        n = len(self.x)
        order = (torch.randperm(n, device=self.device, generator=self.gen) if self.shuffle
                 else torch.arange(n, device=self.device))
        per_rank = n // self.world if self.world > 1 else n
        order = order[self.rank * per_rank:(self.rank + 1) * per_rank]
        for start in range(0, len(order), self.batch_size):
            idx = order[start:start + self.batch_size]
            if len(idx) < 2 and self.aug:  # a batch of one breaks BatchNorm in train mode
                continue
            xb = self.x[idx]
            if self.aug:
                xb = augment(xb, self.flip, generator=self.gen, cutout=self.cutout)
            yield xb.float().div_(255), self.y[idx]
