"""The Parquet record: compaction of one-row files loses no row and counts none twice."""
import os
from pathlib import Path

import pyarrow.parquet as pq

from nba_scale.sweep.store import compact, parquet_files, read_table, write_row


def rows(root):
    return sorted((r["trial_id"], r["status"], r["attack"]) for r in read_table(root).to_pylist())


def test_compaction_keeps_every_row_once_and_a_later_write_of_a_trial_wins(tmp_path):
    root = tmp_path / "sweep"
    for i in range(5):
        write_row(root, {"dataset": "synthetic", "attack": "badnets" if i < 3 else "blend", "defense": "nba",
                         "clean_fraction": 0.05, "trial_id": f"t{i}", "status": "ok", "asr": 0.1 * i, "ba": 0.5,
                         **({"nba_lambda1": 1.0} if i == 4 else {})})  # a column only one row has
    write_row(root, {"dataset": "synthetic", "attack": "blend", "defense": "nba", "clean_fraction": 0.05,
                     "trial_id": "t5", "status": "failed", "error": "NaN"})
    before = rows(root)
    assert compact(root) == 6
    files = parquet_files(root)
    assert [Path(f).name[:5] for f in files] == ["rows-", "rows-"]  # one file per partition (attack)
    assert rows(root) == before and len(read_table(root)) == 6
    assert sorted(pq.read_table(files[1]).column("nba_lambda1").to_pylist(), key=str) == [1.0, None, None]
    assert compact(root) == 0  # nothing left to fold

    # The failed cell is retried after compaction: its new row wins over the compacted one.
    write_row(root, {"dataset": "synthetic", "attack": "blend", "defense": "nba", "clean_fraction": 0.05,
                     "trial_id": "t5", "status": "ok", "asr": 0.2, "ba": 0.6})
    assert [r["status"] for r in read_table(root).to_pylist() if r["trial_id"] == "t5"] == ["ok"]
    assert len(read_table(root)) == 6
    # A compaction killed after writing its file and before removing the old ones: both hold t5.
    blend = Path(parquet_files(root / "dataset=synthetic" / "attack=blend")[0]).parent
    stale = sorted(blend.glob("rows-*.parquet"))[0]
    kept = stale.read_bytes()
    assert compact(root) == 2 and not stale.exists()
    (blend / "rows-1.parquet").write_bytes(kept)  # an older compacted copy left behind
    t = read_table(root).to_pylist()
    assert len(t) == 6 and [r["status"] for r in t if r["trial_id"] == "t5"] == ["ok"]
    assert compact(root) == 2 and len(read_table(root)) == 6
    assert not [p for p in blend.iterdir() if p.name.startswith(".")]  # no temp file left
    assert os.listdir(blend)[0].startswith("rows-") and len(os.listdir(blend)) == 1
