"""Confirmation over seeds (`tune --confirm N`): the validation front, run again where it was not chosen.

A search picks its front on one seed's selection split: the points on it are partly the lucky
ones of that backdoored model, teacher and draw. When the search ends, each point on a study's
validation front, and the paper's default, runs again at N fresh seeds (the search's seed + 1 ...
+ N), each seed with its own backdoored model, teacher, clean subset and defense seed, and the
same seeds for every point, so that two points are compared on the same models (paired). These
are fixed configurations, run as a campaign's cells are (sweep/campaign.py `run_cells`: packs with
`--pack`, resumed by cell: a row with status ok is done, anything else runs again under the same
trial id, so a (point, seed) never has two rows). Rows say `stage = confirm`, `confirm_of` (the
search trial whose point it is) and `on_val_front`; every reader of the search (resume, the
Optuna study, the search front) leaves them out.

The confirmed front is the Pareto front of the points' means over seeds (test split). Each point
is compared with the default, paired by seed: the mean difference and its 95 % t interval over
seeds (stats.t_halfwidth), and whether it is distinguishable (the interval excludes 0) in ASR and
in BA. `python -m nba_scale.results DIR/NAME --confirmed` prints it again; tune draws it to
`DIR/NAME/_confirmed.png`.
"""
from __future__ import annotations

import json
import math
import statistics
from pathlib import Path
from typing import Any, Optional

from ..config import ConfigError, merge, nest
from ..stats import t_halfwidth
from .plan import CONFIRM, StudyPlan
from .store import is_confirm, pareto_mask, selected

STAGE = CONFIRM  # the rows' `stage` (store.is_confirm)


def confirm_seeds(seed: int, n: int) -> list[int]:
    """N seeds after the search's own: the search chose its front on that one."""
    return [seed + 1 + i for i in range(n)]


def candidates(rows: list[dict[str, Any]], space) -> list[dict[str, Any]]:
    """The points to confirm, for one study's search rows: those on its validation front (the
    front `results --pareto` shows: store.selected), then the paper's default (whether or not it
    is on the front). Each {"point", "of" (a search trial id, or None), "on_val_front", "is_default"}."""
    from .resume import point_of_row

    ok = [r for r in rows if r.get("status") == "ok" and not is_confirm(r)]
    keep = pareto_mask([selected(r, "asr") for r in ok], [selected(r, "ba") for r in ok])
    default = space.default_point()
    out: dict[str, dict[str, Any]] = {}
    for r, on_front in [*sorted(((r, True) for r, k in zip(ok, keep) if k), key=lambda t: selected(t[0], "asr")),
                        *((r, False) for r in ok)]:
        point = point_of_row(space, r)
        if point is None or not (on_front or point == default):
            continue
        out.setdefault(json.dumps(point, sort_keys=True), {"point": point, "of": r["trial_id"], "on_val_front": on_front,
                                                           "is_default": point == default})
    if not any(c["is_default"] for c in out.values()):  # the default failed or never ran in the search
        out[json.dumps(default, sort_keys=True)] = {"point": default, "of": None, "on_val_front": False,
                                                   "is_default": True}
    return list(out.values())


def point_tag(point: dict[str, Any]) -> str:
    import hashlib

    return hashlib.sha256(json.dumps(point, sort_keys=True).encode()).hexdigest()[:8]


def cells(sweep: str, study: str, base: dict[str, Any], found: list[dict[str, Any]], seeds: list[int]
          ) -> list[dict[str, Any]]:
    """One campaign-style cell per (point, seed): its whole trial config and its row's identity.
    The id is the point's hash and the seed, so a resumed confirmation finds its own rows."""
    from .search_space import decode

    out = []
    for c in found:
        params = nest({k: decode(v) for k, v in c["point"].items()})
        for s in seeds:
            cid = f"confirm-{study}-{point_tag(c['point'])}-s{s}"
            out.append({"id": cid, "config": merge(merge(base, {"seed": s}), params),
                        "row": {"sweep": sweep, "study": study, "trial_id": cid, "stage": STAGE,
                                "confirm_of": c["of"], "on_val_front": c["on_val_front"],
                                "is_default": c["is_default"], "confirm_point": point_tag(c["point"])}})
    return out


