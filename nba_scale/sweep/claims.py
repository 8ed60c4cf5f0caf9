"""The paper's claims about a defenses-as-columns campaign, each a paired comparison over (attack,
seed) cells with a 95 % interval, and a verdict: holds, inconclusive or contradicted.

A campaign YAML names them (`claims:`); the report prints one table per clean fraction:

    claims:
      subject: nba              # the defense the paper's main claims are about
      implanted_above: 0.5      # attacks whose backdoored model is under this ASR in any seed are left out
      ba_margin: 0.05           # the BA a defense may give up and still "keep" it (claim 1, "beats")
      asr_margin: 0.02          # the ASR a defense may add and still remove the backdoor "as well" (claim 2)
      weaker: [fp, mcr]         # defenses the paper finds weaker than the subject
      beats: [[argd, nad]]      # other "X beats Y" claims of the paper
      reversed_at: {0.01: argd} # budgets where the paper says this defense beats the subject

**What "beats" means.** X beats Y where X's ASR is lower *at a bounded BA loss*: X's ASR is
significantly lower and X's BA is not lower by more than `ba_margin` (both one-sided at
97.5 %, an intersection-union test, so the pair is a 95 % test without correction); or Y's BA is
significantly lower than X's by more than `ba_margin` (Y bought its ASR with the clean accuracy a
user needs: NAD at 11-40 % BA on GTSRB beats nothing). Y beating X by the same rule contradicts
the claim; anything else is inconclusive. ASR at a bounded BA loss rather than Pareto dominance:
the paper ranks defenses by ASR and asks that BA stay close, and a dominance test would call a
defense that removes 77 points more of the backdoor at 3.5 points of BA (NBA vs FP, CIFAR-10)
"not better". The margins are choices, set in the YAML: 5 points of BA is a few points kept apart
from a collapse; 2 points of ASR is about one trial's own Wilson half-width on ~1,800 triggered
images (stats.py), a difference the test set cannot see.

The claims: (1) the subject beats every other defense, over all attacks and per attack; (2) the
subject has the highest BA among the defenses that remove the backdoor as well as it does (the
same rule, BA first, ASR within `asr_margin`), with no ASR cut-off (the paper has none); (3) each
`weaker` defense is beaten by the subject; (4) each `beats` pair. Where the paper makes the
opposite claim (`reversed_at`: at 1 % clean data "NBA fails to perform as well as ARGD"), that
claim is checked instead of (1)-(3).

**The interval.** Differences are paired: the same attack and seed means the same backdoored
model (and clean set) for both defenses. The figure is the mean over attacks of each attack's
mean difference over seeds; its interval is a stratified bootstrap, seeds resampled within each
attack (stats.stratified_bootstrap), so it measures the seed-to-seed noise of training, the
larger one here. Under three seeds of an attack nothing is tested.
"""
from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Optional

from ..config import ConfigError
from ..stats import stratified_bootstrap, t_halfwidth

if TYPE_CHECKING:
    import numpy as np

KEYS = {"subject", "implanted_above", "ba_margin", "asr_margin", "weaker", "beats", "reversed_at"}
MIN_SEEDS = 3


