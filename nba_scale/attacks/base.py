"""The attack contract: clean uint8 tensors in, poisoned training set and poisoned test set out."""
from __future__ import annotations

import abc
import dataclasses
from typing import Any, Callable, ClassVar, Optional

import torch

from ..config import build, key_fields, require
from ..data import PoisonedData
from ..registry import Registry

ATTACKS: Registry["Attack"] = Registry("attack", "nba_scale.attacks")  # + plug-ins (registry.py)
register, get_attack = ATTACKS.register, ATTACKS.get


# Trigger sizes in pixels (BadNets' and CLA's patches, TrojanNN's square) are given at 32 px, the
# size of the images their papers attack, and scale with the image: on 64-px images a 3x3 patch
# covers 6x6 (BackdoorBench resizes its 32-px trigger images to the data's resolution the same
# way). Unscaled, a 3x3 patch on 64-px synthetic data was not learnt at all (ASR 0.7 % after
# 8 epochs on 1,000 images; 6x6: see tests/test_larger_images.py).
REFERENCE_SIDE = 32


def scaled(pixels: int, side: int) -> int:
    """A trigger size given at 32 px, on images `side` pixels wide (at least one pixel; 0 stays 0)."""
    return 0 if pixels == 0 else max(1, round(pixels * side / REFERENCE_SIDE))


def stretch(pattern: torch.Tensor, size: int) -> torch.Tensor:
    """A (..., s, s) uint8 trigger drawn at 32 px, at `size` x `size` by nearest neighbour (each
    cell of a checkerboard grows, as BackdoorBench's resized grid trigger does)."""
    if pattern.shape[-1] == size:
        return pattern
    lead = pattern.shape[:-2]
    flat = pattern.reshape(1, -1, *pattern.shape[-2:]).float()
    return torch.nn.functional.interpolate(flat, size=(size, size), mode="nearest").to(torch.uint8).reshape(*lead, size, size)


@dataclasses.dataclass
class AttackParams:
    # All-to-one target label. None: class 0 for poison-label attacks; for clean-label attacks,
    # which can only poison target-class images, the largest class (on GTSRB class 0 has 210 of
    # 39,209 images, too few to poison; class 2 has 2,250).
    target: Optional[int] = None
    rate: float = 0.1  # poison-label: fraction of the training set; clean-label: of the target class
    # Settings added after an attack's models were first cached, at the values that reproduce the
    # older behaviour: keyed only when one differs (config.key_fields).
    added_later: ClassVar[dict] = {}

    def validate(self) -> None:
        require(0 < self.rate <= 1, f"rate={self.rate} must be in (0, 1]")
        require(self.target is None or self.target >= 0, f"target={self.target} must be a class index >= 0")


@dataclasses.dataclass
class AttackContext:
    """What an attack that learns from data may use (TrojanNN's trigger, CLA's perturbations).

    clean_model(variant=None, loss_fn=cross_entropy): a model trained on the clean training set
    with the backdoor recipe, built once and cached, in eval mode with frozen parameters; a
    `variant` (a dict naming another training loss, e.g. CLA's adversarial training, keyed into
    the cache) trains it with `loss_fn(model, x, y)` instead; artifact(what, build): tensors the
    attack computed, cached under the attack's parameters and the data's fingerprint
    (`build() -> dict[str, Tensor]`); train(x, y, epochs, desc): a fresh model trained on uint8
    images with the backdoor recipe for `epochs` epochs, in eval mode (Refool's surrogate).
    """
    clean_model: Callable[..., torch.nn.Module]
    artifact: Callable[[str, Callable[[], dict[str, torch.Tensor]]], dict[str, torch.Tensor]]
    device: torch.device = torch.device("cpu")
    train: Optional[Callable[[torch.Tensor, torch.Tensor, int, str], torch.nn.Module]] = None


