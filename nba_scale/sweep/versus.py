"""Paired comparisons beyond the paper's claims, with the claims' statistics (sweep/claims.py: the
mean over attacks of each attack's mean difference over seeds, its 95 % stratified bootstrap
interval over seeds, the "beats" verdict: a lower ASR at a BA loss of at most the margin):

- each variant of a campaign against its `default` (which of NBA's open choices matter);
- each defense that distils from a teacher against that teacher: the backdoored model fine-tuned
  on the same clean set, scored on the same test images when it was built (its figures are in
  every row's `artifacts`), so "does the distillation end better than the model it copies?" is a
  paired question with no extra training;
- `python -m nba_scale.results DIR --versus X Y`: any two labels over the rows under DIR, several
  campaigns included:

      nad              a defense (all its rows: one variant, or name it)
      nba/l1_0.05      a defense's variant
      nba@teacher      the teacher of a defense's rows (nba/default@teacher: of one variant's)
      table2:nba       any of these, from one campaign's rows (where two campaigns ran it)

Two rows pair where they repaired the same backdoored model (its cache key, else dataset, attack
and seed) with the same clean set (clean fraction and seed): the comparison is the defenses', not
the models'. Attacks whose backdoored model is under `implanted_above` ASR in some seed are left
out, as in the claims.
"""
from __future__ import annotations

import json
import statistics
from typing import Any, Optional

from ..config import ConfigError
from .claims import MIN_SEEDS, Paired, _ci, implanted, verdict
from .tables import clean_images

TEACHER = "teacher"


def _artifacts(row: dict) -> dict:
    art = row.get("artifacts")
    if isinstance(art, str):
        try:
            art = json.loads(art)
        except ValueError:
            return {}
    return art if isinstance(art, dict) else {}


def teacher_metrics(row: dict) -> Optional[dict]:
    """The row's teacher as scored when it was built ({"key", "asr", "ba", ...}), or None."""
    t = _artifacts(row).get("teacher")
    return t if isinstance(t, dict) and t.get("asr") is not None and t.get("ba") is not None else None


def _cell(row: dict) -> tuple:
    """What two rows must share to pair: the backdoored model and the clean set."""
    model = _artifacts(row).get("backdoor", {}).get("key") or (row.get("dataset"), row["attack"])
    return (model, row["attack"], row["seed"], round(float(row["clean_fraction"]), 9))


def _variant(row: dict) -> str:
    return row.get("variant") or "default"


def select(rows: list[dict], label: str) -> dict[tuple, dict]:
    """{cell: row} for a label (module docstring); a teacher row is its student's row with the
    teacher's ASR and BA. A label that matches two rows of one cell (two variants, or a cell run
    twice under different names) is refused: name the variant or narrow the folder."""
    campaign, _, rest = label.rpartition(":")
    base, at, what = rest.partition("@")
    if at and what != TEACHER:
        raise ConfigError(f"--versus {label!r}: after '@' only 'teacher' (e.g. nba@teacher)")
    defense, _, variant = base.partition("/")
    out: dict[tuple, dict] = {}
    for r in rows:
        if r.get("status", "ok") != "ok" or r.get("defense") != defense or (variant and _variant(r) != variant) \
                or (campaign and r.get("sweep") != campaign):
            continue
        if at:
            t = teacher_metrics(r)
            if t is None:
                continue
            r = {**r, "asr": t["asr"], "ba": t["ba"], "teacher_key": t.get("key")}
        cell = _cell(r)
        if cell in out and not (at and out[cell].get("teacher_key") == r.get("teacher_key")):
            raise ConfigError(f"--versus {label!r} matches two rows of {r['attack']} seed {r['seed']} clean fraction "
                              f"{r['clean_fraction']:g} ({out[cell].get('sweep')}: {_variant(out[cell])!r}, "
                              f"{r.get('sweep')}: {_variant(r)!r}): name a variant ({defense}/{_variant(r)}) or "
                              f"its campaign ({r.get('sweep')}:{base})")
        out[cell] = r
    return out


def compare(rows: list[dict], x: str, y: str, implanted_above: float = 0.5) -> list[dict[str, Any]]:
    """x minus y per clean fraction, over the cells both have: [{"clean_fraction", "images",
    "attacks", "left_out", "x", "y" (mean ASR, BA over attacks), "paired": Paired or None,
    "per_attack": {attack: Paired}}]."""
    xs, ys = select(rows, x), select(rows, y)
    both = sorted(set(xs) & set(ys), key=str)
    out = []
    for cf in sorted({c[3] for c in both}):
        cells = [c for c in both if c[3] == cf]
        attacks, before = implanted([xs[c] for c in cells], implanted_above)
        strata: dict[str, list[tuple[dict, dict]]] = {}
        for c in cells:
            if xs[c]["attack"] in attacks:
                strata.setdefault(xs[c]["attack"], []).append((xs[c], ys[c]))
        got: dict[str, Any] = {"clean_fraction": cf, "images": clean_images([xs[c] for c in cells]),
                               "attacks": sorted(strata),
                               "left_out": sorted(set(before) - set(attacks)), "paired": None, "per_attack": {}}
        if strata:
            got["paired"] = _paired(x, y, list(strata.values()))
            got["per_attack"] = {a: _paired(x, y, [strata[a]]) for a in sorted(strata)}
            got["x"], got["y"] = (tuple(statistics.fmean(statistics.fmean(p[i][m] for p in s) for s in strata.values())
                                        for m in ("asr", "ba")) for i in (0, 1))
        out.append(got)
    return out


