"""Cross-attack robustness from a shared pool of configurations scored on every attack.

Input: rows of the `transfer` campaign (one per attack x configuration x seed). Per configuration
and attack, ASR and BA are averaged over seeds. Then:

- leave-one-attack-out: for each held-out attack h, the configuration with the highest
  `mean BA - worst ASR` over the *other* attacks is chosen (it never sees h) and scored on h;
  the configuration best on h itself (highest `BA - ASR` on h) is the reference. The loss is
  how much the chosen one gives up on h: utility, ASR and BA differences.
- worst-case: every configuration's worst ASR and mean BA over all attacks, with the Pareto
  front of (worst ASR down, mean BA up): the configurations that hold across attacks.

Selection is over a fixed random pool rather than a fresh search per fold: every fold chooses
from the same candidates, so the folds differ only in what they may look at.
"""
from __future__ import annotations

import statistics
from typing import Iterable

from .store import pareto_mask


def score_matrix(rows: Iterable[dict]) -> dict[str, dict[str, tuple[float, float]]]:
    """{variant: {attack: (mean ASR, mean BA)}} over seeds, ok rows only."""
    acc: dict[tuple[str, str], list[tuple[float, float]]] = {}
    for r in rows:
        if r.get("status") == "ok":
            acc.setdefault((r["variant"], r["attack"]), []).append((r["asr"], r["ba"]))
    out: dict[str, dict[str, tuple[float, float]]] = {}
    for (v, a), vals in acc.items():
        out.setdefault(v, {})[a] = (statistics.fmean(x for x, _ in vals), statistics.fmean(y for _, y in vals))
    return out


def utility(scores: dict[str, tuple[float, float]], attacks: list[str]) -> float:
    """mean BA - worst ASR over `attacks` (one attack: BA - ASR)."""
    return statistics.fmean(scores[a][1] for a in attacks) - max(scores[a][0] for a in attacks)


def leave_one_out(matrix: dict[str, dict[str, tuple[float, float]]]) -> list[dict]:
    """One row per held-out attack; configurations missing an attack are not candidates."""
    attacks = sorted({a for s in matrix.values() for a in s})
    full = {v: s for v, s in matrix.items() if set(attacks) <= set(s)}
    out = []
    if len(attacks) < 2 or not full:
        return out
    for h in attacks:
        rest = [a for a in attacks if a != h]
        chosen = max(sorted(full), key=lambda v: utility(full[v], rest))
        oracle = max(sorted(full), key=lambda v: utility(full[v], [h]))
        (ca, cb), (oa, ob) = full[chosen][h], full[oracle][h]
        out.append({"held_out": h, "chosen": chosen, "chosen_asr": ca, "chosen_ba": cb,
                    "tuned_on_it": oracle, "tuned_asr": oa, "tuned_ba": ob,
                    "asr_loss": ca - oa, "ba_loss": ob - cb, "utility_loss": (ob - oa) - (cb - ca)})
    return out


def worst_case(matrix: dict[str, dict[str, tuple[float, float]]]) -> list[dict]:
    """Per configuration with every attack scored: worst ASR, mean BA, and whether it is on the
    (worst ASR, mean BA) Pareto front; sorted best utility first."""
    attacks = sorted({a for s in matrix.values() for a in s})
    rows = [{"variant": v, "worst_asr": max(s[a][0] for a in attacks),
             "worst_asr_attack": max(attacks, key=lambda a: s[a][0]),
             "mean_ba": statistics.fmean(s[a][1] for a in attacks)}
            for v, s in sorted(matrix.items()) if set(attacks) <= set(s)]
    for r, keep in zip(rows, pareto_mask([r["worst_asr"] for r in rows], [r["mean_ba"] for r in rows])):
        r["pareto"] = keep
    return sorted(rows, key=lambda r: r["worst_asr"] - r["mean_ba"])
