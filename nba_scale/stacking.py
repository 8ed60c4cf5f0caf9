"""Stacked packs (`--pack-mode stacked`): the K members of a pack as one network.

A looped pack (`training.train_pack`'s default) steps its members one after another: per batch K
forward and backward passes of a small network, each ~1,400 operations on small tensors, which
on a GPU is bound by kernel launches, not arithmetic. Stacked, member k's every convolution is
group k of one grouped convolution over K·C channels, its BatchNorm K·C channels of one
BatchNorm (statistics are per channel, hence per member), its linear layers one batched matmul:
one kernel per layer for all K members. Members never mix: each ends as it would alone, to float
rounding (grouped kernels sum in another order).

Layout: every stacked parameter and buffer holds the members' tensors concatenated along dim 0,
member-major, so `member_view(t, k, K)` is member k's tensor in the member's own shape.
Inputs: one batch for all members (B, 3, H, W): the clean x (the first convolution then runs
dense with K·C outputs), or one per member (B, K·3, H, W): NBA's x + δ_k. Outputs: logits
(B, K, classes), taps (B, K, C, H, W).

What stacks: the layers below (`why_not_stackable` names the first that does not, e.g. a dropout
whose masks a member draws from its own stream) in our architectures, whose forward code touches
channels only through those layers, pooling and `torch.flatten(x, 1)` (`stackable = True`).
What a defense offers: `stacked_loss` (the per-member loss on the stacked network, NBA and NAD)
and `stacked_shared` (the settings its members must share). On the CPU stacking loses (a grouped
WRN-16-1 at K = 8 ran 0.6x the loop of 8 students, forward + backward, batch 64): `auto` stacks
on CUDA only.
"""
from __future__ import annotations

import copy
import itertools
from typing import Callable, Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from .config import ConfigError
from .models import run_tapped

PACK_MODES = ("auto", "stacked", "loop")

# (stacked net, x, y) -> (each member's loss (K,), {term: each member's weighted value (K,)})
StackedLoss = Callable[["StackedNet", torch.Tensor, torch.Tensor], tuple[torch.Tensor, dict[str, torch.Tensor]]]

# Parameter-free layers that act on each channel (or each sample) alone: stacked as they are.
CHANNELWISE = (nn.ReLU, nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d, nn.Identity,
               nn.Sequential, nn.ModuleList, nn.ModuleDict)
# The optimiser settings the stacked SGD keeps one of (the rest are K-vectors: lr, momentum,
# weight decay, clip) and the stage precision the one forward runs under.
OPTIM_SHARED = ("nesterov", "precision")


def split_members(t: torch.Tensor, members: int) -> torch.Tensor:
    """A stacked tensor (dim 0 member-major) as (K, *the member's shape): a view."""
    return t.unflatten(0, (members, -1))


def member_view(t: torch.Tensor, k: int, members: int) -> torch.Tensor:
    """Member k's part of a stacked tensor, in the member's shape."""
    return split_members(t, members)[k]


def per_member(v: torch.Tensor, split: torch.Tensor) -> torch.Tensor:
    """A (K,) vector shaped to scale each member's slice of `split` (a `split_members` view)."""
    return v.view(-1, *[1] * (split.dim() - 1))


