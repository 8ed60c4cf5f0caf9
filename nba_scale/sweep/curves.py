"""How each defense trained: the curves a sweep or a campaign keeps beside its rows.

Every trial's members report, per defense epoch, the epoch's mean training loss and, where the
defense's loss is made of terms, each term as it enters the loss (NBA: `loss_ce`, `loss_ldl`,
`loss_udl` and the weighted `loss_ldl_rnb`, `loss_ldl_lnb`, `loss_ldl_pnb`, `loss_udl_*`; NAD:
`loss_ce`, `loss_at`; ARGD: `loss_ce`, `loss_vertex`, `loss_edge`, `loss_embed`; the others
their cross-entropy as `loss`), plus `asr`/`ba`/`ra` on the epochs a scheduler scored. The driver
keeps them in `DIR/NAME/_curves/` (store.write_curves), one record per trial member and epoch,
joined to the rows by `trial_id`.

    python -m nba_scale.results DIR/NAME --curves                  # each trial's last epoch, per term
    python -m nba_scale.results DIR/NAME --curves --plot curves.png
    python -m nba_scale.results DIR/NAME --sql "SELECT study, epoch, avg(loss_udl) FROM curves GROUP BY 1, 2"
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Optional

import pyarrow as pa

ID = ("sweep", "campaign", "study", "stage", "trial_id", "pack_id", "variant", "dataset", "attack", "defense",
      "clean_fraction", "seed", "member", "epoch")


def terms(table: pa.Table) -> list[str]:
    """The curves' loss columns: the total first, then each term (CE first)."""
    names = [c for c in table.column_names if c == "loss" or c.startswith("loss_")]
    return sorted(names, key=lambda c: (c != "loss", c != "loss_ce", c.count("_"), c))


def last_epochs(table: pa.Table) -> list[dict[str, Any]]:
    """Each trial member's last reported epoch, with its loss terms: where a defense ended, and
    whether its loss had settled (`loss_first`: the first epoch's loss, beside the last)."""
    first: dict[tuple, dict[str, Any]] = {}
    last: dict[tuple, dict[str, Any]] = {}
    for r in table.to_pylist():
        key = (r.get("trial_id"), r.get("member"))
        if key not in first or r["epoch"] < first[key]["epoch"]:
            first[key] = r
        if key not in last or r["epoch"] > last[key]["epoch"]:
            last[key] = r
    names = terms(table)
    out = []
    for key, r in sorted(last.items(), key=lambda kv: (str(kv[1].get("study")), str(kv[0][0]), kv[0][1] or 0)):
        row = {k: r.get(k) for k in ("study", "trial_id", "defense", "attack", "clean_fraction", "epoch") if k in r}
        row["loss_first"] = first[key].get("loss")
        row.update({n: r.get(n) for n in names})
        out.append(row)
    return out


def plot(table: pa.Table, path: str, by: str = "study", rows: Optional[list[dict[str, Any]]] = None) -> None:
    """One panel per loss term, epoch on x, a line per trial member coloured by `by` (the study
    of a sweep, the defense of a campaign); the paper default's trials (`rows`' `is_default`)
    drawn thicker. A term on a scale of several decades is drawn on a log axis."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    from ..atomic import save_figure

    names = terms(table)
    if not names:
        raise ValueError("no loss curves to plot")
    records = table.to_pylist()
    default = {r.get("trial_id") for r in rows or [] if r.get("is_default")}
    groups = sorted({str(r.get(by)) for r in records})
    colour = {g: f"C{i % 10}" for i, g in enumerate(groups)}
    lines: dict[tuple, list[dict[str, Any]]] = {}
    for r in records:
        lines.setdefault((r.get("trial_id"), r.get("member")), []).append(r)
    cols = min(4, len(names))
    nrows = math.ceil(len(names) / cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(3.6 * cols, 2.8 * nrows), squeeze=False)
    for ax, name in zip(axes.flat, names):
        values = []
        for (trial, _), pts in lines.items():
            pts = sorted((p for p in pts if isinstance(p.get(name), (int, float)) and math.isfinite(p[name])),
                         key=lambda p: p["epoch"])
            if not pts:
                continue
            values += [p[name] for p in pts]
            g = str(pts[0].get(by))
            ax.plot([p["epoch"] for p in pts], [p[name] for p in pts], color=colour[g],
                    lw=2.2 if trial in default else 0.8, alpha=0.9 if trial in default else 0.45)
        positive = [v for v in values if v > 0]
        if positive and len(positive) == len(values) and max(positive) / min(positive) > 1e3:
            ax.set_yscale("log")
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("epoch", fontsize=8)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(names):]:
        ax.axis("off")
    handles = [plt.Line2D([], [], color=colour[g], lw=1.5, label=g) for g in groups]
    if default:
        handles.append(plt.Line2D([], [], color="k", lw=2.2, label="paper default (thick)"))
    fig.legend(handles=handles, loc="upper center", ncol=min(6, len(handles)), fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0, 1, 0.93))
    save_figure(fig, path)


def plot_dir(root: Path, path: str, by: str = "study") -> bool:
    """The curves under `root` drawn to `path`; False when it holds none."""
    from .store import read_curves, read_table

    table = read_curves(root)
    if table.num_rows == 0 or not terms(table):
        return False
    rows = read_table(root).to_pylist() if root.exists() else []
    plot(table, path, by if by in table.column_names else "defense", rows)
    return True
