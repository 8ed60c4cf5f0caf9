"""The defense contract: `repair(model, ctx) -> model`, given a small clean set (and a teacher)."""
from __future__ import annotations

import abc
import dataclasses
from typing import Any, Callable, ClassVar, Optional

import torch

from ..attacks.base import Attack
from ..config import ConfigError, build
from ..registry import Registry

DEFENSES: Registry["Defense"] = Registry("defense", "nba_scale.defenses")  # + plug-ins (registry.py)
register, get_defense = DEFENSES.register, DEFENSES.get


@dataclasses.dataclass
class DefenseContext:
    x_clean: torch.Tensor  # (N,3,H,W) uint8: the defender's clean subset
    y_clean: torch.Tensor
    num_classes: int
    flip: bool  # horizontal flip is a valid augmentation for this dataset
    accelerator: Any
    seed: int = 0
    teacher: Optional[torch.nn.Module] = None  # set when the defense declares needs_teacher
    attack: Optional[Attack] = None  # only for oracle ablations (true triggered samples)
    # Called after every defense epoch with (epoch, model, optimizer): evaluation, reporting.
    on_epoch_end: Optional[Callable[[int, torch.nn.Module, torch.optim.Optimizer], None]] = None
    # Resuming an interrupted defense: epochs already done and the optimizer's saved state.
    start_epoch: int = 0
    optimizer_state: Optional[dict] = None
    optimizer_states: Optional[list] = None  # a pack's: one per member (`repair_pack`)
    pack_mode: str = "auto"  # how a pack trains: auto, stacked or loop (nba_scale/stacking.py)


class Defense(abc.ABC):
    """Subclasses set `Config` (a dataclass; defaults from the method's paper or official code)."""

    name: ClassVar[str]
    Config: ClassVar[type]
    needs_teacher: ClassVar[bool] = False
    packable: ClassVar[bool] = False  # several configurations can train together (`repair_pack`)
    # The settings the members of a stacked pack share (one network, one loss: nba_scale/stacking.py);
    # None: the defense packs only as a loop.
    stacked_shared: ClassVar[Optional[tuple[str, ...]]] = None
    # What each preset (spec.PRESETS) sets for this defense over the preset's `defense.optim.epochs`:
    # a defense without epochs names what it shortens instead (ANP: {"quick": {"iterations": 1000}}).
    presets: ClassVar[dict[str, dict[str, Any]]] = {}

    def __init__(self, params: dict[str, Any] | None = None):
        self.cfg = build(self.Config, params, self.name)
        self.info: dict[str, Any] = {}  # what the defense did (FP: channels pruned), for the result row

    def restore(self, model: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
        """Load the state an interrupted run reported after its last epoch (see DefenseContext)."""
        model.load_state_dict(state)

    @property
    def epochs(self) -> int:
        optim = getattr(self.cfg, "optim", None)
        return optim.epochs if optim is not None else 0

    @abc.abstractmethod
    def repair(self, model: torch.nn.Module, ctx: DefenseContext) -> torch.nn.Module:
        """Return the repaired model (may modify `model` in place)."""

    @classmethod
    def repair_pack(cls, defenses: list["Defense"], models: list[torch.nn.Module], ctx: DefenseContext,
                    on_epoch_end=None) -> list:
        """Repair `models[k]` with `defenses[k]`, all together on the same batches; returns
        `training.Member`s (a member that diverged has `failed` set). Packable defenses only."""
        raise ConfigError(cannot_pack(cls.name))


def cannot_pack(name: str, flag: str = "") -> str:
    """Why defense `name` is refused as a pack, naming the defenses that do pack."""
    packable = ", ".join(n for n in DEFENSES.names() if get_defense(n).packable)
    return f"{flag}defense {name!r} cannot train as a pack; packable: {packable} (use --pack 1)"
