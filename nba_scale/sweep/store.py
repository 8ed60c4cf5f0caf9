"""Parquet results: one file per trial, hive-partitioned, written atomically; reading and Pareto.

Layout: `DIR/dataset=D/attack=A/defense=F/clean_fraction=C/trial-<trial_id>.parquet`. One file
per trial makes a row's write atomic (temp file + rename) and idempotent: a trial written again
after a resume replaces its own file, so a sweep never holds duplicate rows. When a sweep or a
campaign ends, each partition's files become one `rows-<ns>.parquet` (`compact`); a row written
later (a retried cell) wins over its compacted copy. Config keys become
columns by one rule, `column_name`: dots become underscores (`nba.lambda1` -> `nba_lambda1`).
Files may differ in columns (a new hyper-parameter, a new metric): readers unify schemas by name.

Rows are the record, so a row never holds an invented metric: a trial that did not finish (status
other than "ok") has NaN ASR, BA and RA, whatever its searcher was told (see sweep/trainable.py),
and its `error` says why.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import re
import sys
from pathlib import Path
from typing import Any, Iterable, Iterator

import pyarrow as pa
import pyarrow.parquet as pq

from ..atomic import atomic_write
from ..provenance import code_version

PARTITIONS = ("dataset", "attack", "defense", "clean_fraction")
METRICS = ("asr", "ba", "ra", "der")  # a trial's results after the defense: NaN unless it finished


def selected(row: dict[str, Any], metric: str) -> Any:
    """The figure a sweep selects on (what Optuna is told, what the front is chosen by): the
    selection split's (`val_asr`) where the row has one, else the test split's (`asr`). What a
    sweep reports stays the test split's."""
    return row[f"val_{metric}"] if has_selection(row, metric) else row.get(metric)


def has_selection(row: dict[str, Any], metric: str = "asr") -> bool:
    """The row has a (finite) figure on the selection split."""
    v = row.get(f"val_{metric}")
    return isinstance(v, (int, float)) and math.isfinite(v)


def is_confirm(row: dict[str, Any]) -> bool:
    """A row of a sweep's confirmation stage (`tune --confirm`, sweep/confirm.py): it shares its
    study's name but is no trial of its searcher, so every reader of the search leaves it out."""
    return row.get("stage") == "confirm"


def study_id(attack: str, clean_fraction: float) -> str:
    """One Optuna study, one Pareto group: an attack (or attacks joined by +) at a clean fraction."""
    return f"{attack}-cf{clean_fraction:g}"


def column_name(key: str) -> str:
    return key.replace(".", "_")


def partition_value(value: Any) -> str:
    """Readable, path-safe partition value: `npz:/x/cifar10_jpeg.npz` -> `npz-cifar10_jpeg`,
    `folder:/data/tiny-imagenet-200` -> `folder-tiny-imagenet-200`."""
    text = str(value)
    if text.startswith(("npz:", "folder:")):
        kind, _, path = text.partition(":")
        text = f"{kind}-{Path(path.rstrip('/')).stem}"
    return re.sub(r"[^A-Za-z0-9_.+-]", "_", text)


def trial_row(result: dict[str, Any], **extra: Any) -> dict[str, Any]:
    """Flatten a run_trial result into one Parquet row (hyper-parameters as their own columns)."""
    row: dict[str, Any] = {k: v for k, v in result.items() if k not in ("config", "artifacts", "timings")}
    row["dataset_spec"] = result.get("dataset")
    for key, value in (result.get("config") or {}).items():
        col = column_name(key)
        if col in PARTITIONS or col in row:
            continue
        row[col] = json.dumps(value) if isinstance(value, (list, tuple, dict)) else value
    for key, value in (result.get("timings") or {}).items():
        row[f"time_{key}"] = value
    if result.get("artifacts"):
        row["artifacts"] = json.dumps(result["artifacts"], sort_keys=True)
    for key, value in code_version().items():  # a trial that failed before it ran still names its code
        row.setdefault(key, value)
    row.update(extra)
    return row


