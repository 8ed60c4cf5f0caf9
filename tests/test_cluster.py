"""The cluster path on one machine: cluster/local.yaml (ray_cluster.yaml's shape on Ray's
fake_multinode provider) started, a sweep submitted to it with --address, one of its worker
nodes killed mid-sweep, the cluster stopped; the Parquet rows hold every planned trial once."""
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from nba_scale.sweep.store import parquet_files, read_table

REPO = Path(__file__).resolve().parent.parent
RAY = str(Path(sys.executable).parent / "ray")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def node_ip() -> str:
    import ray._private.services

    return ray._private.services.get_node_ip_address()


def cluster_processes(temp: Path):
    """The head's processes (their command lines name its temp dir) and everything they started:
    the fake worker nodes are the autoscaler's children, in Ray's default temp dir."""
    import psutil

    roots = [p for p in psutil.process_iter(["cmdline"]) if str(temp) in " ".join(p.info["cmdline"] or [])]
    found = {p.pid: p for p in roots}
    for p in roots:
        try:
            found.update({c.pid: c for c in p.children(recursive=True)})
        except psutil.NoSuchProcess:
            pass
    return list(found.values())


def worker_nodes(temp: Path) -> dict[str, list]:
    """Each fake worker node's raylet and everything it started (its trial workers), by node id
    (the provider sets it in the raylet's environment; the head's is ...00000)."""
    import psutil

    nodes: dict[str, list] = {}
    for p in cluster_processes(temp):
        try:
            node = p.environ().get("RAY_OVERRIDE_NODE_ID_FOR_TESTING") if p.name() == "raylet" else None
            if node and not node.endswith("00000"):
                nodes[node] = [p, *p.children(recursive=True)]
        except (psutil.Error, OSError):
            continue
    return nodes


def kill(processes) -> None:
    import psutil

    for p in processes:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass


@pytest.mark.slow
def test_a_sweep_on_the_local_cluster_survives_a_lost_worker_node(tmp_path):
    # Ray's fake worker nodes reach the head's GCS at the address in the provider's config, and
    # send no auth token: a copy of local.yaml with this test's port, token auth off for the
    # cluster and its driver alike.
    port, ip = free_port(), node_ip()
    config = yaml.safe_load((REPO / "cluster" / "local.yaml").read_text())
    config["provider"]["gcs_address"] = f"{ip}:{port}"
    (tmp_path / "local.yaml").write_text(yaml.safe_dump(config))
    temp = Path("/tmp") / f"nbacluster{os.getpid()}"
    env = {**os.environ, "RAY_ADDRESS": "", "RAY_AUTH_MODE": "disabled", "PYTHONUNBUFFERED": "1",
           "OMP_NUM_THREADS": "1"}
    head = config["available_node_types"]["ray.head.default"]["resources"]
    start = subprocess.run([RAY, "start", "--head", f"--autoscaling-config={tmp_path / 'local.yaml'}",
                            f"--port={port}", f"--temp-dir={temp}", f"--num-cpus={head['CPU']}",
                            f"--resources={json.dumps({k: v for k, v in head.items() if k != 'CPU'})}",
                            "--include-dashboard=false", "--disable-usage-stats"],
                           capture_output=True, text=True, env={**env, "RAY_FAKE_CLUSTER": "1"}, timeout=120)
    assert start.returncode == 0, start.stderr[-2000:]
    results, cache = tmp_path / "results", tmp_path / "cache"
    cmd = [sys.executable, "-m", "nba_scale.tune", "--attack", "badnets", "--dataset", "synthetic", "--preset", "smoke",
           "--clean-fraction", "0.1", "--num-samples", "4", "--max-concurrent", "2", "--set", "nba.optim.epochs=4",
           "--results", str(results), "--cache-dir", str(cache), "--name", "cluster", "--device", "cpu",
           "--address", f"{ip}:{port}", "--checkpoint-every", "1"]
    try:
        driver = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        study = results / "cluster" / "_tune"
        deadline = time.time() + 900
        while time.time() < deadline and not list(study.rglob("checkpoint_000002/state.json")):
            time.sleep(0.5)
        nodes = worker_nodes(temp)
        assert len(nodes) == 2, f"the autoscaler should have started both worker nodes: {sorted(nodes)}"
        # Lose a node while trials run (one has checkpointed its second epoch): raylet, workers, all of it.
        lost = sorted(nodes)[0]
        kill(nodes[lost])
        out, _ = driver.communicate(timeout=900)
    finally:
        kill(cluster_processes(temp))  # `ray stop` would stop every Ray instance on this machine
        shutil.rmtree(temp, ignore_errors=True)
    assert driver.returncode == 0, out[-4000:]
    assert "artifacts: 1 to build or load, as Ray tasks" in out  # built before the trials, on the cluster
    assert "its process died; starting it again" in out, out[-4000:]
    rows = read_table(results / "cluster").to_pylist()
    assert len(rows) == 4 and len({r["trial_id"] for r in rows}) == 4
    # compacted when the sweep ended: its one partition's four one-row files are one file
    assert [Path(f).name[:5] for f in parquet_files(results / "cluster")] == ["rows-"]
    assert all(r["status"] == "ok" for r in rows) and sum(bool(r["is_default"]) for r in rows) == 1
    points = {tuple(r[c] for c in ("nba_lambda1", "nba_lambda2", "nba_lambda3", "nba_T", "nba_beta")) for r in rows}
    assert len(points) == 4  # no trial ran twice under two ids
    ran_on = [r["node_id"] for r in rows]
    print("trials per node:", {n[-5:]: ran_on.count(n) for n in set(ran_on)}, "lost:", lost[-5:])
    assert set(ran_on) <= set(nodes)  # on worker nodes, never the head (CPU 0)


