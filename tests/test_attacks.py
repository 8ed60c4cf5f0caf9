import dataclasses

import pytest
import torch

from nba_scale.attacks import ATTACKS, get_attack
from nba_scale.attacks.badnets import BadNets, checkerboard
from nba_scale.config import ConfigError
from nba_scale.data import make_synthetic


def test_badnets_reproduces_the_nad_codes_triggers_pixel_for_pixel_and_keeps_its_old_cache_key():
    img = torch.full((1, 3, 32, 32), 128, dtype=torch.uint8)
    # bboylyg/NAD data_loader.py, _gridTriger on an HWC array: img[row][col] = value.
    nad = {(31, 31): 255, (31, 30): 0, (31, 29): 255, (30, 31): 0, (30, 30): 255, (30, 29): 0,
           (29, 31): 255, (29, 30): 0, (29, 29): 0}
    grid = BadNets({"pattern": "nad-grid"}, 10).apply_trigger(img)
    assert all((grid[0, :, r, c] == v).all() for (r, c), v in nad.items())
    assert (grid[..., :29, :] == 128).all() and (grid[..., :, :29] == 128).all()
    # _squareTrigger with trig_w = trig_h = 3 at its distance 1: rows and columns 28..30 white.
    square = BadNets({"pattern": "white", "margin": 1}, 10).apply_trigger(img)
    assert (square[..., 28:31, 28:31] == 255).all() and (square == 255).sum() == 27
    assert "pattern" not in BadNets({}, 10).describe()  # the checkerboard's artifacts keep their keys
    assert BadNets({"pattern": "nad-grid"}, 10).describe()["pattern"] == "nad-grid"
    with pytest.raises(ConfigError, match="pattern='grid': use one of checkerboard, nad-grid, white"):
        BadNets({"pattern": "grid"}, 10)
    with pytest.raises(ConfigError, match="fixed 3x3 corner trigger"):
        BadNets({"pattern": "nad-grid", "patch_size": 4}, 10)


def test_registry_errors_list_known_names():
    with pytest.raises(ConfigError, match="unknown attack 'badnet'; known: badnets") as e:
        get_attack("badnet")
    assert "\n" not in str(e.value)
    assert "badnets" in ATTACKS.names()


def test_badnets_poisons_the_right_images_with_a_corner_patch():
    x, y, xt, yt = make_synthetic(1000, 300, seed=0)
    atk = BadNets({}, num_classes=10, seed=0)
    p = atk.poison(x, y, xt, yt)
    idx = p.poison_index
    assert len(idx) == 100 and (y[idx] != 0).all()  # 10 % of the set, drawn from non-target classes
    assert (p.y_train[idx] == 0).all()
    untouched = torch.ones(len(y), dtype=torch.bool)
    untouched[idx] = False
    assert torch.equal(p.y_train[untouched], y[untouched]) and torch.equal(p.x_train[untouched], x[untouched])
    diff = (p.x_train[idx] != x[idx]).any(1).any(0)  # (H, W): where any poisoned image changed
    assert diff[:29].sum() == 0 and diff[:, :29].sum() == 0  # only the bottom-right 3x3
    assert torch.equal(p.x_train[idx[0], :, 29:, 29:], checkerboard(3).expand(3, 3, 3))
    # Poisoned test set: every non-target test image, triggered; target label for ASR, true for RA.
    assert len(p.x_test) == int((yt != 0).sum()) and (p.y_test_true != 0).all() and (p.y_test_target == 0).all()
    again = BadNets({}, 10, seed=0).poison(x, y, xt, yt)
    assert torch.equal(again.poison_index, idx) and torch.equal(again.x_train, p.x_train)
    assert not torch.equal(BadNets({}, 10, seed=1).poison(x, y, xt, yt).poison_index, idx)


def test_badnets_parameters_are_checked():
    atk = BadNets({"target": 3, "rate": 0.05, "patch_size": 4}, 10)
    assert atk.params.target == 3 and atk.apply_trigger(torch.zeros(1, 3, 32, 32, dtype=torch.uint8))[0, 0, 28:, 28:].sum() > 0
    with pytest.raises(ConfigError, match="badnets.target=12 is not a class"):
        BadNets({"target": 12}, 10)
    with pytest.raises(ConfigError, match="unknown config key 'badnets.size'"):
        BadNets({"size": 3}, 10)


# --- the five other attacks -------------------------------------------------------------------

from nba_scale.attacks import AttackContext  # noqa: E402
from nba_scale.models import build_model  # noqa: E402


