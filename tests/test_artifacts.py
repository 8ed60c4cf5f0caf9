import multiprocessing as mp
import time

import torch

from nba_scale.artifacts import ArtifactCache, spec_key


def _build_in_process(root, log_path, spec, barrier, results):
    def build():
        with open(log_path, "a") as f:
            f.write("built\n")
        time.sleep(1.0)  # the other process asks while this one still builds
        return {"w": torch.arange(6.0)}, {"metrics": {"ba": 0.5}}

    barrier.wait()  # both ask for the missing artifact at the same moment: the lock is contended
    t0 = time.time()
    tensors, meta, built = ArtifactCache(root).get_or_build("backdoor", spec, build)
    assert torch.equal(tensors["w"], torch.arange(6.0)) and meta["metrics"]["ba"] == 0.5
    results.put((built, time.time() - t0))


def test_second_request_builds_nothing(tmp_path):
    cache, calls = ArtifactCache(tmp_path), []

    def build():
        calls.append(1)
        return {"w": torch.ones(3)}, {"metrics": {"asr": 0.9}}

    spec = {"dataset": "synthetic", "seed": 0}
    _, meta, built = cache.get_or_build("teacher", spec, build)
    _, meta2, built2 = cache.get_or_build("teacher", dict(reversed(list(spec.items()))), build)
    assert (built, built2, len(calls)) == (True, False, 1)
    assert meta2["key"] == spec_key(spec) and meta2["spec"] == spec and meta2["metrics"] == {"asr": 0.9}
    _, _, built3 = cache.get_or_build("teacher", {**spec, "seed": 1}, build)  # anything that differs: new key
    assert built3 and len(calls) == 2
    assert not [p for p in tmp_path.rglob("*") if p.name.endswith(".tmp")]


def test_two_processes_produce_one_artifact(tmp_path):
    log = tmp_path / "builds.log"
    ctx = mp.get_context("spawn")
    barrier, results = ctx.Barrier(2), ctx.Queue()
    procs = [ctx.Process(target=_build_in_process, args=(str(tmp_path / "c"), str(log), {"k": 1}, barrier, results))
             for _ in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    assert [p.exitcode for p in procs] == [0, 0]
    outcomes = sorted(results.get(timeout=5) for _ in procs)
    (waited, waited_s), (builder, _) = outcomes  # False sorts first: the process that loaded
    assert (waited, builder) == (False, True) and log.read_text().count("built") == 1
    assert waited_s >= 0.5  # it blocked on the builder's lock, it did not arrive after the build
    assert len(list((tmp_path / "c" / "backdoor").glob("*.safetensors"))) == 1


def test_damaged_cache_entry_is_rebuilt(tmp_path):
    cache = ArtifactCache(tmp_path)
    build = lambda: ({"w": torch.zeros(2)}, {})  # noqa: E731
    cache.get_or_build("backdoor", {"a": 1}, build)
    weights, _, _ = cache.paths("backdoor", spec_key({"a": 1}))
    weights.write_bytes(b"garbage")
    _, _, built = cache.get_or_build("backdoor", {"a": 1}, build)
    assert built