def check_spec(spec: Any, defenses: list[str], where: str) -> dict[str, Any]:
    """The YAML's `claims` mapping, checked (a typo fails in one line when the campaign loads)."""
    if isinstance(spec, dict) and "removes_below" in spec:
        raise ConfigError(f"{where}: claims.removes_below is gone (the paper has no ASR cut-off): delete it; "
                          "claims.ba_margin (default 0.05) bounds the BA a defense may give up")
    if not isinstance(spec, dict) or set(spec) - KEYS:
        raise ConfigError(f"{where}: 'claims' must be a mapping of {', '.join(sorted(KEYS))}")
    out = {"subject": spec.get("subject", "nba"), "implanted_above": spec.get("implanted_above", 0.5),
           "ba_margin": spec.get("ba_margin", 0.05), "asr_margin": spec.get("asr_margin", 0.02), "weaker": list(spec.get("weaker") or []),
           "beats": [list(p) if isinstance(p, (list, tuple)) else p for p in spec.get("beats") or []],
           "reversed_at": dict(spec.get("reversed_at") or {})}
    for pair in out["beats"]:
        if not (isinstance(pair, list) and len(pair) == 2 and pair[0] != pair[1]):
            raise ConfigError(f"{where}: claims.beats must list pairs of two defenses, e.g. [[argd, nad]]; got {pair!r}")
    named = [out["subject"], *out["weaker"], *(d for p in out["beats"] for d in p), *out["reversed_at"].values()]
    for name in named:
        if name not in defenses:
            raise ConfigError(f"{where}: claims name defense {name!r}, which is not in the campaign's defenses "
                              f"({', '.join(defenses)})")
    for key in ("implanted_above", "ba_margin", "asr_margin"):
        if isinstance(out[key], bool) or not isinstance(out[key], (int, float)) or not 0 <= out[key] <= 1:
            raise ConfigError(f"{where}: claims.{key} must be a fraction in [0, 1], e.g. 0.05 for 5 points")
    for cf in out["reversed_at"]:
        if isinstance(cf, bool) or not isinstance(cf, (int, float)) or not 0 < cf <= 1:
            raise ConfigError(f"{where}: claims.reversed_at must map clean fractions to defenses, e.g. {{0.01: argd}}")
    return out


def implanted(rows: list[dict], threshold: float) -> tuple[list[str], dict[str, dict[int, float]]]:
    """Attacks whose backdoored model reached `threshold` ASR in every seed (a seed where the
    trigger was not learnt has no backdoor for a defense to remove), and every attack's
    before-defense ASR per seed."""
    before: dict[str, dict[int, float]] = {}
    for r in rows:
        before.setdefault(r["attack"], {})[r["seed"]] = r["asr_before"]
    return [a for a, v in before.items() if min(v.values()) >= threshold], before


def per_seed(rows: list[dict], attacks: list[str]) -> dict[int, dict[str, tuple[float, float]]]:
    """{seed: {defense: (mean ASR, mean BA) over `attacks`}}, for the seeds where every defense
    has a row for every one of them (a half-finished seed would compare unlike means)."""
    cells = {(r["seed"], r["defense"], r["attack"]): r for r in rows if r["attack"] in attacks}
    defenses = sorted({r["defense"] for r in rows})
    out = {}
    for s in sorted({r["seed"] for r in rows}):
        if all((s, d, a) in cells for d in defenses for a in attacks):
            out[s] = {d: (statistics.fmean(cells[s, d, a]["asr"] for a in attacks),
                          statistics.fmean(cells[s, d, a]["ba"] for a in attacks)) for d in defenses}
    return out


@dataclass(frozen=True)
class Paired:
    """x minus y over the (attack, seed) cells both have: ASR and BA differences (fractions), each
    (point, low, high); `seeds` the fewest seeds of any attack."""
    x: str
    y: str
    attacks: int
    cells: int
    seeds: int
    asr: tuple[float, float, float]
    ba: tuple[float, float, float]

    @classmethod
    def of(cls, x: str, y: str, strata: list["np.ndarray"]) -> "Paired":
        """From per-attack arrays of (ASR, BA) differences, a row per seed."""
        point, lo, hi = stratified_bootstrap(strata)
        return cls(x, y, len(strata), sum(len(s) for s in strata), min(len(s) for s in strata),
                   (point[0], lo[0], hi[0]), (point[1], lo[1], hi[1]))


def paired(rows: list[dict], x: str, y: str, attacks: list[str]) -> Optional[Paired]:
    cells = {(r["defense"], r["attack"], r["seed"]): r for r in rows}
    import numpy as np

    strata = []
    for a in attacks:
        seeds = sorted(s for (d, at, s) in cells if d == x and at == a and (y, a, s) in cells)
        if seeds:
            strata.append(np.array([[cells[x, a, s]["asr"] - cells[y, a, s]["asr"],
                                     cells[x, a, s]["ba"] - cells[y, a, s]["ba"]] for s in seeds]))
    return Paired.of(x, y, strata) if strata else None