def write_row(root: str | os.PathLike, row: dict[str, Any]) -> Path:
    root = Path(root)
    row = dict(row)
    if row.get("status") != "ok":
        row.update({m: math.nan for m in METRICS})
    part = root.joinpath(*(f"{k}={partition_value(row.get(k))}" for k in PARTITIONS))
    body = {k: v for k, v in row.items() if k not in PARTITIONS}
    path = part / f"trial-{partition_value(row['trial_id'])}.parquet"
    with atomic_write(path) as tmp:
        pq.write_table(pa.Table.from_pylist([body]), tmp)
    return path


@contextlib.contextmanager
def driver_lock(root: Path) -> Iterator[None]:
    """One driver per results folder: an OS lock on DIR/NAME/.driver.lock, held for the driver's
    life and released by the OS however it ends (SIGKILL too). A second driver is refused."""
    from filelock import FileLock, Timeout

    from ..config import ConfigError

    root.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(root / ".driver.lock"))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        raise ConfigError(f"another driver is running on {root} (it holds {root / '.driver.lock'}); "
                          f"let it finish or stop it, then --resume") from None
    try:
        yield
    finally:
        lock.release()


def parquet_files(root: str | os.PathLike) -> list[str]:
    """The rows' files under `root`: not those in a folder whose name starts with "_" (a sweep's
    `_curves/`, `_tune/`), which Parquet readers of the folder (hive partitioning) skip too."""
    root = Path(root)
    return sorted(str(p) for p in root.rglob("*.parquet") if not p.name.startswith(".")
                  and not any(part.startswith("_") for part in p.relative_to(root).parent.parts))


# DIR/NAME/_curves/trial-<id>.arrow: the epoch reports of a trial's members. Arrow IPC (Feather)
# files, not Parquet, so that a glob of a sweep's `**/*.parquet` (duckdb's read_parquet with hive
# partitioning, as the README shows) still yields its rows alone; `results --sql` sees them as
# the view `curves`, `pyarrow.feather.read_table` and pandas read them directly.
CURVES = "_curves"
CURVE_NAMES = ("sweep", "campaign", "study", "stage", "trial_id", "pack_id", "variant")  # what joins them to rows


def write_curves(root: str | os.PathLike, trial_id: str, records: list[dict[str, Any]]) -> Path:
    """A trial's curves, one record per member and epoch (`epoch`, `loss`, `loss_<term>`, and
    `asr`/`ba`/`ra` where a scheduler scored the epoch, on the selection split), atomically."""
    from pyarrow import feather

    path = Path(root) / CURVES / f"trial-{partition_value(trial_id)}.arrow"
    with atomic_write(path) as tmp:
        feather.write_feather(pa.Table.from_pylist(records), tmp)
    return path


def read_curves(root: str | os.PathLike) -> pa.Table:
    """Every curve under `root` (a sweep, a campaign, or a folder of them), schemas unified."""
    from pyarrow import feather

    files = sorted(p for p in Path(root).rglob(f"{CURVES}/*.arrow") if not p.name.startswith("."))
    tables = []
    for f in files:
        try:
            tables.append(feather.read_table(f))
        except (pa.ArrowException, OSError) as e:
            print(f"warning: skipped unreadable curve file {f} ({type(e).__name__})", file=sys.stderr, flush=True)
    return pa.concat_tables(tables, promote_options="permissive") if tables else pa.table({})


# A partition's rows compacted into one file (`compact`): `rows-<time ns>.parquet` beside, or in
# place of, the one-row `trial-<id>.parquet` files.
COMPACTED = "rows-"


def _by_precedence(files: list[str]) -> list[str]:
    """Row files in the order their rows win when two hold the same trial (`_read_rows`): within a
    folder, one-row files first (the newest write of a trial: a cell retried after compaction),
    then compacted files, newest first. Only a compaction interrupted between its write and its
    removals leaves a trial in two files, and then both hold the same row."""
    def key(f: str) -> tuple:
        name = Path(f).name
        stamp = name[len(COMPACTED):-len(".parquet")]
        compacted = name.startswith(COMPACTED)
        return str(Path(f).parent), compacted, -int(stamp) if compacted and stamp.isdigit() else 0, name
    return sorted(files, key=key)