class StackedConv2d(nn.Module):
    """K `nn.Conv2d`s of one shape as one grouped convolution (weights (K·Cout, Cin/g, kh, kw))."""

    def __init__(self, convs: Sequence[nn.Conv2d]):
        super().__init__()
        c = convs[0]
        self.members, self.in_channels, self.groups = len(convs), c.in_channels, c.groups
        self.stride, self.padding, self.dilation = c.stride, c.padding, c.dilation
        self.weight = nn.Parameter(torch.cat([m.weight.detach() for m in convs]).contiguous())
        self.bias = None if c.bias is None else nn.Parameter(torch.cat([m.bias.detach() for m in convs]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] == self.members * self.in_channels:  # one input per member
            groups = self.members * self.groups
        elif x.shape[1] == self.in_channels and self.groups == 1:  # one input for all: dense, K·Cout outputs
            groups = 1
        else:
            raise ValueError(f"a stacked convolution of {self.members} members takes {self.in_channels} or "
                             f"{self.members * self.in_channels} channels, got {x.shape[1]}")
        return F.conv2d(x, self.weight, self.bias, self.stride, self.padding, self.dilation, groups)


class StackedLinear(nn.Module):
    """K `nn.Linear`s of one shape as one batched matmul (weights (K·out, in)); takes (B, K·in)
    (member-major, as `torch.flatten` leaves stacked channels) or (B, in) for all members."""

    def __init__(self, linears: Sequence[nn.Linear]):
        super().__init__()
        first = linears[0]
        self.members, self.in_features, self.out_features = len(linears), first.in_features, first.out_features
        self.weight = nn.Parameter(torch.cat([m.weight.detach() for m in linears]))
        self.bias = None if first.bias is None else nn.Parameter(torch.cat([m.bias.detach() for m in linears]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k, b = self.members, x.shape[0]
        x = x.unsqueeze(1).expand(b, k, -1) if x.shape[1] == self.in_features else x.reshape(b, k, -1)
        w = self.weight.view(k, self.out_features, self.in_features)
        y = torch.bmm(x.transpose(0, 1), w.transpose(1, 2)).transpose(0, 1)  # (B, K, out)
        if self.bias is not None:
            y = y + self.bias.view(k, self.out_features)
        return y.reshape(b, k * self.out_features)


def _stacked_batchnorm(bns: Sequence[nn.BatchNorm2d]) -> nn.BatchNorm2d:
    first = bns[0]
    out = nn.BatchNorm2d(len(bns) * first.num_features, first.eps, first.momentum, first.affine,
                         first.track_running_stats)
    with torch.no_grad():
        for name, t in itertools.chain(out.named_parameters(), out.named_buffers()):
            if name == "num_batches_tracked":
                t.copy_(first.num_batches_tracked)
            else:
                t.copy_(torch.cat([getattr(m, name).detach() for m in bns]))
    return out.to(first.weight.device if first.affine else first.running_mean.device)


def why_not_stackable(model: nn.Module) -> Optional[str]:
    """Why `model`'s architecture cannot be stacked (the first module in the way), or None."""
    for name, m in model.named_modules():
        where = f"{name or 'the model'} ({type(m).__name__})"
        if isinstance(m, nn.Conv2d):
            if m.padding_mode != "zeros":
                return f"{where} pads with {m.padding_mode!r}"
        elif isinstance(m, nn.BatchNorm2d):
            if not m.track_running_stats or m.momentum is None:
                return f"{where} keeps no running statistics or a cumulative average"
        elif isinstance(m, nn.Dropout):
            if m.p > 0:
                return f"{where} draws dropout masks, which a member draws from its own random stream alone"
        elif isinstance(m, nn.Flatten):
            if (m.start_dim, m.end_dim) != (1, -1):
                return f"{where} flattens other dimensions than the channels"
        elif not (isinstance(m, (nn.Linear, *CHANNELWISE)) or getattr(type(m), "stackable", False)):
            return f"{where} is not a layer stacking knows (its code may mix the members' channels)"
    return None


class StackedNet(nn.Module):
    """K classifiers of one architecture (our `models.Classifier`s) as one network: `net` is the
    first member's module tree with each convolution, BatchNorm and linear layer replaced by its
    stacked form, so taps keep their names."""

    def __init__(self, models: Sequence[nn.Module]):
        super().__init__()
        why = why_not_stackable(models[0])
        if why:
            raise ConfigError(f"this architecture cannot be stacked: {why}; use --pack-mode loop")
        for m in models[1:]:
            if not (torch.equal(m.mean, models[0].mean) and torch.equal(m.std, models[0].std)):
                raise ConfigError("a stacked pack's members must normalise their inputs alike (mean, std)")
        self.members = len(models)
        self.net = copy.deepcopy(models[0])
        for name, module in models[0].named_modules():
            if isinstance(module, (nn.Conv2d, nn.BatchNorm2d, nn.Linear)):
                parts = [m.get_submodule(name) for m in models]
                stacked = (StackedConv2d(parts) if isinstance(module, nn.Conv2d) else StackedLinear(parts)
                           if isinstance(module, nn.Linear) else _stacked_batchnorm(parts))
                parent, _, child = name.rpartition(".")
                setattr(self.net.get_submodule(parent), child, stacked)
        self.register_buffer("mean_k", self.net.mean.repeat(1, self.members, 1, 1))
        self.register_buffer("std_k", self.net.std.repeat(1, self.members, 1, 1))

    def forward(self, x: torch.Tensor, features: bool = False):
        net = self.net
        x = (x - net.mean) / net.std if x.shape[1] == net.mean.shape[1] else (x - self.mean_k) / self.std_k
        split = (lambda t: t.unflatten(1, (self.members, -1)))
        if not features:
            return split(net.logits(x))
        logits, taps = run_tapped(net, net.taps, lambda: net.logits(x))
        return split(logits), [split(t) for t in taps]

    def unstack_into(self, model: nn.Module, k: int) -> None:
        """Copy member k's weights and statistics into `model` (its own module)."""
        mine = dict(itertools.chain(model.named_parameters(), model.named_buffers()))
        with torch.no_grad():
            for name, t in itertools.chain(self.net.named_parameters(), self.net.named_buffers()):
                target = mine[name]
                target.copy_(t if t.shape == target.shape else member_view(t, k, self.members))


def member_cross_entropy(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Each member's mean cross-entropy, (K,), from stacked logits (B, K, classes)."""
    b, k = logits.shape[:2]
    return F.cross_entropy(logits.flatten(0, 1), y.repeat_interleave(k), reduction="none").view(b, k).mean(0)


def same_draw(x: torch.Tensor, bounds: Sequence[float]) -> torch.Tensor:
    """Member k's uniform(-bounds[k], bounds[k]) tensor shaped like `x`, drawn as each member of
    a pack draws it (training._MemberRNG: every member's stream is at the same state, so each
    draws from that state), concatenated along the channels: (B, K·C, H, W). The global stream
    ends where one draw leaves it."""
    cuda = x.device.type == "cuda"
    get, put = ((lambda: torch.cuda.get_rng_state(x.device), lambda s: torch.cuda.set_rng_state(s, x.device))
                if cuda else (torch.get_rng_state, torch.set_rng_state))
    start, drawn = get(), {}
    for bound in dict.fromkeys(bounds):
        put(start)
        drawn[bound] = torch.empty_like(x).uniform_(-bound, bound)
    return torch.cat([drawn[b] for b in bounds], dim=1)


class StackedSGD:
    """torch.optim.SGD (momentum, no dampening, nesterov, weight decay) over stacked parameters
    with each member's own learning rate, momentum and weight decay, applied to its slice of every
    tensor. Written here because torch's SGD takes one learning rate per parameter group and a
    stacked tensor holds K members; the update is torch's `_single_tensor_sgd`, member-wise:
    d = g + wd·p; buf = m·buf + d (buf starts at 0: the first step's buf is d, as torch's clone);
    nesterov: d + m·buf, else buf; p -= lr·that."""

    def __init__(self, params: Sequence[torch.nn.Parameter], members: int, cfgs: Sequence):
        dev = params[0].device
        vec = lambda f: torch.tensor([float(f(c)) for c in cfgs], device=dev)  # noqa: E731
        self.params, self.members = list(params), members
        self.momentum, self.weight_decay = vec(lambda c: c.momentum), vec(lambda c: c.weight_decay)
        self.nesterov = bool(cfgs[0].nesterov)  # shared (OPTIM_SHARED); momentum 0 ignores it, as torch
        self.lr = torch.zeros(members, device=dev)
        self.bufs = [torch.zeros_like(p) for p in self.params]

    @torch.no_grad()
    def step(self) -> None:
        for p, buf in zip(self.params, self.bufs):
            if p.grad is None:
                continue
            pv, g, b = (split_members(t, self.members) for t in (p, p.grad, buf))
            m = per_member(self.momentum, pv)
            d = g.addcmul(pv, per_member(self.weight_decay, pv))
            b.mul_(m).add_(d)
            pv.addcmul_(d.addcmul(b, m) if self.nesterov else b, per_member(self.lr, pv), value=-1)

    def load_member(self, k: int, buffers: Sequence[Optional[torch.Tensor]]) -> None:
        """Member k's momentum buffers (a torch SGD's, in parameter order; None: none yet)."""
        with torch.no_grad():
            for buf, mine in zip(self.bufs, buffers):
                if mine is not None:
                    member_view(buf, k, self.members).copy_(mine)

    def member_buffers(self, k: int) -> list[torch.Tensor]:
        return [member_view(buf, k, self.members).clone() for buf in self.bufs]


def clip_members(params: Sequence[torch.nn.Parameter], members: int, max_norm: torch.Tensor) -> None:
    """torch.nn.utils.clip_grad_norm_ per member: each member's gradient, over all its slices,
    scaled to at most max_norm[k] (inf: not clipped)."""
    grads = [p.grad for p in params if p.grad is not None]
    split = [split_members(g, members) for g in grads]
    sq = torch.stack([s.float().pow(2).sum(dim=tuple(range(1, s.dim()))) for s in split]).sum(0)
    coef = (max_norm / (sq.sqrt() + 1e-6)).clamp(max=1.0)
    for s in split:
        s.mul_(per_member(coef, s).to(s.dtype))


class StackedStep:
    """`training.train_pack`'s step for a stacked pack: one forward and backward of the stacked
    network for every member, each member's gradient clipped alone, one SGD over all. A member
    whose loss turned non-finite keeps training in its slices (nothing mixes members) but is left
    out of the summed loss; its weights are copied out when it fails. Hooks (`member`) get the
    member's own module and a torch SGD holding its momentum buffers, so checkpoints are the
    same whichever mode wrote them."""

    def __init__(self, members: list, accelerator, loss: StackedLoss, fmt: torch.memory_format):
        from .training import make_optimizer, stage_autocast

        self.members, self.acc, self.loss, self.k = members, accelerator, loss, len(members)
        dev = accelerator.device
        self.net = StackedNet([m.model for m in members]).to(dev)
        self.net.to(memory_format=fmt)
        names = [n.removeprefix("net.") for n, _ in self.net.named_parameters()]
        self.params = list(self.net.parameters())
        self.mine = [[dict(m.model.named_parameters())[n] for n in names] for m in members]
        self.opts = [make_optimizer(m.model, m.cfg) for m in members]
        self.sgd = StackedSGD(self.params, self.k, [m.cfg for m in members])
        for k, m in enumerate(members):
            if m.optimizer_state:
                self.opts[k].load_state_dict(m.optimizer_state)
                self.sgd.load_member(k, [self.opts[k].state.get(p, {}).get("momentum_buffer") for p in self.mine[k]])
        clips = [m.cfg.grad_clip if m.cfg.grad_clip is not None else float("inf") for m in members]
        self.max_norm = None if all(c == float("inf") for c in clips) else torch.tensor(clips, device=dev)
        self.autocast = stage_autocast(members[0].cfg, accelerator)
        self.live = torch.ones(self.k, dtype=torch.bool, device=dev)
        self.term_sums: dict[str, torch.Tensor] = {}

    def begin_epoch(self, epoch: int, live: list[int]) -> None:
        self.net.train()
        lrs = [m.cfg.lr_at(epoch) for m in self.members]
        self.sgd.lr = torch.tensor(lrs, device=self.sgd.lr.device)
        for opt, lr in zip(self.opts, lrs):
            for group in opt.param_groups:
                group["lr"] = lr
        self.live = torch.tensor([k in live for k in range(self.k)], device=self.live.device)
        self.term_sums = {}

    def step(self, xb: torch.Tensor, yb: torch.Tensor, live: list[int], loss_sum: torch.Tensor) -> None:
        with self.autocast():
            losses, terms = self.loss(self.net, xb, yb)
        losses = losses.float()
        for p in self.params:
            p.grad = None
        self.acc.backward(torch.where(self.live, losses, torch.zeros_like(losses)).sum())
        if self.max_norm is not None:
            clip_members(self.params, self.k, self.max_norm)
        self.sgd.step()
        loss_sum += losses.detach()
        for name, value in terms.items():
            value = value.detach().float()
            self.term_sums[name] = self.term_sums[name] + value if name in self.term_sums else value

    def epoch_terms(self, live: list[int]) -> list[tuple[int, str, torch.Tensor]]:
        return [(k, name, total[k]) for k in live for name, total in self.term_sums.items()]

    def fail(self, k: int) -> None:
        self.net.unstack_into(self.members[k].model, k)

    def member(self, k: int):
        """(member k's module, a torch SGD with its learning rate and momentum buffers)."""
        self.net.unstack_into(self.members[k].model, k)
        opt = self.opts[k]
        for p, buf in zip(self.mine[k], self.sgd.member_buffers(k)):
            opt.state[p]["momentum_buffer"] = buf
        return self.members[k].model, opt

    def finish(self) -> None:
        for k, m in enumerate(self.members):
            if not m.failed:
                self.net.unstack_into(m.model, k)
            m.pack_mode = "stacked"


def why_not_stacked(defenses: Sequence, model: nn.Module) -> Optional[str]:
    """Why these members of a pack (their `Defense`s, and one of their models) cannot train
    stacked, or None."""
    from .defenses.base import DEFENSES, get_defense

    cls = type(defenses[0])
    if cls.stacked_shared is None:
        can = ", ".join(n for n in DEFENSES.names() if get_defense(n).stacked_shared is not None)
        return f"defense {cls.name!r} packs only as a loop (stacked: {can})"
    why = why_not_stackable(model)
    if why:
        return f"the architecture cannot be stacked: {why}"
    if any(d.cfg.optim.optimizer != "sgd" for d in defenses):
        return f"the stacked optimiser is SGD ({cls.name}.optim.optimizer is not sgd)"
    for where, fields in (("", cls.stacked_shared), ("optim.", OPTIM_SHARED)):
        for field in fields:
            values = list(dict.fromkeys(repr(getattr(d.cfg.optim if where else d.cfg, field)) for d in defenses))
            if len(values) > 1:
                return f"a stacked pack's members must share {cls.name}.{where}{field} (got {values[0]} and {values[1]})"
    return None


def resolve_pack_mode(requested: str, defenses: Sequence, model: nn.Module, device) -> str:
    """The mode a pack trains in: `loop`, `stacked` (refused in one line where it cannot), or for
    `auto` stacked on CUDA where it can, else loop."""
    if requested not in PACK_MODES:
        raise ConfigError(f"pack_mode={requested!r}: use {', '.join(PACK_MODES)}")
    if requested == "loop" or len(defenses) < 2:
        return "loop"
    why = why_not_stacked(defenses, model)
    if requested == "stacked":
        if why:
            raise ConfigError(f"--pack-mode stacked: {why}; use --pack-mode loop (or auto, which loops what "
                              f"cannot stack)")
        return "stacked"
    return "stacked" if torch.device(device).type == "cuda" and why is None else "loop"
