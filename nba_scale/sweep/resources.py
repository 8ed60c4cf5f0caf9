"""The resources of one trial and Ray's start, without importing Ray until Ray is needed: the
GPU image `bench/gpu_check.sh` runs on has torch but no Ray, and the device tests and proofs
still check what a trial gets by default (`default_gpus`, `Shape`)."""
from __future__ import annotations

import argparse
import dataclasses
import math
import os
from pathlib import Path
from typing import Any

from ..config import ConfigError


@dataclasses.dataclass(frozen=True)
class Shape:
    """The resources of one trial: `--cpus-per-trial`, `--gpus-per-trial`, `--workers-per-trial`.
    A fraction of a GPU packs several trials on one; two or more workers run a trial
    data-parallel through Ray Train (sweep/trainable.py). `retries` (`--max-failures`): how often
    a trial whose process or node died (a spot preemption) starts again, from its last epoch
    checkpoint, before its row says failed."""
    cpus: float
    gpus: float
    workers: int
    retries: int = 0
    pack_mode: str = "auto"  # `--pack-mode`: how a pack trains (nba_scale/stacking.py)

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> "Shape":
        gpus = args.gpus_per_trial if args.gpus_per_trial is not None else default_gpus(args.address)
        if args.cpus_per_trial <= 0 and not gpus:
            raise ConfigError("--cpus-per-trial 0 without GPUs would give a trial nothing to run on; use 1 or more")
        workers = args.workers_per_trial or max(1, math.ceil(gpus))
        if gpus > 1 and gpus % workers:
            raise ConfigError(f"--gpus-per-trial {gpus:g} does not split evenly over {workers} workers; "
                              f"use a whole number of GPUs per worker")
        if workers > 1 and gpus and gpus < workers:
            raise ConfigError(f"--workers-per-trial {workers} needs at least one GPU each; "
                              f"pass --gpus-per-trial {workers} (or 0 for CPU workers)")
        if getattr(args, "pack", 1) > 1 and workers > 1:
            raise ConfigError("--pack trains its members in one process: it does not combine with data-parallel "
                              "workers (--workers-per-trial, --gpus-per-trial above 1)")
        retries = args.max_failures if getattr(args, "max_failures", None) is not None else (
            CLUSTER_RETRIES if args.address else 0)
        return cls(args.cpus_per_trial, gpus, workers, retries, getattr(args, "pack_mode", "auto"))

    def resources(self) -> dict[str, float]:
        """What Tune reserves per trial."""
        if self.workers <= 1:
            return {"cpu": self.cpus, "gpu": self.gpus}
        # The Tune trial only drives a Ray Train run whose workers hold the CPUs and GPUs; Tune
        # refuses an empty request, so the driver takes a token share of a CPU, or, where the
        # cluster offers it (ray_cluster.yaml's head), of DRIVER_RESOURCE: the driver then stays
        # on the head, never on a spot worker whose loss would take the whole Train run with it.
        return driver_resources()

    def plan_fields(self, storage: Path) -> dict[str, Any]:
        """The RunPlan's fields (sweep/plan.py) a data-parallel trial reads."""
        return {"workers": self.workers, "cpus": self.cpus, "gpus": self.gpus,
                "train_storage": str(storage / "_train"), "max_failures": self.retries, "pack_mode": self.pack_mode}


CLUSTER_RETRIES = 3  # --max-failures with --address: spot nodes come and go
DRIVER_RESOURCE = "nba_scale_driver"  # a custom resource only the head offers (ray_cluster.yaml)


def driver_resources() -> dict[str, float]:
    """What the driver of a data-parallel trial reserves (see `Shape.tune_setup`)."""
    import ray

    if ray.is_initialized() and ray.cluster_resources().get(DRIVER_RESOURCE):
        return {"cpu": 0, DRIVER_RESOURCE: 1}
    return {"cpu": 0.01}


def default_gpus(address: str | None) -> float:
    """GPUs per trial when --gpus-per-trial is not given: one where there are GPUs (this machine's,
    the cluster's, or a node type's the cluster's autoscaler can start), else none. Ray hides the
    GPUs from a trial that asks for none, so a default of 0 would run every trial of a GPU machine
    on its CPU; and a cluster whose GPU workers are not up yet (every cold start: `min_workers: 0`)
    would then ask the autoscaler for CPUs alone and train on the GPU workers' CPUs for hours."""
    where = "found"
    if address is None:
        import torch

        n = torch.cuda.device_count()
    else:
        import ray

        start_ray(address)
        n = ray.cluster_resources().get("GPU", 0)
        if not n:
            n, node_type = launchable_gpus()
            where = f"on node type {node_type!r}, which the autoscaler starts when trials ask for it"
    if n:
        print(f"{n:g} GPU(s) {where}: each trial gets one (--gpus-per-trial 0.25 shares one between four "
              f"trials; 0 runs them on the CPU)", flush=True)
    return 1.0 if n else 0.0


# Where `ray up` leaves the cluster's resolved config on the head (its `--autoscaling-config`), the
# node types' CPUs and GPUs filled in from the instance types; the driver of `ray job submit`
# runs there. NBA_AUTOSCALING_CONFIG names another file (a KubeRay or hand-started head).
AUTOSCALING_CONFIG = "~/ray_bootstrap_config.yaml"


def launchable_gpus(path: str | None = None) -> tuple[float, str]:
    """The most GPUs one node of a type the autoscaler may start offers, and that type's name:
    (0, "") without the file or without such a type."""
    import yaml

    file = Path(os.path.expanduser(path or os.environ.get("NBA_AUTOSCALING_CONFIG") or AUTOSCALING_CONFIG))
    try:
        doc = yaml.safe_load(file.read_text()) or {}
    except (OSError, yaml.YAMLError):
        return 0.0, ""
    best = (0.0, "")
    for name, node in (doc.get("available_node_types") or {}).items():
        node = node or {}
        gpus = float((node.get("resources") or {}).get("GPU", 0) or 0)
        if name != doc.get("head_node_type") and node.get("max_workers", doc.get("max_workers", 0)) and gpus > best[0]:
            best = (gpus, name)
    return best


def start_ray(address: str | None) -> None:
    import ray

    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    # Epoch reports carry no ASR/BA unless a scheduler reads them (an evaluation per epoch saved);
    # Tune would refuse them for lacking the searcher's metrics. Every final report has both
    # (sweep/trainable.py), and that is the one the searcher is told.
    os.environ.setdefault("TUNE_DISABLE_STRICT_METRIC_CHECKING", "1")
    # Per-epoch checkpoints are on purpose (an interrupted trial restarts from its last epoch).
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    ray.init(address=address, include_dashboard=False, configure_logging=False, log_to_driver=False,
             ignore_reinit_error=True)