def _read_rows(files: list[str], where: str | os.PathLike) -> list[tuple[str, pa.Table]]:
    """Each readable file's table, each trial's row once per folder (`_by_precedence`)."""
    import pyarrow.compute as pc

    out, bad, seen = [], [], {}
    for f in _by_precedence(files):
        try:
            t = pq.read_table(f)
        except (pa.ArrowException, OSError) as e:  # one damaged file must not hide every other row
            bad.append(f"{f} ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})")
            continue
        ids = seen.setdefault(str(Path(f).parent), set())
        if "trial_id" in t.column_names and len(t):
            if ids:
                t = t.filter(pc.invert(pc.is_in(t["trial_id"], value_set=pa.array(sorted(ids), pa.string()))))
            ids.update(str(i) for i in t["trial_id"].to_pylist())
        out.append((f, t))
    if bad:
        print(f"warning: skipped {len(bad)} unreadable Parquet file(s) under {where}: {'; '.join(bad[:3])}"
              f"{' ...' if len(bad) > 3 else ''}", file=sys.stderr, flush=True)
    return out


def read_table(root: str | os.PathLike) -> pa.Table:
    """All rows under `root` (one sweep, or a folder of sweeps), schemas unified by column name,
    with the partition columns recovered from each file's path."""
    tables = []
    for f, t in _read_rows(parquet_files(root), root):
        parts = dict(seg.split("=", 1) for seg in Path(f).parent.parts if "=" in seg)
        for key in PARTITIONS:
            if key in parts and key not in t.column_names:
                value = float(parts[key]) if key == "clean_fraction" else parts[key]
                t = t.append_column(key, pa.array([value] * len(t)))
        tables.append(t)
    if not tables:
        return pa.table({})
    return pa.concat_tables(tables, promote_options="permissive")


def compact(root: str | os.PathLike) -> int:
    """Each partition folder under `root` with more than one row file gets one `rows-<ns>.parquet`
    holding all its rows, and loses the files it was made from: a study of thousands of trials
    is thousands of one-row files, which every read lists and opens one by one (slow on EFS/NFS).
    The new file is complete before any old one goes (`atomic_write`), and readers keep each
    trial's row once, so an interrupted compaction loses nothing and counts nothing twice. Run by
    a driver when its trials have ended (it holds the folder's `driver_lock`: no row is being
    written); a damaged file is left where it is. Returns how many files were folded in."""
    import time

    folders: dict[Path, list[str]] = {}
    for f in parquet_files(root):
        folders.setdefault(Path(f).parent, []).append(f)
    folded = 0
    for folder, files in sorted(folders.items()):
        if len(files) < 2:
            continue
        read = _read_rows(files, folder)
        tables = [t for _, t in read if len(t)]
        if not tables:
            continue
        with atomic_write(folder / f"{COMPACTED}{time.time_ns()}.parquet") as tmp:
            pq.write_table(pa.concat_tables(tables, promote_options="permissive"), tmp)
        for f, _ in read:
            os.unlink(f)
        folded += len(read)
    return folded


def pareto_mask(asr: Iterable[float], ba: Iterable[float]) -> list[bool]:
    """Non-dominated points for (ASR down, BA up); NaNs are never on the front."""
    pts = list(zip(asr, ba))
    out = []
    for i, (a, b) in enumerate(pts):
        if a != a or b != b:
            out.append(False)
            continue
        dominated = any((a2 <= a and b2 >= b) and (a2 < a or b2 > b)
                        for j, (a2, b2) in enumerate(pts) if j != i and a2 == a2 and b2 == b2)
        out.append(not dominated)
    return out


def hypervolume(asr: Iterable[float], ba: Iterable[float]) -> float:
    """Area that a set of (ASR, BA) points dominates inside [0, 1]^2, from the worst corner (ASR 1,
    BA 0): 1.0 is a perfect defense; a speed-up that loses the front shows as a smaller value."""
    best, total, pts = 0.0, 0.0, sorted((a, b) for a, b in zip(asr, ba) if a == a and b == b)
    for i, (a, b) in enumerate(pts):
        best = max(best, b)
        total += ((pts[i + 1][0] if i + 1 < len(pts) else 1.0) - a) * best
    return total
