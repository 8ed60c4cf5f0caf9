import numpy as np
import pytest
import torch

from conftest import toy_arrays
from nba_scale.config import ConfigError
from nba_scale.data import Batches, DataConfig, augment, load_dataset, make_synthetic, stratified_indices


def test_synthetic_is_deterministic_per_seed_and_balanced():
    a = make_synthetic(200, 50, seed=3)
    b = make_synthetic(200, 50, seed=3)
    c = make_synthetic(200, 50, seed=4)
    assert all(torch.equal(u, v) for u, v in zip(a, b))
    assert not torch.equal(a[0], c[0])
    x, y = a[0], a[1]
    assert x.dtype == torch.uint8 and x.shape == (200, 3, 32, 32)
    assert torch.bincount(y, minlength=10).min() >= 15


@pytest.mark.parametrize("name", ["synthetic", "synthetic-hard"])
def test_synthetic_classes_are_not_separable_by_colour(name):
    # Nearest class-mean colour must be near chance: the class lives in spatial structure.
    from nba_scale.data import SYNTHETIC_STYLES

    x, y, xt, yt = make_synthetic(2000, 1000, seed=0, style=SYNTHETIC_STYLES[name])
    colour = lambda im: im.float().mean((2, 3))  # noqa: E731
    means = torch.stack([colour(x[y == c]).mean(0) for c in range(10)])
    pred = torch.cdist(colour(xt), means).argmin(1)
    assert (pred == yt).float().mean() < 0.2


def test_the_hard_synthetic_set_is_its_own_dataset_with_fainter_noisier_objects():
    easy = load_dataset("synthetic", DataConfig(synthetic_train=500, synthetic_test=100), seed=2)
    hard = load_dataset("synthetic-hard", DataConfig(synthetic_train=500, synthetic_test=100), seed=2)
    assert hard.name == "synthetic-hard" and hard.num_classes == 10 and not hard.flip
    assert torch.equal(hard.y_train, easy.y_train) and not torch.equal(hard.x_train, easy.x_train)
    # Fainter objects in more noise: less structure above the pixel noise (mean |horizontal gradient|
    # is dominated by the object where it is strong, by the noise where it is faint).
    grad = lambda x: (x[..., 1:].float() - x[..., :-1].float()).abs().mean().item()  # noqa: E731
    assert grad(hard.x_train) > grad(easy.x_train)  # noise dominates
    again = load_dataset("synthetic-hard", DataConfig(synthetic_train=500, synthetic_test=100), seed=2)
    assert again is hard


@pytest.mark.parametrize("fraction", [0.01, 0.05, 0.1, 0.2, 1.0])
def test_clean_subset_is_stratified_and_seeded(fraction):
    y = torch.arange(1000) % 10
    idx = stratified_indices(y, fraction, seed=5)
    assert torch.equal(idx, stratified_indices(y, fraction, seed=5))
    counts = torch.bincount(y[idx], minlength=10)
    assert (counts == max(1, round(fraction * 100))).all()
    if fraction < 1:
        assert not torch.equal(idx, stratified_indices(y, fraction, seed=6))
    with pytest.raises(ConfigError):
        stratified_indices(y, 1.5)


def test_rare_classes_survive_a_small_fraction():
    y = torch.tensor([0] * 990 + [1] * 10)
    assert torch.bincount(y[stratified_indices(y, 0.01)]).tolist() == [10, 1]


def test_augment_crops_and_flips_only_when_allowed():
    x = torch.zeros(64, 3, 32, 32, dtype=torch.uint8)
    x[:, :, 10:20, 2:6] = 255  # a bar near the left edge: flipping moves it to the right half
    g = torch.Generator().manual_seed(0)
    no_flip = augment(x, flip=False, generator=g)
    cols = no_flip.float().mean((0, 1, 2))
    assert no_flip.shape == x.shape and cols[20:].sum() == 0  # shifts of <= 4 px, never mirrored
    flipped = augment(x, flip=True, generator=g)
    right = flipped[:, 0, :, 16:].flatten(1).amax(1) > 0
    assert 0.2 < right.float().mean() < 0.8  # about half mirrored
    shifts = {tuple(torch.nonzero(im[0])[0].tolist()) for im in no_flip}
    assert len(shifts) > 10  # crops differ per image


