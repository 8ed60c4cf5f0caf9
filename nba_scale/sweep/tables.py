"""Campaign tables in Markdown, shared by the report and `compare`: cells "ASR / BA" in %, the mean
over seeds ± the half-width of its 95 % t interval (stats.t_halfwidth), a "before" column (the backdoored model) where the columns are defenses, a mean
line over the rows, then the same cells' DER, one pair of tables per value of any other axis that
varies."""
from __future__ import annotations

import statistics
from typing import Optional

from ..stats import t_halfwidth

AXES = ("attack", "defense", "clean_fraction", "variant")


def pct(values: list[float], spread: str = "interval") -> str:
    """Mean in %, ± the 95 % t interval's half-width over `values` (seeds), or (`spread="std"`)
    their standard deviation (the spread across attacks of a mean line: a description, not an
    estimate's uncertainty)."""
    if not values:
        return "-"
    m = 100 * statistics.fmean(values)
    if len(values) == 1:
        return f"{m:.1f}"
    return f"{m:.1f}±{100 * (t_halfwidth(values) if spread == 'interval' else statistics.stdev(values)):.1f}"


def cell_text(rows: list[dict], asr: str = "asr", ba: str = "ba") -> str:
    if not rows:
        return "-"
    return f"{pct([r[asr] for r in rows])} / {pct([r[ba] for r in rows])}"


def axis_values(rows: list[dict], axis: str, order: Optional[list] = None) -> list:
    seen = {r[axis] for r in rows}
    if order:
        return [v for v in order if v in seen] + sorted(seen - set(order), key=str)
    return sorted(seen, key=str)


def before_rows(rows: list[dict]) -> list[dict]:
    """One row per backdoored model (attack, clean fraction, seed) carrying asr/ba_before."""
    seen, out = set(), []
    for r in rows:
        key = (r["attack"], r["clean_fraction"], r["seed"])
        if key not in seen:
            seen.add(key)
            out.append(r)
    return out


def pivot(rows: list[dict], row_axis: str, col_axis: str, orders: dict[str, list]) -> list[str]:
    """Markdown lines: one line per row value, one column per column value, a mean line."""
    rvals = axis_values(rows, row_axis, orders.get(row_axis))
    cvals = axis_values(rows, col_axis, orders.get(col_axis))
    with_before = col_axis == "defense"
    head = [row_axis] + (["before"] if with_before else []) + [str(c) for c in cvals]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for rv in rvals:
        mine = [r for r in rows if r[row_axis] == rv]
        cells = ([cell_text(before_rows(mine), "asr_before", "ba_before")] if with_before else [])
        cells += [cell_text([r for r in mine if r[col_axis] == cv]) for cv in cvals]
        lines.append("| " + " | ".join([str(rv), *cells]) + " |")
    if len(rvals) > 1:  # mean over rows: each row's seed-mean counts once
        def mean_of(sel, asr="asr", ba="ba"):
            per = [(statistics.fmean(r[asr] for r in g), statistics.fmean(r[ba] for r in g))
                   for g in ([r for r in sel if r[row_axis] == rv] for rv in rvals) if g]
            return f"{pct([a for a, _ in per], 'std')} / {pct([b for _, b in per], 'std')}" if per else "-"
        cells = ([mean_of(before_rows(rows), "asr_before", "ba_before")] if with_before else [])
        cells += [mean_of([r for r in rows if r[col_axis] == cv]) for cv in cvals]
        lines.append("| " + " | ".join([f"**mean over {row_axis}s** (± across them)", *cells]) + " |")
    return lines


def der_pivot(rows: list[dict], row_axis: str, col_axis: str, orders: dict[str, list]) -> list[str]:
    """BackdoorBench's defense effectiveness rating (`metrics.der`) in %, laid out as `pivot`'s
    table (mean over seeds ± the 95 % t half-width); [] where no row has one (rows from before
    2026-12-06: `python -m nba_scale.results` recomputes nothing, a missing figure stays missing)."""
    rows = [r for r in rows if isinstance(r.get("der"), (int, float)) and r["der"] == r["der"]]
    if not rows:
        return []
    rvals = axis_values(rows, row_axis, orders.get(row_axis))
    cvals = axis_values(rows, col_axis, orders.get(col_axis))
    lines = ["DER % (BackdoorBench's defense effectiveness rating: [max(0, ΔASR) − max(0, ΔBA) + 1] / 2; 50 = "
             "no change, 100 = the whole backdoor removed at no accuracy lost):", "",
             "| " + " | ".join([row_axis, *map(str, cvals)]) + " |", "|" + "---|" * (len(cvals) + 1)]
    for rv in rvals:
        mine = [r for r in rows if r[row_axis] == rv]
        lines.append("| " + " | ".join([str(rv), *(pct([r["der"] for r in mine if r[col_axis] == cv])
                                                    for cv in cvals)]) + " |")
    return lines


def clean_images(rows: list[dict]) -> str:
    """" (2,500 clean images)": how many images the defender held in `rows` (their `n_clean`), the
    count the paper's budgets are stated in; "" for rows from before it was recorded."""
    n = sorted({int(r["n_clean"]) for r in rows if r.get("n_clean")})
    return "" if not n else f" ({n[0]:,} clean images)" if len(n) == 1 else f" ({n[0]:,}-{n[-1]:,} clean images)"


def grouped_tables(rows: list[dict], row_axis: str, col_axis: str, orders: dict[str, list]) -> list[str]:
    """`pivot` per value of the axes that are neither rows nor columns and take several values
    (a `### clean_fraction 0.1` heading above each)."""
    for r in rows:
        r["variant"] = r.get("variant") or "default"
    groups = [a for a in AXES if a not in (row_axis, col_axis) and len({r[a] for r in rows}) > 1]
    lines: list[str] = []
    for key in sorted({tuple(r[a] for a in groups) for r in rows}, key=str):
        sel = [r for r in rows if tuple(r[a] for a in groups) == key]
        if groups:
            lines += ["### " + ", ".join(f"{a} {v:g}" + (clean_images(sel) if a == "clean_fraction" else "")
                                          if isinstance(v, float) else f"{a} {v}" for a, v in zip(groups, key)), ""]
        lines += pivot(sel, row_axis, col_axis, orders) + [""]
        der = der_pivot(sel, row_axis, col_axis, orders)
        lines += der + ([""] if der else [])
    return lines


def wall_times(rows: list[dict], col_axis: str) -> list[str]:
    """The median defense wall time per column value (per defense where columns are not defenses
    or variants), and of whole trials."""
    walls: dict[str, list[float]] = {}
    for r in rows:
        if r.get("time_defense_s") is not None:
            label = r[col_axis] if col_axis in ("defense", "variant") else r["defense"]
            walls.setdefault(str(label), []).append(r["time_defense_s"])
    if not walls:
        return []
    # Medians: a cell that waited behind another job on the same machine says little.
    return ["Defense wall time per cell (s, median): " + ", ".join(
        f"{k} {statistics.median(v):.0f}" for k, v in walls.items()) + "; whole trials (artifacts cached): "
        f"{statistics.median(r['wall_s'] for r in rows):.0f} s median.", ""]
