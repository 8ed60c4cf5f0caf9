"""Trials per hour with N trial processes sharing one device, without Ray: what `tune
--gpus-per-trial 1/N` buys on a GPU, measured where Ray cannot be installed (the GPU image).

    python3 bench/shared_device.py --device cuda --processes 1 4 8 --num-samples 16 [--set ...] [--json FILE]

`--num-samples` NBA configurations (bench/pack.py's draw: the paper default first, then random
points of search_spaces/nba.yaml, seed 0) are run by N worker processes at once, each taking
every N-th configuration (`trial.run_trial`, as a Tune trial does), for each N. The artifacts are
built, and the processes started, before the timing. Per N: wall time, trials/hour, the ratio to N = 1, the mean defense time
per trial (longer when processes contend). The JSON is written after each N, so a run cut short
by its time limit still brings back what it measured.
"""
from __future__ import annotations

import json
import multiprocessing
import sys
import time
from pathlib import Path

from pack import nba_configs, nba_parser, prepared  # bench/pack.py (this folder is on sys.path when run as a script)


def worker(configs: list[dict], out, go) -> None:
    from nba_scale.trial import run_trial

    out.put("ready")  # imported: the timing leaves out the processes' start (torch, CUDA init)
    go.wait()
    for cfg in configs:
        r = run_trial(cfg)
        out.put({"status": r["status"], "error": r.get("error"), "defense_s": r.get("timings", {}).get("defense_s"),
                 "device": r.get("device")})


def main() -> int:
    ap = nba_parser(__doc__, "synthetic", 16)
    ap.add_argument("--processes", type=int, nargs="+", default=[1, 4, 8])
    args = ap.parse_args()
    configs = prepared(nba_configs(args))

    ctx = multiprocessing.get_context("spawn")  # CUDA cannot be forked
    runs = []
    for n in args.processes:
        out, go = ctx.Queue(), ctx.Event()
        procs = [ctx.Process(target=worker, args=(configs[i::n], out, go)) for i in range(n)]
        for p in procs:
            p.start()
        assert all(out.get() == "ready" for _ in procs)
        t0 = time.time()
        go.set()
        results = [out.get() for _ in configs]
        for p in procs:
            p.join()
        wall = time.time() - t0
        ok = [r for r in results if r["status"] == "ok"]
        runs.append({"processes": n, "wall_s": round(wall, 1), "ok": len(ok),
                     "trials_per_hour": round(len(ok) / wall * 3600, 1),
                     "defense_s_per_trial": round(sum(r["defense_s"] or 0 for r in ok) / max(1, len(ok)), 2),
                     "device": results[0].get("device"),
                     "errors": sorted({str(r["error"]) for r in results if r["status"] != "ok"})})
        print(json.dumps(runs[-1]), flush=True)
        if args.json:  # after each N: a run cut short keeps what it measured
            Path(args.json).write_text(json.dumps({"args": vars(args), "runs": runs}, indent=1))
    first = runs[0]["trials_per_hour"] if runs else None
    print("\n| processes | wall (s) | ok | trials/hour | vs first | defense s/trial |\n|---|---|---|---|---|---|")
    for r in runs:
        print(f"| {r['processes']} | {r['wall_s']:.0f} | {r['ok']}/{len(configs)} | {r['trials_per_hour']:.0f} | "
              f"{r['trials_per_hour'] / first:.2f}x | {r['defense_s_per_trial']:.2f} |" if first else "")
    return 0


if __name__ == "__main__":
    sys.exit(main())