def test_cutout_blacks_out_one_hole_as_the_nad_codes_cutout_and_nothing_without_it():
    x = torch.full((2000, 3, 32, 32), 200, dtype=torch.uint8)
    holes = augment(x, flip=False, pad=0, generator=torch.Generator().manual_seed(0), cutout=3)
    dark = holes[:, 0] == 0
    assert torch.equal(dark, (holes == 0).all(1))  # every channel alike
    for im in dark[:200]:  # one axis-aligned hole, 2x2 (rows/cols c-1, c) or clipped at the top/left edge
        rows, cols = torch.nonzero(im.any(1)).flatten(), torch.nonzero(im.any(0)).flatten()
        assert im.sum() == len(rows) * len(cols) and 1 <= len(rows) <= 2 and 1 <= len(cols) <= 2
        assert rows.max() - rows.min() < 2 and cols.max() - cols.min() < 2
    # Centres uniform over the image: 30/32 of them (not on row or column 0) per axis give 2 px.
    assert abs(dark.sum((1, 2)).float().mean().item() - (1 + 31 / 32) ** 2) < 0.1
    g1, g2 = torch.Generator().manual_seed(1), torch.Generator().manual_seed(1)
    assert torch.equal(augment(x[:8], True, generator=g1), augment(x[:8], True, generator=g2, cutout=0))


def test_batches_shard_disjointly_and_cover_each_epoch():
    x = torch.arange(100, dtype=torch.uint8).view(100, 1, 1, 1).expand(100, 3, 2, 2).contiguous()
    y = torch.arange(100)
    seen = []
    for rank in range(2):
        b = Batches(x, y, 16, "cpu", seed=0, rank=rank, world=2)
        seen.append(torch.cat([yb for _, yb in b]))
    assert len(set(seen[0].tolist()) & set(seen[1].tolist())) == 0
    assert len(seen[0]) == len(seen[1]) == 50
    xb, yb = next(iter(Batches(x, y, 10, "cpu", shuffle=False)))
    assert xb.dtype == torch.float32 and xb.max() <= 1 and torch.equal(yb, torch.arange(10))


def test_npz_dataset_roundtrip_and_errors(tmp_path):
    arrays = toy_arrays()
    np.savez(tmp_path / "toy.npz", **arrays)
    ds = load_dataset(f"npz:{tmp_path / 'toy.npz'}")
    assert ds.num_classes == 4 and ds.x_train.shape == (40, 3, 32, 32) and ds.flip
    assert np.array_equal(ds.x_train[5].permute(1, 2, 0).numpy(), arrays["x_train"][5])
    np.savez(tmp_path / "gtsrb_toy.npz", **arrays)
    assert not load_dataset(f"npz:{tmp_path / 'gtsrb_toy.npz'}").flip  # traffic signs: no flip
    np.savez(tmp_path / "bad.npz", x_train=arrays["x_train"].astype(np.float32), y_train=arrays["y_train"],
             x_test=arrays["x_test"], y_test=arrays["y_test"])
    with pytest.raises(ConfigError, match=r"x_train must be uint8 \(N,S,S,3\) RGB images"):
        load_dataset(f"npz:{tmp_path / 'bad.npz'}")
    with pytest.raises(ConfigError, match="not found"):
        load_dataset(f"npz:{tmp_path / 'missing.npz'}")


def test_real_dataset_offline_says_where_to_put_files(tmp_path, monkeypatch):
    import torchvision.datasets.utils as u

    def no_network(*a, **k):
        raise OSError("network unreachable")

    monkeypatch.setattr(u, "download_url", no_network)
    monkeypatch.setattr(u, "download_and_extract_archive", no_network)
    with pytest.raises(ConfigError) as e:
        load_dataset("cifar10", DataConfig(data_dir=str(tmp_path)))
    msg = str(e.value)
    assert "cifar-10-batches-py" in msg and str(tmp_path) in msg and "npz:PATH" in msg and "\n" not in msg
    with pytest.raises(ConfigError, match="unknown dataset 'mnist'; known: synthetic, synthetic-hard, cifar10, cifar100, gtsrb, tiny-imagenet, npz:PATH, folder:PATH"):
        load_dataset("mnist")


def test_the_defenders_clean_set_in_images_counts_against_the_attackers_set_and_paper_against_the_full(tmp_path):
    from nba_scale.data import clean_fraction_for

    rng = np.random.default_rng(1)
    np.savez(tmp_path / "toy.npz", x_train=rng.integers(0, 255, (400, 32, 32, 3), dtype=np.uint8),
             y_train=np.arange(400) % 10, x_test=rng.integers(0, 255, (50, 32, 32, 3), dtype=np.uint8),
             y_test=np.arange(50) % 10)
    ds = load_dataset(f"npz:{tmp_path / 'toy.npz'}", DataConfig(train_subset=200), seed=3)
    assert (ds.n_train_full, len(ds.y_train)) == (400, 200)
    assert clean_fraction_for(ds, "paper") == 20 / 200  # 5 % of the 400, not of the attacker's 200
    f = clean_fraction_for(ds, 50)
    assert f == 0.25 and len(stratified_indices(ds.y_train, fraction=f, seed=3)) == 50
    with pytest.raises(ConfigError, match="holds 200; give at most 200 or raise data.train_subset"):
        clean_fraction_for(ds, 201)
    with pytest.raises(ConfigError, match="fewer than the 10 classes"):
        clean_fraction_for(ds, 9)