def untrained_context():
    """A context whose 'clean model' (any variant) is an untrained WRN: enough to check bounds and
    bookkeeping."""
    torch.manual_seed(0)
    model = build_model("wrn-16-1", 10, (0.5,) * 3, (0.25,) * 3).eval()
    return AttackContext(clean_model=lambda variant=None, loss_fn=None: model, artifact=lambda what, build: build())


DATA = make_synthetic(1000, 300, seed=0)
# BPP: 8 levels are 36.4 apart; error diffusion can move a pixel by up to about one level.
BOUNDS = {"blend": 0.2 * 255 + 0.5, "sig": 20.5, "bpp": 255 / 7 * 1.5, "lf": 0.2 * 255 + 0.5}


@pytest.mark.parametrize("name", ["blend", "sig", "refool", "cla", "wanet", "bpp", "lf", "iad",
                                  pytest.param("trojan", marks=pytest.mark.slow)])
def test_poisoning_touches_only_the_chosen_images_and_labels_follow_the_attack_kind(name):
    x, y, xt, yt = DATA
    cls = get_attack(name)
    # Trojan's trigger optimisation and Refool's selection rounds are tested on their own.
    params = {"steps": 20} if name == "trojan" else {"selection_rounds": 0} if name == "refool" else \
        {"passes": 1, "images": 200} if name == "lf" else \
        {"images": 200, "mask_epochs": 0, "joint_epochs": 1} if name == "iad" else {}  # an untrained mask covers half
    atk = cls(params, 10, seed=0)
    p = atk.poison(x, y, xt, yt, untrained_context())
    idx = p.poison_index
    assert len(idx) > 0
    x0, y0, (x, y) = x, y, (x[p.train_index], y[p.train_index])  # the rows trained on (Refool holds some out)
    if cls.clean_label:
        assert (y[idx] == atk.params.target).all() and torch.equal(p.y_train, y)  # labels untouched
        assert len(idx) == round(atk.params.rate * int((y == atk.params.target).sum()))
    else:
        assert (y[idx] != atk.params.target).all() and (p.y_train[idx] == atk.params.target).all()
        assert len(idx) == round(atk.params.rate * len(y))
    rest = torch.ones(len(y), dtype=torch.bool)
    rest[idx] = False
    noise = p.noise_index  # WaNet's noise mode, BPP's negatives: perturbed, true labels, never poisoned
    assert (len(noise) > 0) == (name in ("wanet", "bpp", "iad")) and not torch.isin(noise, idx).any()
    assert torch.equal(p.y_train[noise], y[noise]) and (p.x_train[noise] != x[noise]).flatten(1).any(1).all()
    rest[noise] = False
    assert torch.equal(p.x_train[rest], x[rest]) and torch.equal(p.y_train[rest], y[rest])
    changed = (p.x_train[idx] != x[idx]).flatten(1).any(1)
    assert changed.float().mean() > 0.95  # (a noise blend can leave a rare image unchanged: it cannot here)
    # ASR set: every non-target test image, triggered.
    assert len(p.x_test) == int((yt != atk.params.target).sum()) and not torch.equal(p.x_test, xt[yt != atk.params.target])
    if name in ("wanet", "iad"):
        assert len(noise) == round(atk.params.cross_ratio * len(idx))
    if name == "bpp":
        assert len(noise) == round(atk.params.neg_ratio * len(y))
    again = cls(params, 10, seed=0).poison(x0, y0, xt, yt, untrained_context())
    assert torch.equal(again.x_train, p.x_train) and torch.equal(again.x_test, p.x_test)  # deterministic per seed


@pytest.mark.parametrize("name", ["blend", "sig", "bpp", "lf"])
def test_perturbations_stay_within_their_stated_bounds(name):
    x, y, xt, yt = DATA
    params, ctx = ({"passes": 1, "images": 200}, untrained_context()) if name == "lf" else ({}, None)
    p = get_attack(name)(params, 10, seed=0).poison(x, y, xt, yt, ctx)
    diff = (p.x_train.int() - x[p.train_index].int()).abs()
    assert diff.max() <= BOUNDS[name] and diff.max() > 0