def run(args, studies: list[StudyPlan], space, root: Path, sweep: str, shape,
        concurrency: int) -> None:
    """The confirmation stage of a sweep whose search has ended: every study's cells, the
    artifacts of the new seeds built first, the finished ones (a row with status ok) skipped."""
    from .campaign import run_cells
    from .execution import logger_callbacks, prebuild, weak_backdoors
    from .tune import min_backdoor_asr

    seeds = confirm_seeds(args.seed, args.confirm)
    rows = _rows(root)  # read once: the search's rows choose the points, the confirmation's say what is done
    done = {r["trial_id"] for r in rows if is_confirm(r) and r.get("status") == "ok"}
    todo: list[dict[str, Any]] = []
    for plan in studies:
        study, base = plan.id, plan.base
        found = candidates([r for r in rows if r.get("study") == study], space)
        mine = cells(sweep, study, base, found, seeds)
        left = [c for c in mine if c["id"] not in done]
        default_on = any(c["is_default"] and c["on_val_front"] for c in found)
        print(f"[{study}] confirming {len(found)} points ({sum(c['on_val_front'] for c in found)} on the validation "
              f"front, {'the paper default among them' if default_on else 'and the paper default'}) "
              f"at seeds {seeds}: {len(mine)} trials, {len(mine) - len(left)} done already", flush=True)
        if left:
            built = prebuild(f"{study} confirm", [c["config"] for c in left], args.address, shape.gpus)
            weak = weak_backdoors(built, min_backdoor_asr(args))
            if weak:  # kept, as a campaign keeps its cells: the summary leaves such seeds out
                print(f"[{study}] note: the backdoored model of {', '.join(weak)} is under "
                      f"{min_backdoor_asr(args):.0%} ASR: its confirmation seed says little", flush=True)
        todo += left
    if todo:
        run_cells(f"{sweep} confirm", root, todo, shape, concurrency, args.pack, tune_dir=root / "_tune" / "_confirm",
                  sweep=sweep, loggers=logger_callbacks(args.callback, root, f"{sweep}-confirm"))


def _rows(root: Path) -> list[dict[str, Any]]:
    from .store import read_table

    return read_table(root).to_pylist() if root.exists() else []


def summary(rows: list[dict[str, Any]], min_asr: float = 0.0) -> list[dict[str, Any]]:
    """Per study and point: the mean over seeds of the test figures with their t intervals, the
    paired difference from the default (same seeds), and whether the point is on the confirmed
    front. Seeds whose backdoored model is under `min_asr` are left out (no backdoor to remove),
    as are seeds where the default has no ok row (nothing to pair with)."""
    ok = [r for r in rows if is_confirm(r) and r.get("status") == "ok" and r.get("asr_before", 1.0) >= min_asr]
    out = []
    for study in sorted({r["study"] for r in ok}):
        mine = [r for r in ok if r["study"] == study]
        default = {r["seed"]: r for r in mine if r.get("is_default")}
        points: dict[str, list[dict]] = {}
        for r in mine:
            points.setdefault(r["confirm_point"], []).append(r)
        entries = []
        for tag, rs in points.items():
            rs = sorted(rs, key=lambda r: r["seed"])
            e = {"study": study, "point": tag, "confirm_of": rs[0].get("confirm_of"),
                 "default": bool(rs[0].get("is_default")), "on_val_front": bool(rs[0].get("on_val_front")),
                 "seeds": [r["seed"] for r in rs], "params": _params(rs[0])}
            for m in ("asr", "ba"):
                vals = [r[m] for r in rs]
                e[m], e[f"{m}_pm"] = statistics.fmean(vals), t_halfwidth(vals)
                diffs = [r[m] - default[r["seed"]][m] for r in rs if r["seed"] in default]
                e[f"d_{m}"] = statistics.fmean(diffs) if diffs and not e["default"] else math.nan
                e[f"d_{m}_pm"] = t_halfwidth(diffs) if not e["default"] else math.nan
            e["vs_default"] = "-" if e["default"] else _versus(e)
            entries.append(e)
        keep = pareto_mask([e["asr"] for e in entries], [e["ba"] for e in entries])
        for e, k in zip(entries, keep):
            e["confirmed_front"] = k
        out += sorted(entries, key=lambda e: e["asr"])
    return out


def _params(row: dict[str, Any]) -> dict[str, Any]:
    """The row's defense parameters (their columns: `nba_lambda1` ...)."""
    return {k: v for k, v in row.items() if k.startswith(f"{row.get('defense')}_")}


def _versus(e: dict[str, Any]) -> str:
    """In words: which figures differ from the default's beyond the seed noise (paired t, 95 %)."""
    if not math.isfinite(e["d_asr_pm"]):
        return "too few seeds to tell"
    said = []
    for m, better in (("asr", -1), ("ba", 1)):
        d, h = e[f"d_{m}"], e[f"d_{m}_pm"]
        if abs(d) > h:
            said.append(f"{m.upper()} {'better' if d * better > 0 else 'worse'}")
    return ", ".join(said) or "indistinguishable"