def cluster_config(name: str) -> dict:
    return yaml.safe_load((REPO / name).read_text())


@pytest.mark.parametrize("name", ["ray_cluster.yaml", "cluster/local.yaml"])
def test_cluster_configs_pass_rays_own_schema(name):
    from ray.autoscaler._private.util import fillout_defaults, validate_config

    config = cluster_config(name)
    if config["provider"]["type"] == "aws":  # filled in as `ray up` does (the fake provider's defaults file is not shipped)
        config = fillout_defaults(config)
    validate_config(config)  # raises on a config `ray up` would refuse


def test_the_aws_cluster_pins_ray_guards_its_api_and_ships_only_code():
    """What would waste money or expose the cluster, read from ray_cluster.yaml."""
    import ray

    from nba_scale.sweep.execution import DRIVER_RESOURCE

    c = cluster_config("ray_cluster.yaml")
    # one Ray everywhere, the one installed here (the tested floor)
    assert c["docker"]["image"].startswith(f"rayproject/ray:{ray.__version__}-")
    assert any(f"ray[default,tune]=={ray.__version__}" in cmd for cmd in c["setup_commands"])
    head_start = " ".join(c["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head_start and "0.0.0.0" not in head_start
    assert {".venv", "nba_results", ".git"} <= set(c["rsync_exclude"])
    assert c["available_node_types"][c["head_node_type"]]["resources"] == {"CPU": 0, DRIVER_RESOURCE: 1000}
    nfs = [p for p in c["provider"]["security_group"]["IpPermissions"] if p["FromPort"] <= 2049 <= p["ToPort"]]
    assert nfs and nfs[0]["IpProtocol"].lower() == "tcp"
    init = " ".join(c["initialization_commands"])
    assert "${EFS_DNS" not in init and "REPLACE-ME" in init and "exit 1" in init  # refuses to start unset
    assert "-v /mnt/shared:/mnt/shared" in c["docker"]["run_options"]
    assert "nfs-common" in init and init.index("REPLACE-ME") < init.index("apt-get")  # the message comes first


def test_every_node_gets_the_same_torch_build_and_spot_workers_several_zones():
    import re
    import tomllib

    from packaging.requirements import Requirement

    c = cluster_config("ray_cluster.yaml")
    first = c["setup_commands"][0]  # before nba_scale, whose `torch>=` would otherwise pick PyPI's of the day
    pins = dict(re.findall(r'"(torch|torchvision)==([0-9.]+)"', first))
    assert set(pins) == {"torch", "torchvision"} and "--index-url https://download.pytorch.org/whl/cu" in first
    deps = {Requirement(d).name: Requirement(d) for d in
            tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]}
    assert all(deps[name].specifier.contains(version) for name, version in pins.items())
    assert len(c["provider"]["availability_zone"].split(",")) >= 2


def test_a_cold_cluster_gives_trials_and_artifact_builds_the_gpus_its_autoscaler_can_start(tmp_path, monkeypatch,
                                                                                           capsys):
    """No GPU worker is up before the first trial asks for one (`min_workers: 0`): the GPUs per
    trial come from the node types in the head's resolved cluster config, and the artifacts are
    built by tasks that ask for a GPU, which is what makes the autoscaler start one."""
    import ray

    import nba_scale.trial
    from nba_scale.sweep import execution, resources

    c = cluster_config("ray_cluster.yaml")
    # `ray up` fills each node type's resources in from its instance type (AWS): a g5.2xlarge's
    c["available_node_types"]["gpu_worker"]["resources"] = {"CPU": 8, "GPU": 1}
    bootstrap = tmp_path / "ray_bootstrap_config.yaml"
    bootstrap.write_text(yaml.safe_dump(c))
    monkeypatch.setenv("NBA_AUTOSCALING_CONFIG", str(bootstrap))
    monkeypatch.setattr(resources, "start_ray", lambda address: None)
    monkeypatch.setattr(ray, "cluster_resources", lambda: {"CPU": 0.0, resources.DRIVER_RESOURCE: 1000.0})  # the head
    assert resources.launchable_gpus() == (1.0, "gpu_worker")
    assert resources.default_gpus("auto") == 1.0
    assert "1 GPU(s) on node type 'gpu_worker', which the autoscaler starts" in capsys.readouterr().out
    c["available_node_types"]["gpu_worker"]["resources"] = {"CPU": 8}  # CPU workers only
    bootstrap.write_text(yaml.safe_dump(c))
    assert resources.default_gpus("auto") == 0.0
    monkeypatch.setenv("NBA_AUTOSCALING_CONFIG", str(tmp_path / "absent.yaml"))
    assert resources.launchable_gpus() == (0.0, "")

    asked = []  # what the prebuild's Ray tasks reserve, on a cluster with no GPU up yet

    def remote(**kw):
        asked.append(kw)
        return lambda fn: type("Task", (), {"remote": staticmethod(lambda cfg: lambda: fn(cfg))})  # a "ref"

    monkeypatch.setattr(ray, "remote", remote)
    monkeypatch.setattr(ray, "wait", lambda refs, num_returns: (refs[:1], refs[1:]))
    monkeypatch.setattr(ray, "get", lambda ref: ref())
    monkeypatch.setattr(nba_scale.trial, "prepare_artifacts",
                        lambda cfg: {"status": "ok", "ba_before": 0.9, "asr_before": 1.0})
    cfg = {"attack": "badnets", "defense": "nba", "clean_fraction": 0.05, "seed": 0}
    for trial_gpus, task_gpus in ((1.0, 1), (0.25, 1), (0.0, 0)):
        asked.clear()
        assert len(execution.prebuild("cold", [cfg], "auto", trial_gpus)) == 1
        assert asked == [{"num_cpus": 1, "num_gpus": task_gpus, "max_retries": 3}]


def test_an_unset_efs_name_stops_the_node_with_a_message():
    c = cluster_config("ray_cluster.yaml")
    r = subprocess.run(["bash", "-c", c["initialization_commands"][0]], capture_output=True, text=True, timeout=30)
    assert r.returncode == 1 and "write your EFS file system's DNS name" in r.stderr


@pytest.mark.slow
def test_data_parallel_drivers_stay_on_a_head_that_offers_the_driver_resource():
    """On ray_cluster.yaml's head (CPU 0, nba_scale_driver) the driver of a data-parallel trial
    reserves nba_scale_driver, which only the head has, instead of a CPU share a spot worker
    could give; elsewhere a token share of a CPU."""
    import ray

    from nba_scale.sweep.execution import DRIVER_RESOURCE, Shape

    shape = Shape(cpus=1, gpus=0, workers=2)
    for offered, wanted in (({}, {"cpu": 0.01}), ({DRIVER_RESOURCE: 10}, {"cpu": 0, DRIVER_RESOURCE: 1})):
        ray.init(num_cpus=1, resources=offered, include_dashboard=False, configure_logging=False, log_to_driver=False)
        try:
            resources, fields = shape.resources(), shape.plan_fields(Path("/tmp/unused"))
        finally:
            ray.shutdown()
        assert resources == wanted and fields["workers"] == 2
