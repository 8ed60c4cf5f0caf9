"""NBA's distillation terms (Ying & Wu, Cybersecurity 6:20, 2023); the PGD pseudo
sample is `nba_scale.adversarial.pgd_untargeted`.

Features are the three WRN group outputs (B, C_l, H_l, W_l), the taps NAD also uses. All terms
are averaged over the batch and computed in fp32 (Gram entries overflow bf16's precision).

RNB  = sum_l 1/(4 C_l^2 (H_l W_l)^2) * sum_ij (G^T_ij - G^S_ij)^2,   G = F F^T  (C_l x C_l)
       (representation "feature": sum_l 1/(4 C_l H_l W_l) * sum (F^T - F^S)^2, the same
       normalisation by element count applied to the raw maps; the paper's Figs 8-9 contrast.)
LNB  = sum_l (M^T_l - M^S_l)^2,   M_l = || R_l - R_{l+1} ||_F^2
       Choice (the paper leaves it open): adjacent layers differ in channels (16/32/64) and, for
       raw maps, in resolution, so both representations (G, or F for "feature") are first
       average-pooled to their common, element-wise smaller shape (for Gram matrices that averages
       2x2 channel blocks of the wider layer) and then scaled to unit Frobenius norm per sample,
       as NAD normalises its attention maps. M_l then lies in [0, 4] and measures how the *shape*
       of the response changes between layers, whatever the activation scale. Without the unit
       norm, LNB is a polynomial of degree 8 in the activations: on synthetic data its gradient
       norm was ~1e3 at the start of the defense and the loss went NaN within 2 epochs at lr 0.1.
       Teacher and student go through the identical map, so LNB is zero for identical networks.
PNB  = sum_i -p_i(u, T) log p_i(z, T): Hinton's soft cross-entropy at temperature T, as the paper
       writes it, without the T^2 factor (`kd_t2=True` multiplies by T^2 as Hinton suggests).
       The cross-entropy and KL(p_u || p_z) differ by the teacher's entropy, a constant for the
       student, so gradients are the same.
"""
from __future__ import annotations

from typing import Iterable, Sequence

import torch
import torch.nn.functional as F


TERMS = ("rnb", "lnb", "pnb")