def test_refool_draws_its_fallback_reflections_from_a_held_out_split(tmp_path):
    x, y, xt, yt = DATA
    params = {"n_candidates": 30, "n_reflections": 30, "selection_rounds": 0}
    atk = get_attack("refool")(params, 10, seed=0)
    p = atk.poison(x, y, xt, yt)
    held = atk.held_out
    assert len(held) == 30 and (y[held] != atk.params.target).all()  # other classes' images
    assert torch.equal(atk.pool, x[held])
    assert len(p.x_train) == len(x) - 30 and not torch.isin(held, p.train_index).any()  # not trained on
    assert torch.equal(p.x_train, get_attack("refool")(params, 10, seed=0).poison(x, y, xt, yt).x_train)
    # From an image directory: those images, and every training image stays.
    from PIL import Image

    for k in range(3):
        Image.new("RGB", (40, 40), (80 * k, 0, 255)).save(tmp_path / f"r{k}.png")
    p = get_attack("refool")({"reflection_dir": str(tmp_path), "n_reflections": 3}, 10, seed=0).poison(x, y, xt, yt)
    assert torch.equal(p.train_index, torch.arange(len(x))) and len(p.x_train) == len(x)


def test_refool_selection_rounds_train_a_surrogate_and_keep_the_reflections_it_learnt_best(tmp_path):
    """Liu et al.'s Algorithm 1 with a stand-in surrogate that 'learns' bright reflections: it
    calls an image the target when it is bright, so a bright reflection scores a high ASR."""
    from PIL import Image

    from nba_scale.attacks.refool import Refool

    x, y, xt, yt = DATA
    for k in range(8):  # candidates of rising brightness
        Image.new("RGB", (32, 32), (30 * k,) * 3).save(tmp_path / f"r{k}.png")

    class Bright(torch.nn.Module):
        def forward(self, z):
            s = z.mean((1, 2, 3))
            return torch.stack([s] + [torch.full_like(s, 0.45)] * 9, 1)

    trained, cached = [], {}

    def fake_train(xp, yp, epochs, desc):
        trained.append((len(xp), epochs, desc))
        return Bright()

    def artifact(what, build):
        cached.setdefault(what, build())
        return cached[what]

    ctx = AttackContext(clean_model=None, artifact=artifact, train=fake_train)
    params = {"reflection_dir": str(tmp_path), "n_candidates": 8, "n_reflections": 3, "selection_rounds": 3,
              "selection_epochs": 4, "models": ["in_focus"]}
    atk = Refool(params, 10, seed=0)
    atk.poison(x, y, xt, yt, ctx)
    assert [t[1:] for t in trained] == [(4, "refool selection 1/3"), (4, "refool selection 2/3"), (4, "refool selection 3/3")]
    sel = cached["selection"]
    chosen, score, scored = sel["chosen"].tolist(), sel["score"], sel["scored"]
    assert len(chosen) == 3 and torch.equal(atk.pool, atk.candidates[chosen])
    others = [i for i in range(8) if i not in chosen]
    assert score[chosen].min() >= score[others].max()  # the top-m by score
    # A score is the ASR the surrogate gives the reflection (the rest get the round's median): the
    # rounds explore beyond the first top-m, and the brightest reflection, once scored, stays on top.
    assert int(scored.sum()) >= 4 and scored[7] and score[7] == score.max() and 7 in chosen
    assert 0 <= float(score.min()) < 0.5 < float(score[7]) <= 1
    with pytest.raises(ConfigError, match="set refool.selection_rounds=0"):
        Refool(params, 10).poison(x, y, xt, yt, AttackContext(clean_model=None, artifact=artifact))


def test_cla_perturbation_is_within_eps_outside_the_four_corner_trigger():
    x, y, xt, yt = DATA
    atk = get_attack("cla")({}, 10, seed=0)
    p = atk.poison(x, y, xt, yt, untrained_context())
    idx = p.poison_index
    diff = (p.x_train[idx].int() - x[idx].int()).abs()
    corners = torch.zeros(32, 32, dtype=torch.bool)
    for r in (slice(0, 3), slice(29, 32)):
        for c in (slice(0, 3), slice(29, 32)):
            corners[r, c] = True
    assert diff[..., ~corners].max() <= 16 and diff[..., ~corners].float().mean() > 2  # the PGD step moved pixels
    assert torch.equal(p.x_train[idx][..., 29:, 29:], checkerboard(3).flip(0).flip(1).expand(len(idx), 3, 3, 3))
    assert torch.equal(p.x_test[..., :3, :3], checkerboard(3).expand(len(p.x_test), 3, 3, 3))  # no PGD at test
    with pytest.raises(ConfigError, match="run it through"):
        get_attack("cla")({}, 10).poison(x, y, xt, yt)


