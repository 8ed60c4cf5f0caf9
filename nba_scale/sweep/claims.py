"""The paper's claims about a defenses-as-columns campaign, checked against its rows, point by point.

A campaign YAML names them (`claims:`); the report prints one table per clean fraction:

    claims:
      subject: nba            # the defense the claims are about
      removes_below: 0.10     # a defense "removes the backdoor" where its mean ASR over attacks is at most this
      implanted_above: 0.5    # attacks whose backdoored model is under this ASR in any seed are left out
      weaker: [fp, mcr]       # defenses the paper finds weaker (a higher mean ASR than the subject's)

Every figure is a mean over the attacks that implanted in every seed; a claim is checked on the
mean over seeds and in each seed on its own, so a verdict says whether it holds beyond the
seed-to-seed spread.
"""
from __future__ import annotations

import statistics
from typing import Any

from ..config import ConfigError
from .tables import pct

KEYS = {"subject", "removes_below", "implanted_above", "weaker"}


def check_spec(spec: Any, defenses: list[str], where: str) -> dict[str, Any]:
    """The YAML's `claims` mapping, checked (a typo fails in one line when the campaign loads)."""
    if not isinstance(spec, dict) or set(spec) - KEYS:
        raise ConfigError(f"{where}: 'claims' must be a mapping of {', '.join(sorted(KEYS))}")
    out = {"subject": spec.get("subject", "nba"), "removes_below": spec.get("removes_below", 0.10),
           "implanted_above": spec.get("implanted_above", 0.5), "weaker": list(spec.get("weaker") or [])}
    for name in [out["subject"], *out["weaker"]]:
        if name not in defenses:
            raise ConfigError(f"{where}: claims name defense {name!r}, which is not in the campaign's defenses "
                              f"({', '.join(defenses)})")
    for key in ("removes_below", "implanted_above"):
        if not isinstance(out[key], (int, float)) or not 0 <= out[key] <= 1:
            raise ConfigError(f"{where}: claims.{key} must be a fraction in [0, 1], e.g. 0.1 for 10 %")
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


def _verdict(on_mean: bool, held: int, seeds: int) -> str:
    if on_mean and held == seeds:
        return "reproduces" + (" (every seed)" if seeds > 1 else " (one seed)")
    if on_mean:
        return f"on the mean only ({held} of {seeds} seeds)"
    return "does not reproduce" + (f" ({held} of {seeds} seeds hold it)" if seeds > 1 else "")


def evaluate(rows: list[dict], spec: dict[str, Any]) -> dict[str, Any]:
    """The claims on one clean fraction's rows: {"attacks", "left_out", "seeds", "claims": [...]},
    each claim {"claim", "here", "held", "seeds", "verdict", "holds"} (holds: on the mean)."""
    subj, cut = spec["subject"], spec["removes_below"]
    attacks, before = implanted(rows, spec["implanted_above"])
    left_out = {a: v for a, v in before.items() if a not in attacks}
    seeds = per_seed(rows, attacks) if attacks else {}
    out = {"attacks": sorted(attacks), "left_out": left_out, "seeds": sorted(seeds), "claims": []}
    if not seeds or subj not in next(iter(seeds.values())):
        return out
    defenses = list(next(iter(seeds.values())))
    asr = {d: [seeds[s][d][0] for s in seeds] for d in defenses}
    ba = {d: [seeds[s][d][1] for s in seeds] for d in defenses}
    mean = {d: (statistics.fmean(asr[d]), statistics.fmean(ba[d])) for d in defenses}
    n = len(seeds)

    def add(claim: str, here: str, on_mean: bool, held: int) -> None:
        out["claims"].append({"claim": claim, "here": here, "held": held, "seeds": n, "holds": on_mean,
                              "verdict": _verdict(on_mean, held, n)})

    others = [d for d in defenses if d != subj]
    if not others:
        return out
    best = min(others, key=lambda d: mean[d][0])
    add(f"{subj} has the lowest mean ASR of the {len(defenses)} defenses",
        f"{subj} {pct(asr[subj])}; lowest of the others: {best} {pct(asr[best])}",
        all(mean[subj][0] < mean[d][0] for d in others),
        sum(all(seeds[s][subj][0] < seeds[s][d][0] for d in others) for s in seeds))

    def removers(means: dict[str, tuple[float, float]]) -> list[str]:
        return sorted((d for d in defenses if means[d][0] <= cut), key=lambda d: -means[d][1])

    top = removers(mean)
    add(f"{subj} has the highest BA of the defenses that remove the backdoor (mean ASR ≤ {100 * cut:g} %)",
        ("removers by BA: " + ", ".join(f"{d} {pct(ba[d])}" for d in top)) if top else "no defense removes it",
        bool(top) and top[0] == subj, sum(bool(r) and r[0] == subj for r in (removers(seeds[s]) for s in seeds)))
    for d in (d for d in spec["weaker"] if d in defenses):  # a grid run with --only may lack them
        add(f"{d} is weaker than {subj} (a higher mean ASR)", f"{d} {pct(asr[d])} vs {subj} {pct(asr[subj])}",
            mean[d][0] > mean[subj][0], sum(seeds[s][d][0] > seeds[s][subj][0] for s in seeds))
    return out


def claim_lines(rows: list[dict], spec: dict[str, Any], label: str = "") -> list[str]:
    """Markdown: the claims table of one clean fraction's rows, with what was left out and why."""
    got = evaluate(rows, spec)
    head = [f"#### The paper's claims at this budget{label}", ""]
    if not got["claims"]:
        return head + ["Not checked: no seed has every defense on every attack that implanted in every seed "
                       f"({', '.join(got['attacks']) or 'none'}).", ""]
    lines = head + [f"Means over the {len(got['attacks'])} attacks that implanted ({', '.join(got['attacks'])}), "
                    f"ASR and BA in %, mean ± std over seeds {got['seeds']}.", "",
                    "| claim | here | verdict |", "|---|---|---|"]
    lines += [f"| {c['claim']} | {c['here']} | {c['verdict']} |" for c in got["claims"]]
    if got["left_out"]:
        lines += ["", f"Left out (the backdoor did not implant: backdoored model under {100 * spec['implanted_above']:g} % "
                  "ASR in some seed): " + "; ".join(
                      f"{a} ({', '.join(f'seed {s} {100 * m:.1f} %' for s, m in sorted(v.items()))})"
                      for a, v in sorted(got["left_out"].items())) + "."]
    return lines + [""]
