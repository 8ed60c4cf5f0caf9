"""Query sweep results and read Pareto fronts (ASR down, BA up).

    python -m nba_scale.results nba_results/NAME --pareto
    python -m nba_scale.results nba_results --sql "SELECT attack, min(asr), max(ba) FROM trials GROUP BY 1"
    python -m nba_scale.results nba_results/NAME --pareto --by attack,clean_fraction --plot front.png

Without --sql or --pareto it lists the trials. `trials` is a duckdb view over every Parquet row
under DIR (schemas unified by column name). The Pareto front is computed per group (default:
attack and clean_fraction); `*` marks the search space's default point (the paper's
configuration, the first trial of each study). Where the sweep scored a selection split
(`val_asr`, `val_ba`: `tune --val-size`), the front is chosen on it and shown with the test
figures beside it; `_lo`/`_hi` are 95 % intervals over the test images (nba_scale/stats.py).
`--confirmed` prints the front confirmed over seeds (`tune --confirm N`, sweep/confirm.py); the
search's front and plot leave the confirmation's rows (`stage = confirm`) out.

    python -m nba_scale.results nba_results/NAME --confirmed --plot confirmed.png

`--versus X Y` compares two kinds of cell over the rows under DIR (campaigns together): X minus Y
on the same backdoored models and clean sets, per clean fraction, the claims' interval and verdict
(sweep/versus.py). X and Y: a defense, a defense's variant (`nba/l1_0.05`), or a defense's
teacher (`nba@teacher`), each optionally from one campaign (`table2:nba`).

    python -m nba_scale.results nba_results --versus nba/l1_0.05 nad

`--curves` prints how each trial's defense trained (its loss and each term per epoch, kept in
DIR/NAME/_curves/: sweep/curves.py), and with `--plot` draws them; `--sql` sees them as the view
`curves` beside `trials`.

    python -m nba_scale.results nba_results/NAME --curves --plot curves.png
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional

import pyarrow as pa

from .. import cli
from ..config import ConfigError
from .store import has_selection, is_confirm, pareto_mask, read_table, selected

# Each figure beside its 95 % interval (nba_scale/stats.py; rows written before 2026-12-05 have none).
SHOW = ["sweep", "study", "stage", "trial_id", "attack", "clean_fraction", "seed", "status", "val_asr", "val_ba", "asr", "asr_lo",
        "asr_hi", "ba", "ba_lo", "ba_hi", "ra", "der", "asr_before", "ba_before", "wall_s"]


def load(root: str | Path) -> pa.Table:
    root = Path(root)
    if not root.exists():
        raise ConfigError(f"results folder {str(root)!r} not found; pass the --results DIR (or DIR/NAME) of a sweep")
    table = read_table(root)
    if table.num_rows == 0:
        raise ConfigError(f"no Parquet rows under {root}; has a sweep written there yet?")
    return table


def pareto_table(table: pa.Table, by: list[str]) -> pa.Table:
    """Rows on the front of their group, sorted by group then ASR; adds `default_point` and
    `chosen_on`. A group is chosen on its selection split (`val_asr`, `val_ba`: store.selected)
    where every row has one, else on the test split; the rows keep both figures, so that the
    front is reported on images it was not chosen on."""
    rows = [r for r in table.to_pylist() if not is_confirm(r)]  # the search's own
    for r in rows:
        r["default_point"] = _is_default(r)
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        if r.get("status", "ok") == "ok":
            groups.setdefault(tuple(r.get(k) for k in by), []).append(r)
    front = []
    for key in sorted(groups, key=lambda k: tuple(str(x) for x in k)):
        g = groups[key]
        on_val = all(has_selection(r, "asr") and has_selection(r, "ba") for r in g)
        pick = selected if on_val else (lambda r, m: r[m])
        keep = pareto_mask([pick(r, "asr") for r in g], [pick(r, "ba") for r in g])
        for r in g:
            r["chosen_on"] = "val" if on_val else "test"
        front += sorted((r for r, k in zip(g, keep) if k), key=lambda r: pick(r, "asr"))
    return pa.Table.from_pylist(front) if front else pa.table({})


def _is_default(row: dict) -> bool:
    return bool(row.get("is_default"))


def format_table(table: pa.Table, columns: Optional[list[str]] = None, fmt: str = "table") -> str:
    cols = [c for c in (columns or table.column_names) if c in table.column_names]
    t = table.select(cols)
    if fmt == "csv":
        import io

        import pyarrow.csv as pcsv

        buf = io.BytesIO()
        pcsv.write_csv(t, buf)
        return buf.getvalue().decode()
    if fmt == "json":
        import json

        return json.dumps(t.to_pylist(), default=str, indent=1)
    rows = [[_cell(v) for v in r.values()] for r in t.to_pylist()]
    widths = [max([len(c)] + [len(r[i]) for r in rows]) for i, c in enumerate(cols)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(cols, widths))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths)) for r in rows]
    return "\n".join(lines)


def _cell(v) -> str:
    if isinstance(v, float):
        return f"{v:.4f}"
    return "" if v is None else str(v)


def print_pareto(root, by: tuple[str, ...] = ("attack", "clean_fraction"), fmt: str = "table") -> None:
    front = pareto_table(load(root), list(by))
    if front.num_rows == 0:
        print("no successful trials yet: no Pareto front")
        return
    front = front.append_column("mark", pa.array(["*" if d else "" for d in front["default_point"].to_pylist()]))
    # The tuned hyper-parameters: config columns whose values differ between rows.
    plugins = cli.plugin_sections()
    varying = [c for c in front.column_names if "_" in c and c.split("_")[0] in plugins
               and len({str(v) for v in front[c].to_pylist()}) > 1]
    cols = [*by, "mark", "chosen_on", "val_asr", "val_ba", "asr", "asr_lo", "asr_hi", "ba", "ba_lo", "ba_hi", "ra",
            "trial_id", *varying]
    print("Pareto front (ASR down, BA up), chosen on the selection split (val_asr, val_ba) where the sweep has one "
          "and reported on the test split (asr, ba); * = the paper's default configuration; _lo/_hi: 95 % interval "
          "of each test figure over the test images (Wilson), not over seeds")
    print(format_table(front, cols, fmt))


def plot(table: pa.Table, by: list[str], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in table.to_pylist() if r.get("status", "ok") == "ok" and not is_confirm(r)]
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault(tuple(r.get(k) for k in by), []).append(r)
    n = max(1, len(groups))
    fig, axes = plt.subplots(1, n, figsize=(4.5 * n, 4), squeeze=False)
    for ax, key in zip(axes[0], sorted(groups, key=lambda k: tuple(str(x) for x in k))):
        g = groups[key]
        asr, ba = [100 * r["asr"] for r in g], [100 * r["ba"] for r in g]
        ax.scatter(asr, ba, s=14, alpha=0.6, label="trials")
        bars = [r for r in g if all(isinstance(r.get(k), float) for k in ("asr_lo", "asr_hi", "ba_lo", "ba_hi"))]
        if bars:  # each trial's 95 % interval over the test images (stats.py)
            def err(m: str) -> list[list[float]]:
                return [[max(0.0, 100 * (r[m] - r[f"{m}_lo"])) for r in bars],
                        [max(0.0, 100 * (r[f"{m}_hi"] - r[m])) for r in bars]]

            ax.errorbar([100 * r["asr"] for r in bars], [100 * r["ba"] for r in bars], xerr=err("asr"),
                        yerr=err("ba"), fmt="none", ecolor="C0", alpha=0.35, lw=0.8,
                        label="95 % interval (test images)")
        if all(has_selection(r, "asr") and has_selection(r, "ba") for r in g):
            # Chosen on the selection split, drawn where it lands on the test split: no longer a
            # staircase, and the distance from one is the selection's optimism.
            keep = pareto_mask([selected(r, "asr") for r in g], [selected(r, "ba") for r in g])
            ax.scatter([a for a, k in zip(asr, keep) if k], [b for b, k in zip(ba, keep) if k], s=70,
                       facecolors="none", edgecolors="C3", label="front chosen on validation, at its test figures")
        else:
            keep = pareto_mask(asr, ba)
            front = sorted((a, b) for a, b, k in zip(asr, ba, keep) if k)
            if front:
                ax.step([a for a, _ in front], [b for _, b in front], where="post", color="C3", label="Pareto front")
        for r in g:
            if _is_default(r):
                ax.scatter([100 * r["asr"]], [100 * r["ba"]], marker="*", s=150, color="k", label="paper default")
        ax.set_xlabel("ASR % (lower is better)")
        ax.set_ylabel("BA % (higher is better)")
        ax.set_title(", ".join(f"{k}={v}" for k, v in zip(by, key)), fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    from ..atomic import save_figure

    save_figure(fig, path)


def run(args: argparse.Namespace) -> int:
    by = [b.strip() for b in args.by.split(",") if b.strip()]
    table = load(args.dir)
    missing = [b for b in by if b not in table.column_names]
    if missing:
        raise ConfigError(f"--by {missing[0]!r} is not a column; columns include {', '.join(table.column_names[:12])}")
    if args.sql:
        import duckdb

        from .store import read_curves

        con = duckdb.connect()
        con.register("trials", table)
        curves = read_curves(args.dir)
        if curves.num_rows:
            con.register("curves", curves)
        try:
            rel = con.sql(args.sql)
            out = rel.to_arrow_table() if hasattr(rel, "to_arrow_table") else rel.arrow()
        except duckdb.Error as e:
            raise ConfigError(f"SQL failed: {str(e).splitlines()[0]}") from None
        print(format_table(out, fmt=args.format))
    elif args.curves:
        from . import curves as curves_mod
        from .store import read_curves

        curves = read_curves(args.dir)
        if curves.num_rows == 0:
            raise ConfigError(f"{args.dir} holds no curves (DIR/NAME/_curves/): sweeps and campaigns run since "
                              f"2026-12-06 keep them; run one, or leave out --curves")
        print(format_table(pa.Table.from_pylist(curves_mod.last_epochs(curves)), fmt=args.format))
        if args.plot:
            try:
                curves_mod.plot(curves, args.plot, "study" if "study" in curves.column_names else "defense",
                                table.to_pylist())
            except OSError as e:
                raise ConfigError(f"cannot write --plot {args.plot} ({e.strerror}); give a path in a writable folder") from None
            print(f"wrote {args.plot}", file=sys.stderr)
        return 0
    elif args.versus:
        from . import versus

        x, y = args.versus
        rows = table.to_pylist()
        got = versus.compare(rows, x, y)
        if not any(g["paired"] for g in got):
            raise ConfigError(f"--versus {x} {y}: no cell (same backdoored model and clean set, an attack that "
                              f"implanted) has a row of both; labels: DEFENSE, DEFENSE/VARIANT, DEFENSE@teacher, "
                              f"CAMPAIGN:DEFENSE (defenses here: {', '.join(sorted({str(r.get('defense')) for r in rows}))})")
        print("\n".join(versus.table(rows, [(x, y)], x_name=x, y_name=y, compared={(x, y): got})))
        return 0
    elif args.confirmed:
        from .confirm import report

        report(Path(args.dir), plot_path=Path(args.plot) if args.plot else None)
        return 0
    elif args.pareto:
        print_pareto(args.dir, tuple(by), args.format)
    else:
        print(format_table(table, SHOW, args.format))
    if args.plot:
        try:
            plot(table, by, args.plot)
        except OSError as e:
            raise ConfigError(f"cannot write --plot {args.plot} ({e.strerror}); give a path in a writable folder") from None
        print(f"wrote {args.plot}", file=sys.stderr)
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = cli.parser("python -m nba_scale.results", __doc__)
    p.add_argument("dir")
    p.add_argument("--sql", default=None)
    p.add_argument("--pareto", action="store_true", help="the search's front (chosen on the selection split)")
    p.add_argument("--confirmed", action="store_true",
                   help="the front confirmed over seeds (tune --confirm N): means, intervals, each point vs the default")
    p.add_argument("--curves", action="store_true",
                   help="how each trial's defense trained: its loss and each loss term per epoch (--plot draws them)")
    p.add_argument("--versus", nargs=2, metavar=("X", "Y"), default=None,
                   help="X minus Y, paired on the same backdoored models and clean sets, per clean fraction, with "
                        "95 %% intervals and a verdict: a defense (nad), a variant (nba/l1_0.05), a teacher (nba@teacher)")
    p.add_argument("--by", default="attack,clean_fraction")
    p.add_argument("--plot", default=None, metavar="FILE.png")
    p.add_argument("--format", default="table", choices=["table", "csv", "json"])
    return p


main = cli.entry(build_parser, run)


if __name__ == "__main__":
    sys.exit(main())