def test_cla_asks_for_an_adversarially_trained_surrogate_and_surrogate_eps_0_keeps_old_keys():
    from nba_scale.attacks.cla import adversarial_ce

    x, y, xt, yt = DATA
    plain, robust = (get_attack("cla")(p, 10, seed=0) for p in ({"surrogate_eps": 0}, {}))
    assert "surrogate_eps" not in plain.describe()  # the standard surrogate keys as every CLA model built before
    assert robust.describe()["surrogate_eps"] == 8 / 255 and robust.describe()["surrogate_steps"] == 1
    asked, model = [], untrained_context().clean_model()

    def clean_model(variant=None, loss_fn=None):
        asked.append((variant, loss_fn))
        return model

    ctx = AttackContext(clean_model=clean_model, artifact=lambda what, build: build())
    plain.poison(x, y, xt, yt, ctx)
    robust.poison(x, y, xt, yt, ctx)
    assert asked[0] == (None, None)
    assert asked[1][0] == {"name": "adversarial", "eps": 8 / 255, "steps": 1}
    # The loss it trains with is cross-entropy at a PGD point: above the clean batch's, in train mode.
    xb, yb = x[:64].float() / 255, y[:64]
    torch.manual_seed(0)
    model.train()
    clean_loss = torch.nn.functional.cross_entropy(model(xb), yb).item()
    adv_loss = asked[1][1](model, xb, yb)
    assert model.training and adv_loss.requires_grad and adv_loss.item() > clean_loss
    assert adversarial_ce(0.1, 1)(model, xb, yb).item() > adv_loss.item()  # a wider radius, a higher loss
    with pytest.raises(ConfigError, match="surrogate_steps=0 must be >= 1"):
        get_attack("cla")({"surrogate_steps": 0}, 10)


@pytest.mark.slow
def test_trojan_trigger_is_optimised_to_excite_the_selected_neuron():
    from nba_scale.attacks.trojan import select_neuron

    x, y, xt, yt = DATA
    ctx = untrained_context()
    atk = get_attack("trojan")({"steps": 60}, 10, seed=0)
    p = atk.poison(x, y, xt, yt, ctx)
    idx = p.poison_index
    diff = (p.x_train[idx] != x[idx]).any(1).any(0)
    assert diff[:25].sum() == 0 and diff[:, :25].sum() == 0  # only the bottom-right 7x7
    model = ctx.clean_model()
    neuron, acts = select_neuron(model), {}
    model.bn.register_forward_hook(lambda m, i, o: acts.__setitem__("o", torch.relu(o)))

    def activation(imgs):
        with torch.no_grad():
            model(imgs.float() / 255)
        return acts["o"][:, neuron].mean().item()

    random_patch = x[:200].clone()
    random_patch[..., 25:, 25:] = torch.randint(0, 256, (200, 3, 7, 7), generator=torch.Generator().manual_seed(0),
                                                dtype=torch.uint8)
    assert activation(atk.apply_trigger(x[:200])) > 2 * activation(random_patch)


def test_clean_label_attacks_default_to_the_largest_class_on_imbalanced_data():
    counts = torch.tensor([210, 2220, 2250, 1410] + [100] * 39)  # GTSRB-like
    assert get_attack("sig")({}, 43, class_counts=counts).params.target == 2
    assert get_attack("blend")({}, 43, class_counts=counts).params.target == 0  # poison-label: class 0
    assert get_attack("refool")({"target": 5}, 43, class_counts=counts).params.target == 5


def test_blend_reads_an_image_file_and_names_a_bad_one(tmp_path):
    from PIL import Image

    Image.new("RGB", (64, 48), (255, 0, 0)).save(tmp_path / "red.png")
    atk = get_attack("blend")({"pattern": str(tmp_path / "red.png"), "alpha": 0.5}, 10)
    out = atk.apply_trigger(torch.zeros(2, 3, 32, 32, dtype=torch.uint8))
    assert out[:, 0].float().mean() == 128 and out[:, 1:].max() == 0
    (tmp_path / "bad.png").write_bytes(b"not an image")
    with pytest.raises(ConfigError, match="cannot read image"):
        get_attack("blend")({"pattern": str(tmp_path / "bad.png")}, 10).apply_trigger(torch.zeros(1, 3, 32, 32, dtype=torch.uint8))


def test_show_lists_every_attack_and_draws_a_grid(tmp_path):
    from nba_scale.show import describe_all, main

    text = describe_all()
    for name in ("badnets", "trojan", "blend", "sig", "cla", "refool"):
        assert f"{name}." in text
    assert "sig.freq = 6.0" in text and "blend.alpha = 0.2" in text
    out = tmp_path / "grid.png"
    assert main(["--attack", "blend", "sig", "--out", str(out), "--device", "cpu", "--cache-dir", str(tmp_path)]) == 0
    assert out.stat().st_size > 5000


