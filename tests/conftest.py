import os

import pytest
import torch

# Two CPU cores in CI: keep torch from oversubscribing them when pytest and Ray share the box.
torch.set_num_threads(min(2, os.cpu_count() or 1))

# `pytest --device cuda` (bench/gpu_check.sh) runs the trials of `small_config` on that device.
DEVICE = {"name": "cpu"}


def pytest_addoption(parser):
    parser.addoption("--device", default="cpu", help="device of the trials built by small_config (cpu, cuda)")


def pytest_configure(config):
    DEVICE["name"] = config.getoption("--device")


def toy_arrays(side: int = 32) -> dict:
    """A 4-class real-data set as an npz holds it: 40 training and 12 test random images of
    `side` px (the same pixels on every call)."""
    import numpy as np

    rng = np.random.default_rng(0)
    return dict(x_train=rng.integers(0, 255, (40, side, side, 3), dtype=np.uint8), y_train=np.arange(40) % 4,
                x_test=rng.integers(0, 255, (12, side, side, 3), dtype=np.uint8), y_test=np.arange(12) % 4)


def small_config(cache_dir, **overrides):
    """A synthetic trial sized for CI (about a minute on 2 cores the first time, cached after).

    Poison rate 0.2 instead of BadNets' 0.1: within an 8-epoch budget on 2,000 synthetic images
    the 3x3 patch was implanted in 3/3 seeds at 0.2 but only 1/3 at 0.1. The clean set (10 % =
    200 images) is 4 batches an epoch, so the teacher keeps lr 0.1 for 5 epochs instead of NAD's
    2: with NAD's 2 (8 steps) the teacher kept the backdoor (ASR 92 %). See docs/DEVELOPING.md.
    """
    cfg = {
        "dataset": "synthetic", "attack": "badnets", "defense": "nba", "device": DEVICE["name"],
        "cache_dir": str(cache_dir), "seed": 1, "clean_fraction": 0.1,
        "data.synthetic_train": 2000, "data.synthetic_test": 500,
        "backdoor.epochs": 8, "backdoor.batch_size": 64, "badnets.rate": 0.2,
        "teacher.epochs": 10, "teacher.milestones": [5], "nba.optim.epochs": 20,
    }
    cfg.update(overrides)
    for plugin, key in (("attack", "badnets."), ("defense", "nba.")):  # sections of plug-ins not in use
        if cfg[plugin] != key[:-1]:
            cfg = {k: v for k, v in cfg.items() if not k.startswith(key) or k in overrides}
    return cfg


class LocalSession:
    """A Tune session stand-in for a trial run in this process (`sweep.trainable.Session`'s
    interface): keeps every report, and a copy of each epoch checkpoint in `keep` (a folder)."""
    is_main = True

    def __init__(self, keep=None):
        self.reports, self.checkpoints, self.keep = [], {}, keep

    def get_checkpoint(self):
        return None

    def report(self, metrics, checkpoint_dir=None):
        import shutil

        self.reports.append(metrics)
        if checkpoint_dir and self.keep is not None:
            self.checkpoints[metrics["epoch"]] = shutil.copytree(checkpoint_dir, self.keep / f"ck{metrics['epoch']}")


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("artifacts")