def _paired(x: str, y: str, strata: list[list[tuple[dict, dict]]]) -> Paired:
    import numpy as np

    return Paired.of(x, y, [np.array([[a["asr"] - b["asr"], a["ba"] - b["ba"]] for a, b in s]) for s in strata])


def table(rows: list[dict], pairs: list[tuple[str, str]], margin: float = 0.05, implanted_above: float = 0.5,
          x_name: str = "first", y_name: str = "second", compared: Optional[dict] = None) -> list[str]:
    """Markdown: a row per pair and clean fraction (ASR / BA of each, the difference with its
    interval, the verdict of "x beats y"), then each attack's ASR difference. `compared`: the
    pairs' `compare` results where the caller has them already ({(x, y): [...]})."""
    lines = [f"| {x_name} | {y_name} | clean fraction | cells | {x_name} ASR / BA | {y_name} ASR / BA | "
             "ASR difference [95 %] | BA difference [95 %] | verdict | per attack: ASR difference [95 %] |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for x, y in pairs:
        for got in (compared or {}).get((x, y)) or compare(rows, x, y, implanted_above):
            p = got["paired"]
            images = got["images"].replace(" clean images", "")
            if p is None:
                lines.append(f"| {x} | {y} | {got['clean_fraction']:g}{images} | 0 | | | | | no implanted attack | |")
                continue
            v = verdict(p, margin)
            v = {"holds": f"{x} beats {y}", "contradicted": f"{y} beats {x}"}.get(v, v)
            per = "; ".join(f"{a} {_ci(q.asr)}" for a, q in got["per_attack"].items())
            lines.append(f"| {x} | {y} | {got['clean_fraction']:g}{images} | {p.attacks} x {p.seeds}"
                         f"{'+' if p.cells > p.attacks * p.seeds else ''} | "
                         f"{100 * got['x'][0]:.1f} / {100 * got['x'][1]:.1f} | {100 * got['y'][0]:.1f} / {100 * got['y'][1]:.1f} | "
                         f"{_ci(p.asr)} | {_ci(p.ba)} | {v} | {per} |")
    return lines


def _intro(margin: float) -> str:
    return (f"A difference is the first minus the second in points, the mean over attacks of each attack's mean "
            f"over seeds, paired on the same backdoored model and clean set, with its 95 % stratified bootstrap "
            f"interval over seeds; \"beats\" = a lower ASR at a BA loss of at most {100 * margin:g} points, or the "
            f"other's BA lower by more than {100 * margin:g} (under {MIN_SEEDS} seeds: untested). Cells: attacks x "
            "seeds (+: more seeds for some attacks).")


def variant_lines(rows: list[dict], margin: float = 0.05, implanted_above: float = 0.5) -> list[str]:
    """The report's section for a campaign with variants: each against `default`, per defense."""
    pairs = []
    for d in sorted({r["defense"] for r in rows if r.get("status", "ok") == "ok"}):
        variants = sorted({_variant(r) for r in rows if r["defense"] == d})
        if "default" in variants and len(variants) > 1:
            pairs += [(f"{d}/{v}", f"{d}/default") for v in variants if v != "default"]
    if not pairs:
        return []
    return ["#### Each variant against `default`", "", _intro(margin), "",
            *table(rows, pairs, margin, implanted_above, "variant", "default"), ""]


def teacher_lines(rows: list[dict], margin: float = 0.05, implanted_above: float = 0.5) -> list[str]:
    """The report's section for defenses built on a teacher (NAD and NBA distil from it; MCR's curve
    ends at it): each against its teacher."""
    labels = []
    for d in sorted({r["defense"] for r in rows if teacher_metrics(r) is not None}):
        variants = sorted({_variant(r) for r in rows if r["defense"] == d})
        labels += [d] if len(variants) == 1 else [f"{d}/{v}" for v in variants]
    if not labels:
        return []
    return ["#### Each defense against its own teacher", "",
            "The teacher is the backdoored model fine-tuned on the same clean set (scored when it was built, on "
            "the same test images; its figures are in each row's `artifacts`): a defense that distils from it "
            "should end at least as clean as it. " + _intro(margin), "",
            *table(rows, [(lab, f"{lab}@{TEACHER}") for lab in labels], margin, implanted_above, "defense", "its teacher"),
            ""]
