"""Markdown report of campaigns: the paper's table layouts, figures, published numbers, commands.

    python -m nba_scale.report nba_results --out report/          # every campaign under the folder
    python -m nba_scale.report nba_results/table2 --out report/   # one campaign
    python -m nba_scale.report nba_results --out docs/reports/x/ --with-rows   # rows kept beside it

Writes `OUT/README.md` and PNGs beside it. Per campaign: a table (rows x columns as its YAML's
`report` says; every cell "ASR / BA" in %, mean over seeds ± its 95 % t interval; "before" = the backdoored
model where the columns are defenses), the mean over rows, the paper's published numbers where
the campaign records them, bars per attack, Pareto fronts (ASR vs BA) per attack x clean
fraction, clean-fraction curves where the grid has that axis, each variant against `default` and
each defense against its own teacher (paired, sweep/versus.py), the leave-one-attack-out and
worst-case tables for `transfer`, wall time per defense, and the commands that produced it
(from the campaign folder's campaign.json). `--with-rows` also writes each campaign's
campaign.json and all its rows, in one `rows.parquet`, to `OUT/rows/<campaign>/`: a folder that
`report` reads back and that a campaign run with `--resume` extends with more seeds.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

from .. import cli
from ..config import ConfigError, require
from ..stats import t_halfwidth
from .tables import axis_values, before_rows, grouped_tables, wall_times


def shown(text: str) -> str:
    """A path or command as a report shows it: relative to the working directory where it lies
    below it, else with the home directory as `~`; no machine's absolute paths in a report."""
    cwd, home = str(Path.cwd()), str(Path.home())
    for prefix, short in ((cwd + "/", ""), (cwd, "."), (home, "~")):
        text = text.replace(prefix, short)
    return text