def gram(f: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (B, C, C) response matrix G_ij = sum_k F_ik F_jk."""
    b, c = f.shape[:2]
    if not f.is_contiguous() and f.is_contiguous(memory_format=torch.channels_last):
        # (B, HW, C) is a view of a channels_last map: G = X^T X without copying it to (B, C, HW)
        x = f.permute(0, 2, 3, 1).reshape(b, -1, c).float()
        return x.transpose(1, 2) @ x
    f = f.reshape(b, c, -1).float()
    return f @ f.transpose(1, 2)


def rnb(feats_t: Sequence[torch.Tensor], feats_s: Sequence[torch.Tensor], representation: str = "gram") -> torch.Tensor:
    total = feats_s[0].new_zeros((), dtype=torch.float32)
    for ft, fs in zip(feats_t, feats_s, strict=True):
        c, hw = ft.shape[1], ft.shape[2] * ft.shape[3]
        if representation == "gram":
            total = total + (gram(ft) - gram(fs)).pow(2).sum((1, 2)).mean() / (4 * c * c * hw * hw)
        else:
            total = total + (ft.float() - fs.float()).pow(2).sum((1, 2, 3)).mean() / (4 * c * hw)
    return total


def _representation(f: torch.Tensor, representation: str) -> torch.Tensor:
    return gram(f) if representation == "gram" else f.float()


def _pool_to(x: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    if tuple(x.shape[1:]) == tuple(shape):
        return x
    pool = {2: F.adaptive_avg_pool2d, 3: F.adaptive_avg_pool3d}[len(shape)]
    return pool(x.unsqueeze(1), shape).squeeze(1)


def layer_changes(feats: Sequence[torch.Tensor], representation: str = "gram") -> list[torch.Tensor]:
    """M_l for each adjacent pair of layers: (B,) tensors in [0, 4]."""
    reps = [_representation(f, representation) for f in feats]
    out = []
    for a, b in zip(reps[:-1], reps[1:]):
        shape = tuple(min(i, j) for i, j in zip(a.shape[1:], b.shape[1:]))
        a, b = (F.normalize(_pool_to(r, shape).flatten(1), dim=1) for r in (a, b))
        out.append((a - b).pow(2).sum(1))
    return out


def lnb(feats_t: Sequence[torch.Tensor], feats_s: Sequence[torch.Tensor], representation: str = "gram") -> torch.Tensor:
    total = feats_s[0].new_zeros((), dtype=torch.float32)
    for mt, ms in zip(layer_changes(feats_t, representation), layer_changes(feats_s, representation), strict=True):
        total = total + (mt - ms).pow(2).mean()
    return total


def pnb(logits_t: torch.Tensor, logits_s: torch.Tensor, T: float, t2: bool = False) -> torch.Tensor:
    p_t = F.softmax(logits_t.float() / T, dim=1)
    log_p_s = F.log_softmax(logits_s.float() / T, dim=1)
    loss = -(p_t * log_p_s).sum(1).mean()
    return loss * (T * T) if t2 else loss


def behaviour_loss(feats_t, logits_t, feats_s, logits_s, *, weights: dict[str, float], T: float,
                   terms: Iterable[str] = TERMS, representation: str = "gram", kd_t2: bool = False
                   ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """λ1·RNB + λ2·LNB + λ3·PNB over the enabled `terms` (LDL, or UDL when the student saw x+δ);
    `weights` maps each term's name to its λ ({"rnb": λ1, "lnb": λ2, "pnb": λ3}).

    A disabled term is not computed at all, so it cannot leak a gradient. Computed with autocast
    off, so the Gram matmuls run in fp32 even under bf16 autocast (in bf16 their rounding noise is
    of the order of the teacher-student difference). Known open problem: NBA under bf16 still
    collapsed the weak smoke-preset model (BA 46 % -> 6.7 %, vs 31.7 % in fp32) with this in
    place, so the cause lies upstream (bf16 features); use fp32 for NBA until it is understood."""
    with torch.autocast(device_type=logits_s.device.type, enabled=False):
        return _weighted(feats_t, logits_t, feats_s, logits_s, weights, set(terms), (),
                         rnb=lambda ft, fs: rnb(ft, fs, representation), lnb=lambda ft, fs: lnb(ft, fs, representation),
                         pnb=lambda lt, ls: pnb(lt, ls, T, kd_t2))


def _weighted(feats_t, logits_t, feats_s, logits_s, weights, terms, shape, **term_fns):
    """The enabled terms (`term_fns[name](teacher's, student's)`: taps for RNB and LNB, logits for
    PNB), in fp32, and their weighted sum of `shape` (() for one network, (K,) for a stack)."""
    feats_t, feats_s = [f.float() for f in feats_t], [f.float() for f in feats_s]
    parts: dict[str, torch.Tensor] = {}
    for name in TERMS:
        if name in terms:
            parts[name] = term_fns[name](*((logits_t, logits_s) if name == "pnb" else (feats_t, feats_s)))
    total = logits_s.new_zeros(shape, dtype=torch.float32)
    for name, value in parts.items():
        total = total + weights[name] * value
    return total, parts


# A stacked pack's members (nba_scale/stacking.py): the student taps are (B, K, C, H, W), its
# logits (B, K, classes), the teacher's as above; each term comes back as a (K,) vector, member k's
# value being the one the functions above give for member k alone.

def member_rnb(feats_t, feats_s, representation: str = "gram") -> torch.Tensor:
    total = feats_s[0].new_zeros(feats_s[0].shape[1], dtype=torch.float32)
    for ft, fs in zip(feats_t, feats_s, strict=True):
        b, k, c = fs.shape[:3]
        hw = fs.shape[3] * fs.shape[4]
        if representation == "gram":
            diff = gram(ft).unsqueeze(1) - gram(fs.flatten(0, 1)).view(b, k, c, c)
            total = total + diff.pow(2).sum((2, 3)).mean(0) / (4 * c * c * hw * hw)
        else:
            total = total + (ft.float().unsqueeze(1) - fs.float()).pow(2).sum((2, 3, 4)).mean(0) / (4 * c * hw)
    return total


def member_lnb(feats_t, feats_s, representation: str = "gram") -> torch.Tensor:
    b, k = feats_s[0].shape[:2]
    total = feats_s[0].new_zeros(k, dtype=torch.float32)
    students = layer_changes([f.flatten(0, 1) for f in feats_s], representation)
    for mt, ms in zip(layer_changes(feats_t, representation), students, strict=True):
        total = total + (mt.unsqueeze(1) - ms.view(b, k)).pow(2).mean(0)
    return total


def member_pnb(logits_t: torch.Tensor, logits_s: torch.Tensor, T: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """`pnb` per member: temperatures T (K,), times scale (K,): T^2 where kd_t2, else 1."""
    t = T.view(1, -1, 1)
    p_t = F.softmax(logits_t.float().unsqueeze(1) / t, dim=2)
    log_p_s = F.log_softmax(logits_s.float() / t, dim=2)
    return -(p_t * log_p_s).sum(2).mean(0) * scale


def member_behaviour_loss(feats_t, logits_t, feats_s, logits_s, *, weights: dict[str, torch.Tensor],
                          T: torch.Tensor, pnb_scale: torch.Tensor, terms: Iterable[str] = TERMS,
                          representation: str = "gram") -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """`behaviour_loss` for every member of a stacked pack at once: weights, T and the PNB scale
    are (K,) vectors; returns the (K,) totals and each term's (K,) values, unweighted."""
    with torch.autocast(device_type=logits_s.device.type, enabled=False):
        return _weighted(feats_t, logits_t, feats_s, logits_s, weights, set(terms), logits_s.shape[1],
                         rnb=lambda ft, fs: member_rnb(ft, fs, representation),
                         lnb=lambda ft, fs: member_lnb(ft, fs, representation),
                         pnb=lambda lt, ls: member_pnb(lt, ls, T, pnb_scale))