def verdict(p: Paired, margin: float, ba_first: bool = False) -> str:
    """Whether x beats y (module docstring): by ASR at a BA loss of at most `margin`, or
    (`ba_first`) by BA at an ASR cost of at most `margin`. Gains are x's advantage over y (ASR
    lower, BA higher)."""
    if p.seeds < MIN_SEEDS:
        return f"untested ({p.seeds} seed{'s' * (p.seeds != 1)}; {MIN_SEEDS} needed)"
    asr_gain = (-p.asr[0], -p.asr[2], -p.asr[1])
    first, second = (p.ba, asr_gain) if ba_first else (asr_gain, p.ba)
    if first[2] < 0 and second[2] < margin:
        return "contradicted"
    if (first[1] > 0 and second[1] > -margin) or second[1] > margin:
        return "holds"
    return "inconclusive"


def _overall(parts: list[tuple[str, str]]) -> str:
    """One verdict from several: contradicted by any, holds if all hold, else inconclusive."""
    against = [d for d, v in parts if v == "contradicted"]
    if against:
        return "contradicted (by " + ", ".join(against) + ")"
    if any(v.startswith("untested") for _, v in parts):
        return next(v for _, v in parts if v.startswith("untested"))
    open_ = [d for d, v in parts if v != "holds"]
    return "holds" if not open_ else "inconclusive (vs " + ", ".join(open_) + ")"


def _ci(t: tuple[float, float, float]) -> str:
    return f"{100 * t[0]:+.1f} [{100 * t[1]:+.1f}, {100 * t[2]:+.1f}]"


def difference(p: Paired) -> str:
    return f"ASR {_ci(p.asr)}, BA {_ci(p.ba)}"


def evaluate(rows: list[dict], spec: dict[str, Any]) -> dict[str, Any]:
    """The claims on one clean fraction's rows: {"attacks", "left_out", "seeds", "means",
    "reversed", "claims": [...], "per_attack": {attack: {defense: (Paired, verdict)}}}; each claim
    {"claim", "verdict", "rows": [(label, Paired, verdict)]}."""
    subj, bam, asm = spec["subject"], spec["ba_margin"], spec["asr_margin"]
    attacks, before = implanted(rows, spec["implanted_above"])
    attacks = sorted(attacks)
    fractions = {r["clean_fraction"] for r in rows}
    rev = next((d for cf, d in spec.get("reversed_at", {}).items() if any(abs(cf - f) < 1e-9 for f in fractions)), None)
    seeds = per_seed(rows, attacks) if attacks else {}
    defenses = sorted({r["defense"] for r in rows})
    out: dict[str, Any] = {"attacks": attacks, "left_out": {a: v for a, v in before.items() if a not in attacks},
                           "seeds": sorted(seeds), "reversed": rev, "claims": [], "per_attack": {}, "means": {}}
    if not attacks:
        return out
    for d in defenses:
        if seeds:
            asr, ba = [seeds[s][d][0] for s in seeds], [seeds[s][d][1] for s in seeds]
            out["means"][d] = (statistics.fmean(asr), t_halfwidth(asr), statistics.fmean(ba), t_halfwidth(ba))

    def pair_claim(text: str, x: str, y: str, ba_first: bool = False) -> None:
        p = paired(rows, x, y, attacks)
        if p is not None:
            v = verdict(p, asm if ba_first else bam, ba_first)
            out["claims"].append({"claim": text, "verdict": v, "rows": [("", p, v)]})

    def versus_all(text: str, ba_first: bool) -> None:
        parts = [(d, p, verdict(p, asm if ba_first else bam, ba_first)) for d in defenses if d != subj
                 for p in [paired(rows, subj, d, attacks)] if p is not None]
        if parts:
            out["claims"].append({"claim": text, "verdict": _overall([(d, v) for d, _, v in parts]),
                                  "rows": [(f"vs {d}", p, v) for d, p, v in parts]})

    if subj in defenses and rev is None:
        versus_all(f"{subj} beats every other defense", False)
        versus_all(f"{subj} has the highest BA of the defenses that remove the backdoor as well "
                   f"(a higher BA at ≤ {100 * asm:g} points of ASR more)", True)
        for d in (d for d in spec["weaker"] if d in defenses):  # a grid run with --only may lack them
            pair_claim(f"{d} is weaker than {subj}", subj, d)
        for a in attacks:
            out["per_attack"][a] = {d: (p, verdict(p, bam)) for d in defenses if d != subj
                                    for p in [paired(rows, subj, d, [a])] if p is not None}
    elif rev is not None and {rev, subj} <= set(defenses):
        pair_claim(f"{rev} beats {subj} (the paper's claim at this budget, the reverse of its 5 % one)", rev, subj)
    for x, y in spec.get("beats", []):
        if x in defenses and y in defenses:
            pair_claim(f"{x} beats {y}", x, y)
    return out