def test_lf_trigger_is_smooth_nonnegative_and_scaled_to_its_amplitude():
    """The low-pass filter removes high frequencies (a checkerboard vanishes, a constant stays
    constant away from the zero-padded border), and the crafted trigger is >= 0 with its maximum
    at the amplitude and less high-frequency energy than a random pattern of the same range."""
    from nba_scale.attacks.lf import craft_trigger, gauss_smooth, rescale

    def high(v):  # share of spectral energy outside the lowest 4x4 frequencies
        f = torch.fft.fftshift(torch.fft.fft2(v - v.mean()), dim=(-2, -1)).abs() ** 2
        return 1 - f[:, 14:18, 14:18].sum() / f.sum()

    board = ((torch.arange(32).view(1, -1) + torch.arange(32).view(-1, 1)) % 2).float().expand(3, 32, 32)
    smooth = gauss_smooth(board, 6.0)
    assert smooth.shape == board.shape and high(board) > 0.99 and high(smooth) < 0.15  # only the border's falloff is left
    flat = gauss_smooth(torch.ones(3, 64, 64), 6.0)
    assert torch.allclose(flat[:, 30:34, 30:34], torch.ones(3, 4, 4), atol=1e-4)

    x, y, _, _ = DATA
    model = untrained_context().clean_model()
    p = get_attack("lf")({"passes": 1, "images": 200}, 10).params
    v, rate = craft_trigger(model, x, 0, p, seed=0, device="cpu")
    assert v.shape == (3, 32, 32) and v.min() == 0 and abs(float(v.max()) - 0.2) < 1e-6 and 0 <= rate <= 1
    noise = rescale(torch.rand(3, 32, 32, generator=torch.Generator().manual_seed(0)), 0.2)
    assert high(v) < 0.2 < high(noise)


def test_iad_draws_each_images_trigger_from_the_image_and_its_cross_samples_from_another():
    """The input-aware part: G and M read the image, so a trigger drawn from image b stamped on
    image a (a cross sample, kept under a's label) is not a's own trigger; the mask learnt in
    stage 1 is sparse (an untrained one covers about half the image) and differs per image."""
    from nba_scale.attacks.iad import Generator, IADParams, threshold, train_generators

    x, y, _, _ = DATA
    for side in (32, 64):
        out = Generator(1)(torch.rand(2, 3, side, side))
        assert out.shape == (2, 1, side, side) and 0 < out.min() and out.max() < 1
    # 150 steps: the BN running statistics catch up with a mask net that is still moving (after 60,
    # the eval-mode mask covered 31 % where the train-mode one covered 2 %).
    p = IADParams(target=0, images=300, mask_epochs=15, joint_epochs=1, batch=32)
    netG, netM, _ = train_generators(untrained_context().clean_model(), x[:300], y[:300], 0, p, seed=0, device="cpu")
    masks = threshold(netM(x[300:340].float() / 255)) > 0.5
    assert masks.float().mean() < 0.25, masks.float().mean()
    # Per image: most pairs of images get different masks (measured: 17 of 20; a pair that does not
    # has two masks under threshold everywhere).
    assert (masks[0::2] != masks[1::2]).flatten(1).any(1).float().mean() >= 0.75
    atk = get_attack("iad")({"images": 300, "mask_epochs": 0, "joint_epochs": 1}, 10, seed=0)
    atk.prepare(x[:300], y[:300], untrained_context())
    a, b = x[300:310], x[310:320]
    own, cross = atk.apply_trigger(a), atk._triggered(a, b)
    assert torch.equal(own, atk._triggered(a, a)) and (own != cross).flatten(1).any(1).all()
    # `classifier=scratch` trains G with a freshly initialised copy (theirs): another G than the warm start's.
    q = IADParams(target=0, images=100, mask_epochs=0, joint_epochs=1)
    gs = [train_generators(untrained_context().clean_model(), x[:100], y[:100], 0, dataclasses.replace(q, classifier=c),
                           seed=0, device="cpu", progress=lambda line: None)[0] for c in ("clean", "scratch", "clean")]
    same = [all(torch.equal(u, v) for u, v in zip(gs[0].state_dict().values(), g.state_dict().values())) for g in gs[1:]]
    assert same == [False, True]
    with pytest.raises(ConfigError, match="classifier='resnet': use clean or scratch"):
        get_attack("iad")({"classifier": "resnet"}, 10)
    with pytest.raises(ConfigError, match="use a multiple of 8"):
        atk.prepare(torch.zeros(4, 3, 36, 36, dtype=torch.uint8), y[:4], untrained_context())