def bars(rows: list[dict], row_axis: str, col_axis: str, orders: dict, title: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..atomic import save_figure

    rvals, cvals = axis_values(rows, row_axis, orders.get(row_axis)), axis_values(rows, col_axis, orders.get(col_axis))
    # Where the bars are defenses per attack, the backdoored model's bar first: what each removed.
    before = col_axis == "defense" and row_axis == "attack"
    series = (["before"] if before else []) + list(cvals)
    fig, axes = plt.subplots(1, 2, figsize=(max(8, 1.4 * len(rvals) * 2) + 1.2, 3.6))
    width = 0.8 / max(1, len(series))
    seeds = len({r.get("seed") for r in rows}) > 1
    for ax, metric, label in ((axes[0], "asr", "ASR % (lower is better)"), (axes[1], "ba", "BA % (higher is better)")):
        for j, cv in enumerate(series):
            is_before = before and j == 0
            ys, err = [], [[], []]
            for rv in rvals:
                mine = [r for r in rows if r[row_axis] == rv]
                g, m_key = (before_rows(mine), f"{metric}_before") if is_before else (
                    [r for r in mine if r[col_axis] == cv], metric)
                m = 100 * statistics.fmean(r[m_key] for r in g) if g else float("nan")
                ys.append(m)
                lo, hi = bar_error(g, m_key, seeds)
                err[0].append(max(0.0, m - lo))
                err[1].append(max(0.0, hi - m))
            ax.bar([i + (j - (len(series) - 1) / 2) * width for i in range(len(rvals))], ys, width,
                   label="backdoored (before)" if is_before else str(cv), color="0.6" if is_before else None,
                   yerr=err, error_kw={"elinewidth": 0.8, "capsize": 2, "alpha": 0.7})
        ax.set_xticks(range(len(rvals)), [str(v) for v in rvals], rotation=20)
        ax.set_ylabel(label)
        ax.set_ylim(0, 100)
        ax.grid(axis="y", alpha=0.3)
    # The legend beside the plots, never over a bar (it hid GTSRB's Refool bars).
    handles, names = axes[1].get_legend_handles_labels()
    fig.legend(handles, names, loc="center right", fontsize=7)
    fig.suptitle(title + ("; bars: 95 % t interval over seeds" if seeds else "; bars: 95 % interval over the test images"),
                 fontsize=10)
    fig.tight_layout(rect=(0, 0, 1 - 1.3 / fig.get_figwidth(), 1))
    save_figure(fig, path)


def bar_error(g: list[dict], metric: str, seeds: bool) -> tuple[float, float]:
    """A bar's error, in %: the 95 % t interval of the mean over seeds (as the tables), or with one
    seed the row's own 95 % interval over the test images (stats.py; rows before 2026-12-05 have
    none: no bar)."""
    nan = (float("nan"), float("nan"))
    if not g:
        return nan
    m = 100 * statistics.fmean(r[metric] for r in g)
    if seeds:
        h = 100 * t_halfwidth([r[metric] for r in g]) if len(g) > 1 else 0.0
        return m - h, m + h
    lo, hi = g[0].get(f"{metric}_lo"), g[0].get(f"{metric}_hi")
    return (100 * lo, 100 * hi) if len(g) == 1 and isinstance(lo, float) and isinstance(hi, float) else nan


def pareto_grid(rows: list[dict], label_axis: str, orders: dict, path: Path) -> None:
    """ASR vs BA per (attack, clean fraction); each point one column value (mean over seeds, with
    the 95 % t interval over seeds, or one seed's interval over the test images: `bar_error`), the front in red, the backdoored
    model as a cross."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..atomic import save_figure
    from .store import pareto_mask

    groups = [(a, cf) for a in axis_values(rows, "attack", orders.get("attack")) for cf in axis_values(rows, "clean_fraction")
              if any(r["attack"] == a and r["clean_fraction"] == cf for r in rows)]
    n = len(groups)
    cols = min(3, n)
    fig, axes = plt.subplots((n + cols - 1) // cols, cols, figsize=(4.2 * cols, 3.6 * ((n + cols - 1) // cols)),
                             squeeze=False)
    for ax, (attack, cf) in zip(axes.flat, groups):
        g = [r for r in rows if r["attack"] == attack and r["clean_fraction"] == cf]
        labels = axis_values(g, label_axis, orders.get(label_axis))
        pts = [(100 * statistics.fmean(r["asr"] for r in g if r[label_axis] == lv),
                100 * statistics.fmean(r["ba"] for r in g if r[label_axis] == lv)) for lv in labels]
        keep = pareto_mask([a for a, _ in pts], [b for _, b in pts])
        seeds = len({r.get("seed") for r in g}) > 1
        for (a, b), lv, k in zip(pts, labels, keep):
            mine = [r for r in g if r[label_axis] == lv]
            (alo, ahi), (blo, bhi) = bar_error(mine, "asr", seeds), bar_error(mine, "ba", seeds)
            ax.errorbar([a], [b], xerr=[[max(0.0, a - alo)], [max(0.0, ahi - a)]],
                        yerr=[[max(0.0, b - blo)], [max(0.0, bhi - b)]], fmt="none",
                        ecolor="C3" if k else "C0", alpha=0.4, lw=0.8)
            ax.scatter([a], [b], color="C3" if k else "C0", s=22)
            if k or len(labels) <= 6:  # many close points (transfer's 8 configurations): the front's names only
                ax.annotate(str(lv), (a, b), fontsize=7, xytext=(3, 3), textcoords="offset points")
        front = sorted(p for p, k in zip(pts, keep) if k)
        ax.step([a for a, _ in front], [b for _, b in front], where="post", color="C3", alpha=0.6)
        before = before_rows(g)
        ax.scatter([100 * statistics.fmean(r["asr_before"] for r in before)],
                   [100 * statistics.fmean(r["ba_before"] for r in before)], marker="x", color="k", label="backdoored")
        ax.set_title(f"{attack}, clean {cf:g}", fontsize=9)
        ax.set_xlabel("ASR %")
        ax.set_ylabel("BA %")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    fig.tight_layout()
    save_figure(fig, path)


def curves(rows: list[dict], orders: dict, path: Path) -> None:
    """ASR and BA against the defender's clean set, one line per defense, one column per attack
    after a first one for the mean over attacks; x in clean images where every row says how many
    (`n_clean`), else in % of the attacker's training set; bars: the 95 % t interval over seeds."""
    import math

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..atomic import save_figure

    attacks = axis_values(rows, "attack", orders.get("attack"))
    images = all(r.get("n_clean") for r in rows)
    columns = (["mean over attacks"] if len(attacks) > 1 else []) + attacks
    fig, axes = plt.subplots(2, len(columns), figsize=(3.6 * len(columns), 6), squeeze=False)
    for j, col in enumerate(columns):
        g = rows if j == 0 and len(columns) > len(attacks) else [r for r in rows if r["attack"] == col]
        defenses = axis_values(g, "defense", orders.get("defense"))
        for k, d in enumerate(defenses):
            mine = [r for r in g if r["defense"] == d]
            dodge = 1 + 0.015 * (k - (len(defenses) - 1) / 2)  # side by side, so the bars do not hide each other
            xs, ys, errs = [], ([], []), ([], [])
            for c in axis_values(mine, "clean_fraction"):
                sel = [r for r in mine if r["clean_fraction"] == c]
                n_attacks, by_seed = len({r["attack"] for r in sel}), {}
                for r in sel:
                    by_seed.setdefault(r["seed"], []).append(r)
                # The mean over attacks per seed, from the seeds that have every attack at this point.
                seeds = [v for v in by_seed.values() if len(v) == n_attacks]
                if not seeds:
                    continue
                xs.append(dodge * (statistics.median(r["n_clean"] for r in sel) if images else 100 * c))
                for i, metric in enumerate(("asr", "ba")):
                    vals = [100 * statistics.fmean(r[metric] for r in v) for v in seeds]
                    h = t_halfwidth(vals)
                    ys[i].append(statistics.fmean(vals))
                    errs[i].append(0.0 if math.isnan(h) else h)
            for i in range(2):
                axes[i][j].errorbar(xs, ys[i], yerr=errs[i], marker="o", capsize=3, label=d)
        axes[0][j].set_title(col, fontsize=9)
        for i, label in enumerate(("ASR %", "BA %")):
            axes[i][j].set_xlabel("clean images" if images else "clean data % of the attacker's set")
            axes[i][j].set_ylabel(label)
            axes[i][j].grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    save_figure(fig, path)


def transfer_lines(rows: list[dict]) -> list[str]:
    from .transfer import leave_one_out, score_matrix, worst_case

    matrix = score_matrix(rows)
    loo, wc = leave_one_out(matrix), worst_case(matrix)
    lines = ["#### Leave-one-attack-out", "",
             "Chosen = best `mean BA - worst ASR` on the other attacks; tuned = best `BA - ASR` on the held-out "
             "attack itself. Loss = what the chosen configuration gives up on the unseen attack (points of %).", "",
             "| held-out attack | chosen | ASR / BA | tuned on it | ASR / BA | ASR loss | BA loss | utility loss |",
             "|---|---|---|---|---|---|---|---|"]
    for r in loo:
        lines.append(f"| {r['held_out']} | {r['chosen']} | {100 * r['chosen_asr']:.1f} / {100 * r['chosen_ba']:.1f} | "
                     f"{r['tuned_on_it']} | {100 * r['tuned_asr']:.1f} / {100 * r['tuned_ba']:.1f} | "
                     f"{100 * r['asr_loss']:+.1f} | {100 * r['ba_loss']:+.1f} | {100 * r['utility_loss']:+.1f} |")
    if loo:
        lines.append(f"| **mean** | | | | | {100 * statistics.fmean(r['asr_loss'] for r in loo):+.1f} | "
                     f"{100 * statistics.fmean(r['ba_loss'] for r in loo):+.1f} | "
                     f"{100 * statistics.fmean(r['utility_loss'] for r in loo):+.1f} |")
    lines += ["", "#### Worst case over all attacks", "",
              "| configuration | worst ASR | (attack) | mean BA | Pareto |", "|---|---|---|---|---|"]
    lines += [f"| {r['variant']} | {100 * r['worst_asr']:.1f} | {r['worst_asr_attack']} | {100 * r['mean_ba']:.1f} | "
              f"{'*' if r['pareto'] else ''} |" for r in wc]
    overrides = {r["variant"]: r.get("variant_overrides") for r in rows}
    lines += ["", "Configurations:", ""] + [f"- `{v}`: `{o}`" for v, o in sorted(overrides.items())]
    return lines


def campaign_section(root: Path, out: Path) -> list[str]:
    from .store import read_table

    meta = json.loads((root / "campaign.json").read_text())
    name = meta["campaign"]
    all_rows = read_table(root).to_pylist()
    rows = [r for r in all_rows if r.get("status") == "ok"]
    failed = [r for r in all_rows if r.get("status") != "ok"]
    for r in rows:
        r["variant"] = r.get("variant") or "default"
    rep = meta.get("report") or {"rows": "attack", "columns": "defense"}
    orders = _orders(meta)
    lines = [f"## {name}: {meta.get('title', '')}", "",
             f"Paper: {meta.get('paper') or '-'}. Dataset `{shown(str(meta.get('dataset')))}`, preset `{meta.get('preset')}`, "
             f"seeds {sorted({r['seed'] for r in all_rows}) or meta.get('seeds')}, overrides {shown(str(meta.get('set') or 'none'))}. "
             f"{len(rows)} cells ok, {len(failed)} failed. Cells: ASR / BA in %, the mean over seeds ± the "
             "half-width of its 95 % t interval (one seed: the figure alone; each row's own test-set interval "
             "is in its Parquet row).", ""]
    if not rows:
        return lines + ["No finished cells yet.", ""]
    ra, ca = rep.get("rows", "attack"), rep.get("columns", "defense")
    lines += grouped_tables(rows, ra, ca, orders)
    for kind, per in (meta.get("published") or {}).items():
        lines.append(f"Published ({kind.replace('_', ' ')}, from the paper): " + "; ".join(
            f"{col} ASR {v['asr']} % / BA {v['ba']} %" for col, v in per.items()))
        lines.append("")
    if meta.get("claims") and "defense" in (ra, ca) and len({r["variant"] for r in rows}) == 1:
        lines += claims_section(rows, meta["claims"])
    from .versus import teacher_lines, variant_lines

    spec = meta.get("claims") or {}
    margins = (spec.get("ba_margin", 0.05), spec.get("implanted_above", 0.5))
    lines += variant_lines(rows, *margins) + teacher_lines(rows, *margins)
    if failed:
        lines += ["Failed cells: " + "; ".join(f"`{r['trial_id']}`: {r.get('error')}" for r in failed[:10]), ""]
    lines += wall_times(rows, ca)
    if ra in ("attack", "defense") and ca in ("defense", "variant", "clean_fraction"):
        bars(rows, ra, ca, orders, f"{name}: {meta.get('title', '')}", out / f"{name}_bars.png")
        lines += [f"![{name} bars]({name}_bars.png)", ""]
    label = ca if ca in ("defense", "variant") else "defense"
    pareto_grid(rows, label, orders, out / f"{name}_pareto.png")
    lines += [f"Pareto fronts (ASR vs BA) per attack x clean fraction, each point one {label}:", "",
              f"![{name} Pareto fronts]({name}_pareto.png)", ""]
    # Several clean sets of the same defenses (a clean-fraction grid, or table2 run with
    # --clean-images 500 2500 5000): how each defense depends on the defender's budget.
    if (rep.get("curves") == "clean_fraction" or "defense" in (ra, ca)) and len({r["clean_fraction"] for r in rows}) > 1:
        curves(rows, orders, out / f"{name}_curves.png")
        lines += ["ASR and BA against the defender's clean set, per defense (mean over seeds; bars: the 95 % t "
                  "interval over seeds; the first column: the mean over attacks):", "",
                  f"![{name} clean-fraction curves]({name}_curves.png)", ""]
    if rep.get("transfer"):
        lines += transfer_lines(rows) + [""]
    from .curves import plot_dir

    if plot_dir(root, str(out / f"{name}_training.png"), by="defense"):  # campaigns run since 2026-12-06
        lines += ["How each defense trained: its mean loss and each loss term per epoch, a line per cell "
                  f"(`python -m nba_scale.results {shown(str(root))} --curves`):", "",
                  f"![{name} training curves]({name}_training.png)", ""]
    lines += ["Commands:", "", "```", *map(shown, meta.get("commands", [])), "```", ""]
    return lines


def claims_section(rows: list[dict], spec: dict) -> list[str]:
    """The paper's claims, checked per clean fraction (each its own budget)."""
    from .claims import claim_lines
    from .tables import clean_images

    cfs = sorted({r["clean_fraction"] for r in rows})
    return [ln for cf in cfs for sel in [[r for r in rows if r["clean_fraction"] == cf]]
            for ln in claim_lines(sel, spec, f", clean fraction {cf:g}{clean_images(sel)}" if len(cfs) > 1 else "")]


def _orders(meta: dict) -> dict[str, list]:
    """Axis orders from the campaign's YAML (and its current published numbers and claims into `meta`)."""
    from .grid import load_campaign

    c = None
    # The file it ran from, else the package's campaign of that name (a run from a checkout or
    # worktree that is gone since), else nothing: alphabetical order, the published numbers as recorded.
    for ref in dict.fromkeys(x for x in (meta.get("file"), meta.get("campaign")) if x):
        try:
            c = load_campaign(ref)
            break
        except ConfigError:
            continue
    if c is None:
        return {}
    meta["published"], meta["claims"] = c.published, c.claims
    return {"attack": c.attacks, "defense": c.defenses, "clean_fraction": c.clean_fractions,
            "variant": list(c.variants)}


def copy_rows(root: Path, dest: Path) -> None:
    """A campaign folder's record, compacted: its campaign.json, every row in one Parquet file, and
    its training curves in another (`_curves/`)."""
    import pyarrow.parquet as pq

    from ..atomic import atomic_write, write_bytes
    from .store import read_table

    from .store import CURVES, read_curves

    write_bytes(dest / "campaign.json", (root / "campaign.json").read_bytes())
    with atomic_write(dest / "rows.parquet") as tmp:
        pq.write_table(read_table(root), tmp)
    curves = read_curves(root)
    if curves.num_rows:  # its training curves too, where the campaign kept them
        from pyarrow import feather

        with atomic_write(dest / CURVES / "curves.arrow") as tmp:
            feather.write_feather(curves, tmp)


def write_report(src: Path, out: Path, with_rows: bool = False) -> Path:
    from ..atomic import write_bytes

    roots = sorted({p.parent for p in [*src.glob("campaign.json"), *src.glob("*/campaign.json")]})
    if not roots:
        raise ConfigError(f"no campaign under {src} (no campaign.json); run python -m nba_scale.campaign first")
    if with_rows:  # refused before anything is written: a refusal leaves no folder behind
        inside = [r for r in [src, *roots] if out.resolve().is_relative_to(r.resolve())]
        require(not inside, f"--out {out} lies inside {inside and inside[0]}, which this report reads: its copied "
                "rows would be read back (by report and results) as more rows; write the report elsewhere")
    out.mkdir(parents=True, exist_ok=True)
    if with_rows:
        for root in roots:
            copy_rows(root, out / "rows" / root.name)
    kept = " (its rows: `rows/` here)" if with_rows else ""
    lines = ["# nba_scale report", "", f"From `{shown(str(src))}`{kept}, {time.strftime('%Y-%m-%d %H:%M')}. "
             "ASR: attack success rate on triggered non-target test images (lower is better); "
             "BA: benign accuracy on the clean test set (higher is better).", ""]
    for root in roots:
        lines += campaign_section(root, out)
    path = out / "README.md"
    write_bytes(path, "\n".join(lines).encode())
    return path


def run(args: argparse.Namespace) -> int:
    try:
        path = write_report(Path(args.dir), Path(args.out), args.with_rows)
    except OSError as e:
        raise ConfigError(f"cannot write the report to --out {args.out} ({e.strerror}); give a writable folder") from None
    print(f"wrote {path}")
    print(path.read_text())
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = cli.parser("python -m nba_scale.report", __doc__)
    p.add_argument("dir", help="a campaign folder (DIR/NAME) or a results folder holding several")
    p.add_argument("--out", default="report")
    p.add_argument("--with-rows", action="store_true",
                   help="also keep each campaign's rows (one rows.parquet) and campaign.json under OUT/rows/")
    return p


main = cli.entry(build_parser, run)


if __name__ == "__main__":
    sys.exit(main())