def _mean_text(means: dict, d: str) -> str:
    if d not in means:
        return d
    a, ah, b, bh = means[d]
    pm = (lambda h: "" if h != h else f"±{100 * h:.1f}")  # NaN: one seed
    return f"{d} {100 * a:.1f}{pm(ah)} / {100 * b:.1f}{pm(bh)}"


def claim_lines(rows: list[dict], spec: dict[str, Any], label: str = "") -> list[str]:
    """Markdown: the claims table of one clean fraction's rows, the subject's per-attack table,
    and what was left out and why."""
    got = evaluate(rows, spec)
    head = [f"#### The paper's claims at this budget{label}", ""]
    if not got["claims"]:
        return head + ["Not checked: no pair of the claims' defenses shares an attack that implanted in every seed "
                       f"({', '.join(got['attacks']) or 'none'}).", ""]
    margin = f"{100 * spec['ba_margin']:g}"
    lines = head + [
        f"Over the {len(got['attacks'])} attack{'s' * (len(got['attacks']) != 1)} that implanted in every seed "
        f"({', '.join(got['attacks'])}) and "
        f"seeds {got['seeds'] or sorted({r['seed'] for r in rows})}. A difference is the first defense minus the "
        "second, in points, averaged over attacks (each attack's mean over seeds), with its 95 % stratified "
        "bootstrap interval over seeds; \"beats\" means a lower ASR at a BA loss of at most "
        f"{margin} points, or the other's BA lower by more than {margin} (nba_scale/sweep/claims.py).", ""]
    if got["reversed"]:
        lines += [f"At this budget the paper says {got['reversed']} beats {spec['subject']}, so that is checked "
                  f"instead of {spec['subject']}'s claims.", ""]
    if got["means"]:
        lines += ["Means over attacks, ASR / BA in % ± the 95 % t interval over seeds: "
                  + "; ".join(_mean_text(got["means"], d) for d in got["means"]) + ".", ""]
    lines += ["| claim | difference (points) [95 % interval] | verdict |", "|---|---|---|"]
    for c in got["claims"]:
        if len(c["rows"]) == 1:
            lines.append(f"| {c['claim']} | {difference(c['rows'][0][1])} | {c['verdict']} |")
            continue
        lines.append(f"| {c['claim']} | | {c['verdict']} |")
        lines += [f"| &nbsp;&nbsp;{lab} | {difference(p)} | {v} |" for lab, p, v in c["rows"]]
    if got["per_attack"]:
        others = [d for d in sorted({d for v in got["per_attack"].values() for d in v})]
        lines += ["", f"Per attack, {spec['subject']} against each (ASR difference [95 % interval] over seeds, "
                  "then the verdict of \"beats\"):", "",
                  "| attack | " + " | ".join(f"vs {d}" for d in others) + " |", "|---|" + "---|" * len(others)]
        for a, per in got["per_attack"].items():
            cells = [f"{_ci(per[d][0].asr)}: {per[d][1]}" if d in per else "-" for d in others]
            lines.append(f"| {a} | " + " | ".join(cells) + " |")
    if got["left_out"]:
        lines += ["", f"Left out (the backdoor did not implant: backdoored model under {100 * spec['implanted_above']:g} % "
                  "ASR in some seed): " + "; ".join(
                      f"{a} ({', '.join(f'seed {s} {100 * m:.1f} %' for s, m in sorted(v.items()))})"
                      for a, v in sorted(got["left_out"].items())) + "."]
    return lines + [""]
