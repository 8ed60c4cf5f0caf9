"""Checks of the GPU paths that the CPU cannot exercise, one JSON object per check on stdout
(bench/gpu_check.sh runs this on a CUDA machine):

- trials default to one GPU each where there are GPUs (`--gpus-per-trial` not given);
- one process runs trials of different devices and precisions one after another (a reused Ray
  actor): each gets what it asked for;
- an optimizer state saved on the GPU resumes on a machine without one;
- fp16 is refused; a bf16 NBA trial ends with finite metrics on the GPU;
- a pack member on the GPU equals the same configuration alone (to float tolerance: cuDNN may
  pick other kernels for other batch shapes, so exact equality is not expected here).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
import traceback


OPTS = {"list": False, "json": None, "results": []}


def check(name):
    def wrap(fn):
        if OPTS["list"]:  # --list: the checks this script holds, none run
            print(json.dumps({"check": name}), flush=True)
            return fn
        t0 = time.time()
        try:
            out = {"check": name, "ok": True, **(fn() or {})}
        except Exception as e:  # every check reports, whatever the others do
            out = {"check": name, "ok": False, "error": f"{type(e).__name__}: {e}",
                   "trace": traceback.format_exc()[-1500:]}
        out["s"] = round(time.time() - t0, 1)
        print(json.dumps(out), flush=True)
        OPTS["results"].append(out)
        if OPTS["json"]:  # after each check: a run cut short keeps what it checked
            with open(OPTS["json"], "w") as f:
                json.dump(OPTS["results"], f, indent=1)
        return fn
    return wrap


def small(cache, **over):
    cfg = {"dataset": "synthetic", "attack": "badnets", "defense": "nba", "device": "cuda", "cache_dir": cache,
           "seed": 1, "clean_fraction": 0.1, "data.synthetic_train": 2000, "data.synthetic_test": 500,
           "backdoor.epochs": 8, "badnets.rate": 0.2, "teacher.epochs": 10, "teacher.milestones": [5],
           "nba.optim.epochs": 2}
    return {**cfg, **over}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--list", action="store_true", help="list the checks without running them (gpu_check.sh --dry-run)")
    ap.add_argument("--json", default=None, help="also write the checks' results to this file, after each")
    args = ap.parse_args()
    OPTS.update(list=args.list, json=args.json)
    import torch

    assert args.list or torch.cuda.is_available(), "no CUDA device"
    cache = tempfile.mkdtemp(prefix="nba_gpu_cache_")

    @check("default_gpus_per_trial")
    def _():
        from nba_scale.sweep.resources import Shape

        shape = Shape.from_args(argparse.Namespace(gpus_per_trial=None, cpus_per_trial=1.0, workers_per_trial=None,
                                                   address=None))
        assert shape.gpus == 1.0, shape
        return {"gpus_per_trial": shape.gpus}

    @check("accelerator_follows_each_trial")
    def _():
        from nba_scale.training import make_accelerator

        seen = []
        for device, precision in (("cuda", "no"), ("cpu", "no"), ("cuda", "bf16"), ("cuda", "no")):
            acc = make_accelerator(device, precision)
            seen.append([acc.device.type, acc.mixed_precision])
        assert seen == [["cuda", "no"], ["cpu", "no"], ["cuda", "bf16"], ["cuda", "no"]], seen
        return {"seen": seen}

    @check("gpu_optimizer_state_resumes_on_cpu_only")
    def _():
        model = torch.nn.Linear(4, 2).cuda()
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        model(torch.randn(3, 4, device="cuda")).sum().backward()
        opt.step()
        path = os.path.join(cache, "optimizer.pt")
        torch.save(opt.state_dict(), path)
        code = ("import torch; s = torch.load(%r, map_location='cpu', weights_only=True); "
                "print(next(iter(s['state'].values()))['momentum_buffer'].device)" % path)
        r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                           env={**os.environ, "CUDA_VISIBLE_DEVICES": ""})
        assert r.returncode == 0 and r.stdout.strip() == "cpu", r.stderr[-500:]

    @check("fp16_refused")
    def _():
        from nba_scale.config import ConfigError
        from nba_scale.trial import check_config

        try:
            check_config(small(cache, precision="fp16"))
        except ConfigError as e:
            return {"message": str(e)}
        raise AssertionError("fp16 was accepted")

    @check("bf16_nba_trial_on_gpu")
    def _():
        from nba_scale.trial import run_trial

        r = run_trial(small(cache, precision="bf16"))
        assert r["status"] == "ok" and r["device"].startswith("cuda"), r.get("error")
        assert all(math.isfinite(r[k]) for k in ("asr", "ba")), r
        return {k: r[k] for k in ("asr_before", "ba_before", "asr", "ba", "wall_s")}

    @check("pack_member_equals_alone_on_gpu")
    def _():
        from nba_scale.trial import run_pack, run_trial

        variants = [{"nba.beta": 0.2}, {"nba.lambda1": 0.5, "nba.T": 2.0}, {"nba.alpha": 3.0}]
        configs = [small(cache, **v) for v in variants]
        packed = run_pack(configs)
        alone = [run_trial(c) for c in configs]
        diffs = [max(abs(p[k] - a[k]) for k in ("asr", "ba")) for p, a in zip(packed, alone)]
        assert all(p["status"] == "ok" for p in packed) and max(diffs) <= 0.02, diffs
        return {"max_abs_diff": max(diffs), "exact": max(diffs) == 0.0}

    return 0


if __name__ == "__main__":
    sys.exit(main())
