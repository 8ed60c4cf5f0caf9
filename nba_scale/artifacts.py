"""Content-addressed cache of trained artifacts (backdoored models, teachers, learned triggers).

An artifact's key is the SHA-256 of the canonical JSON of everything that determines it (its
`spec`: dataset fingerprint, attack and parameters, architecture, training parameters, seed,
clean fraction for teachers, parent artifact, FORMAT_VERSION). It is stored as
`ROOT/<kind>/<key>.safetensors` plus a JSON sidecar `<key>.json` with the spec and its metrics;
the sidecar is written last, so its presence means the artifact is complete. Writes are atomic.
Processes asking for the same missing artifact serialise on a file lock: one builds, the others
wait and load it. Nothing is rebuilt while the cache holds it.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable

import torch
from filelock import FileLock, Timeout

from .atomic import write_json
from .checkpoints import CheckpointError, load_weights, save_weights

FORMAT_VERSION = 1
log = logging.getLogger("nba_scale")

Builder = Callable[[], "tuple[dict[str, torch.Tensor], dict[str, Any]]"]


def default_cache_dir() -> Path:
    return Path(os.environ.get("NBA_CACHE_DIR") or Path.home() / ".cache" / "nba_scale" / "artifacts")


def spec_key(spec: dict[str, Any]) -> str:
    canon = json.dumps({"format": FORMAT_VERSION, **spec}, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canon.encode()).hexdigest()[:32]


class ArtifactCache:
    def __init__(self, root: str | os.PathLike | None = None, lock_timeout_s: float = 6 * 3600):
        self.root = Path(root).expanduser() if root else default_cache_dir()
        self.lock_timeout_s = lock_timeout_s

    def paths(self, kind: str, key: str) -> tuple[Path, Path, Path]:
        d = self.root / kind
        return d / f"{key}.safetensors", d / f"{key}.json", d / f"{key}.lock"

    def load(self, kind: str, key: str) -> tuple[dict[str, torch.Tensor], dict[str, Any]] | None:
        weights, sidecar, _ = self.paths(kind, key)
        if not sidecar.is_file():
            return None
        try:
            meta = json.loads(sidecar.read_text())
            return load_weights(weights), meta
        except (CheckpointError, json.JSONDecodeError, OSError) as e:
            # Both files were written atomically, so this is outside damage (disk, a user's edit):
            # the cache's remedy is to rebuild, and it says so.
            log.warning("cached %s %s is unreadable (%s); rebuilding it", kind, key, e)
            sidecar.unlink(missing_ok=True)
            return None

    def get_or_build(self, kind: str, spec: dict[str, Any], build: Builder, accelerator=None
                     ) -> tuple[dict[str, torch.Tensor], dict[str, Any], bool]:
        """Returns (tensors, sidecar, built): built is False when the cache already held it.

        Under `accelerate launch` (several processes of one data-parallel job) every rank must
        take part in building, so ranks do not lock against each other: all build in lockstep,
        the main process writes, the others wait for it.
        """
        key = spec_key(spec)
        hit = self.load(kind, key)
        if hit is not None:
            return hit[0], hit[1], False
        if accelerator is not None and accelerator.num_processes > 1:
            tensors, meta = build()
            if accelerator.is_main_process:
                self._write(kind, key, spec, tensors, meta, 0.0)
            accelerator.wait_for_everyone()
            return tensors, json.loads(self.paths(kind, key)[1].read_text()), True
        weights, sidecar, lock_path = self.paths(kind, key)
        lock_path.parent.mkdir(parents=True, exist_ok=True)
        lock = FileLock(str(lock_path), timeout=self.lock_timeout_s)
        try:
            if not _try_now(lock):
                # Said on stderr, not at log level INFO: a run that waits minutes in silence looks hung.
                print(f"waiting: another process is building {kind} {key[:12]} (lock {lock_path}); this run "
                      f"goes on when it is cached", file=sys.stderr, flush=True)
                lock.acquire()
        except Timeout:
            raise TimeoutError(f"gave up after {self.lock_timeout_s:.0f}s waiting for {lock_path}; "
                               f"if no process is building it, delete the lock file") from None
        try:
            hit = self.load(kind, key)  # built by whoever held the lock before us
            if hit is not None:
                return hit[0], hit[1], False
            t0 = time.time()
            tensors, meta = build()
            return tensors, self._write(kind, key, spec, tensors, meta, time.time() - t0), True
        finally:
            lock.release()

    def _write(self, kind, key, spec, tensors, meta, build_s) -> dict[str, Any]:
        weights, sidecar, _ = self.paths(kind, key)
        meta = {**meta, "kind": kind, "key": key, "spec": spec, "format": FORMAT_VERSION,
                "build_s": round(build_s, 3), "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        save_weights(tensors, weights, metadata={"key": key, "kind": kind})
        write_json(sidecar, meta)  # last: its presence marks the artifact complete
        return json.loads(json.dumps(meta, default=str))


def _try_now(lock: FileLock) -> bool:
    try:
        lock.acquire(timeout=0)
        return True
    except Timeout:
        return False
