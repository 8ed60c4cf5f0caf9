"""Datasets as uint8 tensors, the defender's clean subset, and a device-side batch loader.

Every image set is held as uint8 (N, 3, 32, 32) tensors, loaded once per process (and kept across
Ray trials by `load_dataset`'s cache). Augmentation (4-pixel-pad random crop, optional horizontal
flip) runs batched on the training device, as airbench's CifarLoader does: no per-image PIL in any
training loop.

Dataset names: `synthetic`, `synthetic-hard`, `cifar10`, `gtsrb`, `npz:PATH`.
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

    def validate(self) -> None:
        require(self.val_size >= 0, f"val_size={self.val_size} must be an image count >= 0")
        for name in ("train_subset", "test_subset"):
            v = getattr(self, name)
            require(v is None or v > 0, f"{name}={v} must be a positive image count")
        for name in ("synthetic_train", "synthetic_test"):
            require(getattr(self, name) >= 10, f"{name}={getattr(self, name)} must be at least 10 (one per class)")


@dataclasses.dataclass
class Dataset:
    name: str
    x_train: torch.Tensor  # (N, 3, 32, 32) uint8
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


def load_poisoned_test(path: str | os.PathLike, num_classes: int, image_shape: tuple[int, ...] = (3, 32, 32)
                       ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """An attacker's own triggered test set (`--poisoned-test`): BackdoorBench's record folder
    (`convert.read_backdoorbench_test`), or an .npz with `x` (uint8 images,
    N x H x W x 3 or N x 3 x H x W, the dataset's size), `target` (the label ASR counts: one int,
    or one per image) and optionally `y` (the images' true labels, for RA; without it RA is NaN).
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
    require(tuple(xt.shape[1:]) == tuple(image_shape),
            f"{where}: its images are {xt.shape[2]}x{xt.shape[3]}, the dataset's are "
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
                   style: SyntheticStyle = SYNTHETIC_STYLES["synthetic"]):
    """Gabor "objects" on clutter: class = (orientation, spatial frequency), 5 x 2 = 10 classes.

    Each image holds one Gabor patch (an oriented grating under a Gaussian envelope) at a random
    position, with its own phase, size, contrast and colour, on a background of smooth random
    clutter plus pixel noise. The class is a local, oriented, frequency-specific structure to be
    found anywhere in the image, as objects are in natural images: a network must learn
    oriented filters and some translation invariance; no pixel or colour identifies the class.
    (A first version with image-wide gratings was so uniformly separable that a 3x3 BadNets patch
    was never learned: global evidence drowned the local trigger, which natural images don't do.)
    Flipping changes orientation (class), so the dataset's default is no horizontal flip.
    Deterministic per seed; train and test are disjoint draws from one stream.
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
    wavelength = torch.where(y < 5, long_, short) * (1 + (u(n) - 0.5) * style.wavelength_jitter)  # pixels
    cy, cx = 8 + 16 * u(n), 8 + 16 * u(n)  # patch centre, pixels
    sigma = between(style.sigma, u(n))
    r = torch.arange(32).float()
    dy, dx = r[None, :, None] - cy[:, None, None], r[None, None, :] - cx[:, None, None]  # (n,32,1),(n,1,32)
    proj = dx * torch.cos(theta)[:, None, None] + dy * torch.sin(theta)[:, None, None]
    envelope = torch.exp(-(dx ** 2 + dy ** 2) / (2 * sigma[:, None, None] ** 2))
    gabor = envelope * torch.cos(2 * math.pi * proj / wavelength[:, None, None] + 2 * math.pi * u(n, 1, 1))
    clutter = torch.nn.functional.interpolate(u(n, 3, 5, 5), size=(32, 32), mode="bicubic", align_corners=False)
    img = 0.25 + 0.5 * clutter * (0.3 + 0.4 * u(n, 1, 1, 1))
    img = img + between(style.contrast, u(n, 1, 1, 1)) * (0.5 + 0.5 * u(n, 3, 1, 1)) * gabor[:, None]
    img = img + style.noise * torch.randn(n, 3, 32, 32, generator=g)
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
    uint8 (N,32,32,3) images, one integer class index >= 0 per image, every test class among the
    training classes (the class count comes from the training labels)."""
    for split in ("train", "test"):
        x, y = arrays[f"x_{split}"], np.asarray(arrays[f"y_{split}"])
        if x.dtype != np.uint8 or x.ndim != 4 or x.shape[1:] != (32, 32, 3):
            raise ConfigError(f"{where}: x_{split} must be uint8 (N,32,32,3), got {x.dtype} {x.shape}")
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


def _load_cifar10(root: Path):
    from torchvision.datasets import CIFAR10

    def get(train: bool, download: bool):
        return CIFAR10(str(root), train=train, download=download)

    try:
        try:
            tr, te = get(True, False), get(False, False)
        except RuntimeError:
            tr, te = get(True, True), get(False, True)
    except Exception:
        raise _torchvision_offline_error("CIFAR-10", root, "the extracted folder cifar-10-batches-py/") from None
    arrays = dict(x_train=tr.data, y_train=np.array(tr.targets), x_test=te.data, y_test=np.array(te.targets))
    check_arrays(str(root), arrays)
    return arrays


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
        xtr, ytr, xte, yte = make_synthetic(cfg.synthetic_train, cfg.synthetic_test, seed, style=SYNTHETIC_STYLES[name])
        ds = Dataset(name, xtr, ytr, xte, yte, 10, (0.5,) * 3, (0.25,) * 3, False)
    elif name in ("cifar10", "gtsrb") or name.startswith("npz:"):
        if name == "cifar10":
            arrays, flip, stats = _load_cifar10(root), True, (CIFAR10_MEAN, CIFAR10_STD)
        elif name == "gtsrb":
            arrays, flip, stats = _load_gtsrb(root / "gtsrb"), False, (GTSRB_MEAN, GTSRB_STD)
        else:
            arrays, flip = _load_npz(name[4:])
            stats = None
        xtr, xte = _from_hwc(arrays["x_train"]), _from_hwc(arrays["x_test"])
        ytr = torch.as_tensor(arrays["y_train"], dtype=torch.int64)
        yte = torch.as_tensor(arrays["y_test"], dtype=torch.int64)
        if stats is None:  # measured on the training images themselves
            f = xtr[:20000].float() / 255
            stats = (tuple(f.mean((0, 2, 3)).tolist()), tuple(f.std((0, 2, 3)).tolist()))
        num_classes = int(ytr.max()) + 1  # check_arrays: every test class is a training class
        ds = Dataset(name, xtr, ytr, xte, yte, num_classes, stats[0], stats[1], flip)
    else:
        raise ConfigError(f"unknown dataset {name!r}; known: {', '.join(SYNTHETIC_STYLES)}, cifar10, gtsrb, npz:PATH")
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
        x, y, _, _ = make_synthetic(n, 0, seed + 1_000_003, style=SYNTHETIC_STYLES[ds.name])
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
