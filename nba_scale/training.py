"""The one training loop. Backdoor training, teacher fine-tuning and every defense go through
`train()`; a defense supplies only its loss (and, if it needs one, an epoch hook).

Device placement, bf16 autocast and multi-GPU data parallelism (`accelerate launch`) come from
`accelerate.Accelerator`; the same code runs on a CPU-only machine. The hot loop does no
host-device sync: loss sums and the non-finite flag stay on the device until the epoch ends.
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import math
import os
import random
import sys
import time
from typing import Callable, ClassVar, Literal, Optional

import numpy as np
import torch
from tqdm.auto import tqdm

from .config import ConfigError, finite_positive, require
from .data import Batches

log = logging.getLogger("nba_scale")


class NonFiniteLoss(RuntimeError):
    """The loss became NaN or inf: the trial is marked failed with this reason."""


@dataclasses.dataclass
class OptimConfig:
    epochs: int
    lr: float
    batch_size: int
    weight_decay: float = 5e-4
    momentum: float = 0.9
    nesterov: bool = True
    schedule: Literal["cosine", "step", "constant"] = "cosine"
    milestones: tuple[int, ...] = ()  # `step`: epochs (0-based) at which lr is multiplied by gamma
    gamma: float = 0.1
    augment: bool = True  # random crop (+ flip where the dataset allows it)
    cutout: int = 0  # with augment: one black L x L-ish hole per image, as the NAD code's Cutout(1, L) (data.augment)
    grad_clip: Optional[float] = None  # max global L2 norm of the gradient (None: no clipping)
    # This stage's precision (None: the trial's). `bf16` inside an fp32 trial trains just this stage
    # under bf16 autocast, e.g. the attacker's model, which the defense only reads; the reverse is
    # refused (Accelerate wraps a bf16 trial's model forward in autocast for the whole process).
    precision: Optional[Literal["no", "bf16"]] = None
    # SGD (momentum, nesterov as above) or Adam (betas 0.9, 0.999; momentum and nesterov unused):
    # the unlearning defenses I-BAU and SAU train with Adam in their authors' code.
    optimizer: Literal["sgd", "adam"] = "sgd"
    added_later: ClassVar[dict] = {"cutout": 0}  # keyed only when set (config.key_fields)

    def validate(self) -> None:
        require(self.epochs >= 0, f"epochs={self.epochs} must be >= 0")
        require(self.batch_size >= 2, f"batch_size={self.batch_size} must be >= 2 (BatchNorm)")
        finite_positive("lr", self.lr)
        finite_positive("weight_decay", self.weight_decay, allow_zero=True)
        require(0 <= self.cutout <= 32, f"cutout={self.cutout} must be in 0..32 (0: none)")
        require(self.precision != "fp16", FP16_REFUSED)
        require(self.precision in (None, "no", "bf16"), f"precision={self.precision!r}: use no or bf16")
        require(self.optimizer in ("sgd", "adam"), f"optimizer={self.optimizer!r}: use sgd or adam")

    def lr_at(self, epoch: int) -> float:
        if self.schedule == "cosine":
            return self.lr * 0.5 * (1 + math.cos(math.pi * epoch / max(1, self.epochs)))
        if self.schedule == "step":
            return self.lr * self.gamma ** sum(epoch >= m for m in self.milestones)
        return self.lr


def nad_schedule(**changes) -> OptimConfig:
    """The defense schedule of the official NAD code, which NBA builds on and which every
    fine-tuning here follows (teacher, FT, NAD, ARGD, NBA): 20 epochs, SGD lr 0.1 for 2 epochs then
    0.01, nesterov momentum 0.9, weight decay 1e-4, batch 64. `changes` replace fields (the
    teacher's 10 epochs, NBA's and ARGD's gradient clip)."""
    return dataclasses.replace(OptimConfig(epochs=20, lr=0.1, batch_size=64, weight_decay=1e-4, schedule="step",
                                           milestones=(2,)), **changes)


def setup_run(seed: int, deterministic: bool = False) -> None:
    """Seed every RNG once per run or trial."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)


def resolve_device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    require(device in ("cpu", "cuda") or device.startswith("cuda:"), f"device={device!r}: use auto, cpu or cuda")
    require(device == "cpu" or torch.cuda.is_available(), f"device={device!r} but no CUDA GPU is visible; use --device cpu")
    return device


FP16_REFUSED = ("precision=fp16 is not supported: RNB and LNB sum squared Gram entries (4th powers of "
                "activations) that overflow fp16, and its GradScaler syncs with the host every step; use bf16 "
                "(fp32's range) or no")


FP32_STAGE_REFUSED = ("a stage at precision=no inside a bf16 trial is not supported (Accelerate keeps the trial's "
                      "autocast on the model); run the trial at precision=no and set backdoor.precision, "
                      "teacher.precision or <defense>.optim.precision to bf16 where you want it")


CPU_BF16_FLAGS = ("amx_bf16", "avx512_bf16")
CPUINFO = "/proc/cpuinfo"


@functools.cache
def cpu_bf16_native() -> Optional[bool]:
    """Whether this CPU has bf16 arithmetic (AMX or AVX512-BF16); None where it cannot tell."""
    try:
        with open(CPUINFO) as f:
            flags = next((ln for ln in f if ln.startswith("flags")), "").split()
    except OSError:
        return None
    return any(f in flags for f in CPU_BF16_FLAGS) if flags else None


def warn_if_slow_bf16(device) -> None:
    """bf16 autocast on a CPU without bf16 units is emulated by oneDNN, usually slower than fp32 (the
    1.3-1.9x gains in docs/PERFORMANCE.md were measured on an AMX Xeon): say so, once per process."""
    if torch.device(device).type == "cpu" and cpu_bf16_native() is False:
        _warn_emulated_bf16()


@functools.cache
def _warn_emulated_bf16() -> None:
    log.warning("bf16 on a CPU without AMX or AVX512-BF16 (no %s in /proc/cpuinfo) is emulated and usually "
                "slower than fp32: drop the bf16 settings (precision, *.precision, nba.pgd_precision) on "
                "this machine", " or ".join(CPU_BF16_FLAGS))


def make_accelerator(device: str = "auto", precision: str = "no"):
    """An Accelerator on `device` with `precision`. Accelerate keeps one state per process, and a
    Ray actor runs trial after trial: a later trial asking another device or precision would fail
    or silently stay where the first one was, so a one-process run starts from a fresh state.
    (Data-parallel workers keep theirs: their process group belongs to Ray Train.)"""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    require(precision != "fp16", FP16_REFUSED)
    require(precision in ("no", "bf16"), f"precision={precision!r}: use no or bf16")
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        AcceleratorState._reset_state(reset_partial_state=True)
    device = resolve_device(device)
    if precision == "bf16":
        warn_if_slow_bf16(device)
    return Accelerator(cpu=device == "cpu", mixed_precision=precision)


def memory_format(device) -> torch.memory_format:
    """The layout images and convolution weights use on `device`. channels_last on the CPU: oneDNN's
    convolutions run faster in it (an NBA step, 5 PGD steps, ~1.2x: bench/trial.py). Elsewhere the
    default layout until a GPU run measures it (`bench/trial.py` prints both layouts).
    `NBA_SCALE_CHANNELS_LAST=1`/`0` overrides either way."""
    forced = os.environ.get("NBA_SCALE_CHANNELS_LAST")
    if forced in ("0", "1"):
        return torch.channels_last if forced == "1" else torch.contiguous_format
    return torch.channels_last if torch.device(device).type == "cpu" else torch.contiguous_format


def _layout(model: torch.nn.Module) -> Optional[torch.memory_format]:
    for p in model.parameters():
        if p.dim() == 4:
            return torch.contiguous_format if p.is_contiguous() else torch.channels_last
    return None


@contextlib.contextmanager
def fast_layout(model: torch.nn.Module, device):
    """Inside, `model`'s convolution weights are in `memory_format(device)` (the same Parameter
    objects, so optimisers keep working); on exit they return to the layout they had, so weights
    leave in the default layout whoever saves them. Yields the format inputs should take."""
    fmt, before = memory_format(device), _layout(model)
    if before is None:  # no convolution: inputs keep the default layout (a flattening view needs it)
        yield torch.contiguous_format
        return
    if before == fmt:
        yield fmt
        return
    model.to(memory_format=fmt)
    try:
        yield fmt
    finally:
        model.to(memory_format=before)


def make_optimizer(model: torch.nn.Module, cfg: OptimConfig) -> torch.optim.Optimizer:
    if cfg.optimizer == "adam":
        return torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum,
                           weight_decay=cfg.weight_decay, nesterov=cfg.nesterov and cfg.momentum > 0)


def show_progress() -> bool:
    return sys.stderr.isatty()


_plain_every_s: Optional[float] = None


@contextlib.contextmanager
def plain_progress(every_s: float = 30.0):
    """Inside, a loop whose stderr is no terminal (nohup, a log file, CI) prints a line per epoch,
    at most one every `every_s` seconds, instead of the terminal's bar. For the long work a driver
    does itself (artifact builds); trials stay quiet, their drivers report them."""
    global _plain_every_s
    before, _plain_every_s = _plain_every_s, every_s
    try:
        yield
    finally:
        _plain_every_s = before


# What the members of a pack share, because they train on the same batches: the optimiser
# settings that decide the batches (spec.check_pack and spec.check_packable read it too).
PACK_SHARED = ("epochs", "batch_size", "augment", "cutout")

# loss(model, x, y) -> the loss, or (the loss, {term: its weighted value}) for a loss made of
# terms (NBA's CE, LDL, UDL and their RNB/LNB/PNB): the epoch's mean of each term is recorded
# (`recording_losses`) beside the total's.
LossFn = Callable[[torch.nn.Module, torch.Tensor, torch.Tensor], "torch.Tensor | tuple[torch.Tensor, dict]"]

_loss_recorder: Optional[Callable[[int, int, dict[str, float]], None]] = None


@contextlib.contextmanager
def recording_losses(record: Callable[[int, int, dict[str, float]], None]):
    """Inside, every epoch of `train`/`train_pack` ends by calling `record(epoch, k, losses)` for
    each live member k, before its `on_epoch_end`: `losses` = {"loss": the epoch's mean loss, and
    each term's mean where the loss gives its terms}. A context rather than a parameter, so that a
    defense (a plug-in's too) gets its curves by training through `train`, without passing them on."""
    global _loss_recorder
    before, _loss_recorder = _loss_recorder, record
    try:
        yield
    finally:
        _loss_recorder = before


def cross_entropy(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.cross_entropy(model(x), y)


@dataclasses.dataclass
class Member:
    """One model that `train_pack` trains: its loss, its optimiser settings and, once it
    stopped on a non-finite loss, why (`failed`)."""
    model: torch.nn.Module
    cfg: OptimConfig
    loss_fn: LossFn = cross_entropy
    optimizer_state: Optional[dict] = None
    failed: Optional[str] = None
    pack_mode: str = "loop"  # how `train_pack` trained it: "loop", or "stacked" (nba_scale/stacking.py)


class _MemberRNG:
    """Each member's own stream of the global RNG (PGD random starts, MCR's t, dropout). A member
    of a pack draws exactly what it would draw trained alone: every stream starts from the epoch's
    seed, and a member's draws never shift another's."""

    def __init__(self, n: int, device: torch.device):
        self.cuda = device.type == "cuda"
        self.states = [self._get()] * n

    def _get(self):
        return (torch.get_rng_state(), torch.cuda.get_rng_state() if self.cuda else None)

    @contextlib.contextmanager
    def __call__(self, k: int):
        cpu, gpu = self.states[k]
        torch.set_rng_state(cpu)
        if self.cuda:
            torch.cuda.set_rng_state(gpu)
        try:
            yield
        finally:
            self.states[k] = self._get()


def train(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, cfg: OptimConfig, accelerator,
          loss_fn: LossFn = cross_entropy, flip: bool = True, seed: int = 0, desc: str = "train",
          on_epoch_end: Optional[Callable[[int, torch.nn.Module, torch.optim.Optimizer], None]] = None,
          start_epoch: int = 0, optimizer_state: Optional[dict] = None) -> torch.nn.Module:
    """Train `model` in place on uint8 images `x` with labels `y`; returns the unwrapped model.
    A pack of one (`train_pack`); a non-finite loss raises `NonFiniteLoss`.

    `on_epoch_end(epoch, model, optimizer)` runs after each epoch (evaluation, reporting,
    checkpointing). `start_epoch`/`optimizer_state` resume an interrupted run.
    """
    member = Member(model, cfg, loss_fn, optimizer_state)
    hook = None if on_epoch_end is None else (lambda epoch, k, m, opt: on_epoch_end(epoch, m, opt))
    train_pack([member], x, y, accelerator, flip=flip, seed=seed, desc=desc, on_epoch_end=hook,
               start_epoch=start_epoch)
    if member.failed:
        raise NonFiniteLoss(member.failed)
    return member.model


def train_pack(members: list[Member], x: torch.Tensor, y: torch.Tensor, accelerator, flip: bool = True,
               seed: int = 0, desc: str = "train",
               on_epoch_end: Optional[Callable[[int, int, torch.nn.Module, torch.optim.Optimizer], None]] = None,
               start_epoch: int = 0, stacked: Optional[Callable] = None) -> list[Member]:
    """Train several models on the same batches, each with its own loss, optimiser, learning-rate
    schedule, gradient clipping and random stream: every member ends exactly as it would trained
    alone with the same seed. What the members share is paid once per batch: the data order and
    augmentation, and whatever their losses cache (a teacher's forward pass, `SharedForward`).
    A member whose loss turns non-finite stops with the reason in `member.failed`; the others go
    on. `on_epoch_end(epoch, k, model, optimizer)` runs after each epoch for every live member.
    `stacked`: the members' loss on their stacked network (`stacking.StackedLoss`): they train as
    one network (`stacking.StackedStep`), each to float rounding as it would alone; without it,
    one after another. Returns `members`, each `model` unwrapped.
    """
    cfg = members[0].cfg
    for m in members[1:]:
        mine, first = (tuple(getattr(c, f) for f in PACK_SHARED) for c in (m.cfg, cfg))
        if mine != first:
            raise ConfigError(f"a pack's members must share {', '.join(PACK_SHARED)} (the batches are "
                              f"shared); got {'/'.join(map(str, mine))} beside {'/'.join(map(str, first))}")
    world = accelerator.num_processes
    if world > 1 and len(members) > 1:
        raise ConfigError("packed trials run in one process: use --pack 1 with data-parallel workers")
    # The config's batch size is the global one, split over the data-parallel processes, so a
    # hyper-parameter means the same thing on one GPU and on eight.
    batches = Batches(x, y, max(2, cfg.batch_size // world), accelerator.device, shuffle=True, augment=cfg.augment,
                      flip=flip, seed=seed, rank=accelerator.process_index, world=world, cutout=cfg.cutout)
    with contextlib.ExitStack() as layouts:
        formats = [layouts.enter_context(fast_layout(m.model, accelerator.device)) for m in members]
        fmt = formats[0]  # the members share an architecture
        if stacked is not None:
            from .stacking import StackedStep

            stepper = StackedStep(members, accelerator, stacked, fmt)
        else:
            stepper = _LoopedStep(members, accelerator)
        return _train_pack(members, batches, accelerator, fmt, desc, on_epoch_end, start_epoch, stepper)


def stage_autocast(cfg: OptimConfig, accelerator):
    """The autocast a stage trains under: the trial's (Accelerate's), or bf16 where the stage asks
    for it inside an fp32 trial."""
    trial = accelerator.mixed_precision
    if cfg.precision in (None, trial):
        return accelerator.autocast
    if cfg.precision == "no":
        raise ConfigError(FP32_STAGE_REFUSED)
    device = accelerator.device.type
    warn_if_slow_bf16(device)
    return lambda: torch.autocast(device_type=device, dtype=torch.bfloat16)


class _LoopedStep:
    """`train_pack`'s step for a looped pack: each live member's forward, backward, clip and SGD
    step in turn, each in its own random stream (several members) and autocast."""

    def __init__(self, members: list[Member], accelerator):
        self.members, self.acc = members, accelerator
        self.autocasts = [stage_autocast(m.cfg, accelerator) for m in members]
        self.optimizers = []
        for m in members:
            opt = make_optimizer(m.model, m.cfg)
            if m.optimizer_state:
                opt.load_state_dict(m.optimizer_state)
            m.model, opt = accelerator.prepare(m.model, opt)
            self.optimizers.append(opt)
        self.rng: Optional[_MemberRNG] = None
        self.term_sums: list[dict[str, torch.Tensor]] = []

    def begin_epoch(self, epoch: int, live: list[int]) -> None:
        members = self.members
        self.rng = _MemberRNG(len(members), self.acc.device) if len(members) > 1 else None
        for k in live:
            members[k].model.train()
            for group in self.optimizers[k].param_groups:
                group["lr"] = members[k].cfg.lr_at(epoch)
        self.term_sums = [{} for _ in members]  # summed on the device: no sync per step

    def step(self, xb: torch.Tensor, yb: torch.Tensor, live: list[int], loss_sum: torch.Tensor) -> None:
        for k in live:
            m, opt = self.members[k], self.optimizers[k]
            with self.rng(k) if self.rng else contextlib.nullcontext(), self.autocasts[k]():
                loss = m.loss_fn(m.model, xb, yb)
            if isinstance(loss, tuple):
                loss, terms = loss
                sums = self.term_sums[k]
                for name, value in terms.items():
                    value = value.detach().float()
                    sums[name] = sums[name] + value if name in sums else value
            opt.zero_grad(set_to_none=True)
            self.acc.backward(loss)
            if m.cfg.grad_clip is not None:
                self.acc.clip_grad_norm_(m.model.parameters(), m.cfg.grad_clip)
            opt.step()
            loss_sum[k] += loss.detach().float()

    def epoch_terms(self, live: list[int]) -> list[tuple[int, str, torch.Tensor]]:
        return [(k, name, value) for k in live for name, value in self.term_sums[k].items()]

    def fail(self, k: int) -> None:
        """Nothing to copy out: a failed member's module is its own and is not stepped again."""

    def member(self, k: int):
        return self.acc.unwrap_model(self.members[k].model), self.optimizers[k]

    def finish(self) -> None:
        for m in self.members:
            m.model = self.acc.unwrap_model(m.model)


def _train_pack(members, batches, accelerator, fmt, desc, on_epoch_end, start_epoch, stepper):
    cfg, world, seed = members[0].cfg, accelerator.num_processes, batches.seed
    steps = len(batches) * max(0, cfg.epochs - start_epoch)
    bar = tqdm(total=steps, desc=desc, disable=not (show_progress() and accelerator.is_main_process),
               leave=False, mininterval=1.0)
    plain = bar.disable and _plain_every_s is not None and accelerator.is_main_process
    t0 = last_line = time.time()
    for epoch in range(start_epoch, cfg.epochs):
        # Per-epoch seeding (data order, augmentation, PGD starts, dropout): resuming at an epoch
        # boundary replays exactly what the uninterrupted run would have done.
        batches.set_epoch(epoch)
        torch.manual_seed(seed * 1_000_003 + epoch)
        live = [k for k, m in enumerate(members) if not m.failed]
        stepper.begin_epoch(epoch, live)
        loss_sum = torch.zeros(len(members), device=accelerator.device)
        n = 0
        for xb, yb in batches:
            stepper.step(xb.contiguous(memory_format=fmt), yb, live, loss_sum)
            n += 1
            bar.update(1)
        bad = ~torch.isfinite(loss_sum)
        if world > 1:  # every rank stops together, or the others hang in the next all-reduce
            bad = accelerator.reduce(bad.float(), reduction="sum") > 0
        bad = bad.tolist()  # one sync per epoch
        for k in live:
            if bad[k]:
                members[k].failed = f"non-finite loss (NaN/inf) in {desc} epoch {epoch + 1}/{cfg.epochs}"
                stepper.fail(k)
        live = [k for k in live if not bad[k]]
        means = (loss_sum / max(1, n)).tolist()
        shown = ", ".join(f"{means[k]:.3f}" for k in live) or "-"
        bar.set_postfix(epoch=epoch + 1, loss=shown)
        log.info("%s epoch %d/%d loss %s", desc, epoch + 1, cfg.epochs, shown)
        if plain and (time.time() - last_line >= _plain_every_s or epoch + 1 == cfg.epochs):
            last_line = time.time()
            print(f"  {desc}: epoch {epoch + 1}/{cfg.epochs}, loss {shown}, {last_line - t0:.0f}s",
                  file=sys.stderr, flush=True)
        if _loss_recorder is not None and live:
            terms = stepper.epoch_terms(live)
            values = (torch.stack([v for _, _, v in terms]) / max(1, n)).tolist() if terms else []
            sums: dict[int, dict[str, float]] = {k: {} for k in live}
            for (k, name, _), value in zip(terms, values):  # one sync for every term of every member
                sums[k][name] = value
            for k in live:
                _loss_recorder(epoch, k, {"loss": means[k], **sums[k]})
        if on_epoch_end is not None:
            for k in live:
                on_epoch_end(epoch, k, *stepper.member(k))
        if not live:
            break
    bar.close()
    stepper.finish()
    accelerator.free_memory()  # drop the Accelerator's references: trials reuse one process
    return members