def lines(entries: list[dict[str, Any]]) -> list[str]:
    """The confirmed fronts as a text table, one line per point, with the parameters that vary."""
    if not entries:
        return ["no confirmation rows yet"]
    keys = sorted({k for e in entries for k in e["params"] if len({str(x["params"].get(k)) for x in entries}) > 1})
    head = ["study", "point", "front", "seeds", "ASR %", "BA %", "ΔASR vs default", "ΔBA vs default", "vs default", *keys]
    out = [head]
    for e in entries:
        mark = ("C" if e["confirmed_front"] else "") + ("v" if e["on_val_front"] else "") + ("*" if e["default"] else "")
        out.append([e["study"], e["point"], mark, str(len(e["seeds"])), _pm(e["asr"], e["asr_pm"]), _pm(e["ba"], e["ba_pm"]),
                    _pm(e["d_asr"], e["d_asr_pm"], True), _pm(e["d_ba"], e["d_ba_pm"], True), e["vs_default"],
                    *(f"{e['params'].get(k):.4g}" if isinstance(e["params"].get(k), float) else str(e["params"].get(k))
                      for k in keys)])
    widths = [max(len(r[i]) for r in out) for i in range(len(head))]
    return ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in out]


def _pm(v: float, h: float, signed: bool = False) -> str:
    if not math.isfinite(v):
        return "-"
    text = f"{100 * v:+.1f}" if signed else f"{100 * v:.1f}"
    return text + (f" ± {100 * h:.1f}" if math.isfinite(h) else "")


def report(root: Path, min_asr: float = 0.0, plot_path: Optional[Path] = None) -> list[dict[str, Any]]:
    """Print the confirmed fronts of a sweep folder (and draw them); returns the summary."""
    entries = summary(_rows(root), min_asr)
    print("Confirmed front over seeds (test split): ASR and BA are means over the confirmation seeds ± the 95 % t "
          "interval; Δ vs default is paired by seed (same backdoored models), ± its 95 % t interval. front: C = on the "
          "confirmed front, v = was on the validation front, * = the paper's default")
    print("\n".join(lines(entries)))
    for study in sorted({e["study"] for e in entries}):
        mine = [e for e in entries if e["study"] == study and not e["default"]]
        val = [e for e in mine if e["on_val_front"]]
        print(f"[{study}] {sum(e['confirmed_front'] for e in val)} of {len(val)} validation-front points on the confirmed "
              f"front; {sum(e['vs_default'] not in ('indistinguishable', 'too few seeds to tell') for e in mine)} "
              "distinguishable from the default", flush=True)
    if plot_path and entries:
        plot(entries, plot_path)
        print(f"confirmed front plot: {plot_path}", flush=True)
    return entries


def plot(entries: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..atomic import save_figure

    studies = sorted({e["study"] for e in entries})
    fig, axes = plt.subplots(1, len(studies), figsize=(4.8 * len(studies), 4.2), squeeze=False)
    for ax, study in zip(axes[0], studies):
        mine = [e for e in entries if e["study"] == study]
        for e in mine:
            colour = "k" if e["default"] else ("C3" if e["confirmed_front"] else "C0")
            ax.errorbar([100 * e["asr"]], [100 * e["ba"]], xerr=_bar(e, "asr"), yerr=_bar(e, "ba"),
                        fmt="*" if e["default"] else "o", color=colour, ms=11 if e["default"] else 6, capsize=2, lw=0.8)
        front = sorted((100 * e["asr"], 100 * e["ba"]) for e in mine if e["confirmed_front"])
        ax.step([a for a, _ in front], [b for _, b in front], where="post", color="C3", lw=1, label="confirmed front")
        ax.plot([], [], "k*", label="paper default")
        ax.set_xlabel("ASR % (lower is better)")
        ax.set_ylabel("BA % (higher is better)")
        ax.set_title(f"{study}: means over seeds {mine[0]['seeds']}, 95 % t", fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    save_figure(fig, str(path))


def _bar(e: dict[str, Any], m: str) -> list[list[float]]:
    """The t interval in %, cut at 0 and 100 (at two or three seeds it can reach past both)."""
    h = e[f"{m}_pm"] if math.isfinite(e[f"{m}_pm"]) else 0.0
    return [[100 * min(h, e[m])], [100 * min(h, 1 - e[m])]]


def check(args) -> None:
    """`--confirm` refused where it cannot work, before Ray starts."""
    if args.confirm < 0:
        raise ConfigError(f"--confirm {args.confirm}: give a number of seeds, e.g. --confirm 3 (0: no confirmation)")
    if args.confirm and args.objective == "worst-case":
        raise ConfigError("--confirm runs each point as one trial per seed and attack; with --objective worst-case "
                          "confirm the chosen point with python -m nba_scale.campaign or --objective per-attack")