class Attack(abc.ABC):
    """Subclasses set `Params` (a dataclass, defaults from the attack's paper), `clean_label`, and
    implement `apply_trigger`; `poison` and the poisoned test set come from here.

    Poison-label attacks pick `rate * N` training images among the non-target classes and relabel
    them to the target; clean-label attacks pick among target-class images and keep the labels.
    """

    name: ClassVar[str]
    Params: ClassVar[type[AttackParams]] = AttackParams
    clean_label: ClassVar[bool] = False
    # Training images the attacker keeps for itself (set by prepare): removed from the attacked
    # training set, never poisoned, so whatever it draws from them is a held-out split.
    held_out: Optional[torch.Tensor] = None
    # Bumped when an attack's poisoning changes under the same parameters, so cached models keyed
    # by describe() are rebuilt (Refool 1: fallback reflections held out of the training set).
    revision: ClassVar[int] = 0

    def __init__(self, params: dict[str, Any] | None, num_classes: int, seed: int = 0,
                 class_counts: Optional[torch.Tensor] = None):
        self.params = build(self.Params, params, self.name)
        if self.params.target is None:
            big = int(torch.argmax(class_counts)) if class_counts is not None else 0
            self.params.target = big if self.clean_label else 0
        require(self.params.target < num_classes,
                f"{self.name}.target={self.params.target} is not a class of this dataset (0..{num_classes - 1})")
        self.num_classes, self.seed = num_classes, seed

    @abc.abstractmethod
    def apply_trigger(self, x: torch.Tensor) -> torch.Tensor:
        """Triggered copies of a uint8 (N,3,H,W) batch; works on any device."""

    def on_device(self, key: Any, device: torch.device, make: Callable[[], torch.Tensor]) -> torch.Tensor:
        """`make()` on `device`, made and copied once per key: a trigger applied batch after batch
        (the oracle UDL ablation, the poisoned test set) costs no host-to-device copy per batch."""
        cache = self.__dict__.setdefault("_on_device", {})
        if (key, str(device)) not in cache:
            cache[(key, str(device))] = make().to(device)
        return cache[(key, str(device))]

    def prepare(self, x_train: torch.Tensor, y_train: torch.Tensor, ctx: Optional[AttackContext]) -> None:
        """Hook for attacks that learn something from the data first (e.g. an optimised trigger)."""

    def poison_images(self, x: torch.Tensor, y: torch.Tensor, ctx: Optional[AttackContext]) -> torch.Tensor:
        """The poisoned versions of the selected training images (default: the trigger alone)."""
        return self.apply_trigger(x)

    def noise_samples(self, x: torch.Tensor, y: torch.Tensor, poisoned: torch.Tensor
                      ) -> Optional[tuple[torch.Tensor, torch.Tensor]]:
        """(indices, images): training images, none of them in `poisoned`, that the attack replaces
        with a perturbed copy under their true label (WaNet's noise mode, BPP's negative samples),
        teaching the network that only the trigger itself means the target. Default: none."""
        return None

    def others(self, n: int, k: int, taken: torch.Tensor, salt: int) -> torch.Tensor:
        """k of the rows 0..n-1 outside `taken` and the held-out rows, seeded (sorted)."""
        free = torch.ones(n, dtype=torch.bool)
        free[taken] = False
        if self.held_out is not None:
            free[self.held_out] = False
        pool = torch.nonzero(free).flatten()
        g = torch.Generator().manual_seed(salt + self.seed)
        return torch.sort(pool[torch.randperm(len(pool), generator=g)[:min(k, len(pool))]]).values

    def needs_context(self, ctx: Optional[AttackContext]) -> AttackContext:
        require(ctx is not None, f"attack {self.name} learns from a clean model: run it through "
                                 f"nba_scale.run / run_trial or nba_scale.show")
        return ctx

    def select(self, y: torch.Tensor) -> torch.Tensor:
        p = self.params
        eligible = (y == p.target) if self.clean_label else (y != p.target)
        if self.held_out is not None:
            eligible[self.held_out] = False
        pool = torch.nonzero(eligible).flatten()
        base = len(pool) if self.clean_label else len(y)
        k = min(len(pool), int(round(p.rate * base)))
        g = torch.Generator().manual_seed(1_000_003 + self.seed)
        return torch.sort(pool[torch.randperm(len(pool), generator=g)[:k]]).values

    def poison(self, x_train: torch.Tensor, y_train: torch.Tensor, x_test: torch.Tensor,
               y_test: torch.Tensor, ctx: Optional[AttackContext] = None) -> PoisonedData:
        self.prepare(x_train, y_train, ctx)
        idx = self.select(y_train)
        x_p, y_p = x_train.clone(), y_train.clone()
        if len(idx):
            x_p[idx] = self.poison_images(x_train[idx], y_train[idx], ctx)
        if not self.clean_label:
            y_p[idx] = self.params.target
        noise = self.noise_samples(x_train, y_train, idx)
        noise_idx = torch.empty(0, dtype=torch.long)
        if noise is not None:
            noise_idx, x_p[noise[0]] = noise
        rows = torch.ones(len(y_train), dtype=torch.bool)
        if self.held_out is not None:
            rows[self.held_out] = False
            position = torch.cumsum(rows, 0) - 1  # of each row among the rows that stay
            idx, noise_idx = position[idx], position[noise_idx]
            x_p, y_p = x_p[rows], y_p[rows]
        keep = y_test != self.params.target  # ASR is measured on non-target images only
        xt = self.apply_trigger(x_test[keep])
        return PoisonedData(x_p, y_p, idx, xt, torch.full_like(y_test[keep], self.params.target), y_test[keep],
                            train_index=torch.nonzero(rows).flatten(), noise_index=noise_idx)

    def describe(self) -> dict[str, Any]:
        d = {"name": self.name, "clean_label": self.clean_label, "revision": self.revision,
             **dataclasses.asdict(self.params)}
        return key_fields(key_fields(d, {"revision": 0}), self.params.added_later)
