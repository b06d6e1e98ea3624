"""Distributed builds on a real dask.distributed cluster (LocalCluster, worker processes) started here.

Builds go through the real CLI in a subprocess (`modelbuild build --executor dask --scheduler ADDR`)
with a file:// remote cache: artifacts travel through it; the project directory is shared, as the
dask executor requires. Which worker built a node is read from the build record (`built.worker`).
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from buildsys.running.dask import resources_for
from buildsys.storage.lock import Lock
from tests.conftest import TinyProject, make_tiny_project, tiny_deploy

distributed = pytest.importorskip("distributed")

TS_ONLY = tiny_deploy("""\
  ts:
    model: tiny
    format: torchscript
""", calibration=False)


def _cluster(**kwargs: object) -> distributed.LocalCluster:
    return distributed.LocalCluster(n_workers=2, processes=True, threads_per_worker=1, dashboard_address=":0",
                                    **kwargs)


@pytest.fixture(scope="module")
def cluster() -> Iterator[distributed.LocalCluster]:
    with _cluster() as c:
        yield c


@pytest.fixture
def remote(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A file:// remote cache for the build subprocesses."""
    shared = tmp_path / "remote"
    monkeypatch.setenv("MODELBUILD_REMOTE", shared.as_uri())
    for name in ("MODELBUILD_REMOTE_READONLY", "MODELBUILD_CACHE", "MODELBUILD_SCHEDULER"):
        monkeypatch.delenv(name, raising=False)
    return shared


def dask_build(project: TinyProject, address: str, *args: str, check: bool = True):
    return project.run("build", "--executor", "dask", "--scheduler", address, *args, check=check)


def record(project: TinyProject) -> dict[str, dict]:
    return json.loads((project.root / ".modelbuild" / "deploy.record.json").read_text())["nodes"]


def workers(address: str) -> dict[str, dict]:
    with distributed.Client(address, set_as_default=False) as client:
        return client.scheduler_info(n_workers=-1)["workers"]


@pytest.mark.slow
def test_a_dask_build_passes_every_check_and_a_second_is_a_no_op(tiny: TinyProject, cluster, remote: Path) -> None:
    out = dask_build(tiny, cluster.scheduler_address).stdout
    lock = Lock.read(tiny.root / "deploy.lock")
    assert set(lock.nodes) == {"tiny/reference", "tiny/torchscript", "tiny/onnx", "tiny/onnx-int8",
                               "verify:ts", "verify:server", "verify:int8"}
    assert {n: e["verdict"] for n, e in lock.nodes.items() if n.startswith("verify:")} == \
        {"verify:ts": "passed", "verify:server": "passed", "verify:int8": "passed"}, out
    assert (tiny.root / "artifacts/ts/model.pt").is_file() and (tiny.root / "artifacts/int8/model.onnx").is_file()
    addresses = set(workers(cluster.scheduler_address))
    built_on = {name: e["built"]["worker"] for name, e in record(tiny).items()}
    assert set(built_on.values()) <= addresses and len(built_on) == 7  # every node ran on the cluster
    log = (tiny.root / ".modelbuild/logs/verify_ts.log").read_text()
    assert f"# dask worker: {built_on['verify:ts']}" in log
    # Artifacts travelled through the remote: every blob of the lock is there.
    for entry in lock.nodes.values():
        for _rel, digest, _size, _x in entry["files"]:
            assert (remote / "cas" / digest[:2] / digest).is_file()
    calls = tiny.factory_calls()
    assert "Nothing to do" in dask_build(tiny, cluster.scheduler_address).stdout
    assert tiny.factory_calls() == calls


@pytest.mark.slow
def test_a_crashing_step_fails_its_node_and_spares_the_worker_and_the_lock(tmp_path: Path, cluster,
                                                                           remote: Path) -> None:
    project = make_tiny_project(tmp_path / "p", TS_ONLY)
    dask_build(project, cluster.scheduler_address)
    before = (project.root / "deploy.lock").read_bytes()
    addresses = set(workers(cluster.scheduler_address))
    project.edit(f"kwargs: {{calls: {project.calls}}}", f"kwargs: {{calls: {project.calls}, crash: true}}")
    proc = dask_build(project, cluster.scheduler_address, check=False)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "crashed (SIGSEGV)" in proc.stdout + proc.stderr
    assert (project.root / "deploy.lock").read_bytes() == before  # nothing succeeded: lock untouched
    assert set(workers(cluster.scheduler_address)) == addresses  # the converter died, not the Dask worker


@pytest.mark.slow
def test_a_step_past_its_time_budget_is_stopped_on_the_dask_worker_with_its_line(tmp_path: Path, cluster,
                                                                               remote: Path) -> None:
    from tests.conftest import TINYNET

    project = make_tiny_project(tmp_path / "p", TS_ONLY)
    addresses = set(workers(cluster.scheduler_address))
    project.edit(f"kwargs: {{calls: {project.calls}}}", f"kwargs: {{calls: {project.calls}, sleep: 300}}")
    proc = dask_build(project, cluster.scheduler_address, "--timeout", "30", check=False)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    line = TINYNET.splitlines().index("        time.sleep(sleep)") + 1
    assert "stopped: still running at its 30 s time budget (peak " in proc.stdout
    assert f"MB), in tinynet.py:{line} (build)" in proc.stdout  # the stack taken on the Dask worker
    assert set(workers(cluster.scheduler_address)) == addresses  # the step's subprocess died, not the Dask worker


def _kill_a_busy_worker(address: str, sleeping: Path, deadline: float) -> str:
    """Wait until a step is inside the (sleeping) factory, then SIGKILL a Dask worker running a step."""
    while not sleeping.exists():
        assert time.monotonic() < deadline, "the step never started"
        time.sleep(0.1)
    with distributed.Client(address, set_as_default=False) as client:
        pids = client.run(os.getpid)
        busy = [w for w, keys in client.processing().items() if any(str(k).startswith("modelbuild-") for k in keys)]
    assert busy
    os.kill(pids[busy[0]], signal.SIGKILL)
    return busy[0]


@pytest.mark.slow
@pytest.mark.parametrize("allowed_failures", [3, 0], ids=["retried", "fails"])
def test_a_worker_killed_mid_step_retries_or_fails_its_node_and_never_corrupts_the_lock(
        tmp_path: Path, remote: Path, allowed_failures: int) -> None:
    import subprocess
    import sys

    import dask

    project = make_tiny_project(tmp_path / "p", TS_ONLY.replace("kwargs: {calls: CALLS}",
                                                                 "kwargs: {calls: CALLS, sleep: 4}"))
    with dask.config.set({"distributed.scheduler.allowed-failures": allowed_failures}), _cluster() as cluster:
        build = subprocess.Popen([sys.executable, "-m", "buildsys", "-f", str(project.config), "build", "--executor",
                                  "dask", "--scheduler", cluster.scheduler_address], cwd=project.root, text=True,
                                 stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env={**os.environ, "NO_COLOR": "1"})
        try:
            killed = _kill_a_busy_worker(cluster.scheduler_address, Path(str(project.calls) + ".sleeping"),
                                         time.monotonic() + 120)
            out, _ = build.communicate(timeout=300)
        finally:
            if build.poll() is None:
                build.kill()
    lock = Lock.read(project.root / "deploy.lock")  # parses: written only after whole publishes
    json.loads((project.root / "deploy.lock").read_text())
    built = record(project)
    if allowed_failures:
        assert build.returncode == 0, out
        assert set(lock.nodes) == {"tiny/reference", "tiny/torchscript", "verify:ts"}
        assert lock.nodes["verify:ts"]["verdict"] == "passed"
        assert killed not in {e["built"]["worker"] for e in built.values()}  # re-run elsewhere
    else:
        assert build.returncode == 1, out
        assert "Dask workers running it died" in out
        for name, entry in lock.nodes.items():  # whatever finished is whole; the killed node is absent
            assert entry["files"] and built[name]["built"]["worker"] != killed, name
        assert "verify:ts" not in lock.nodes


@pytest.mark.slow
def test_steps_go_to_the_worker_that_declares_their_toolchain(tiny: TinyProject, remote: Path) -> None:
    from distributed import Nanny, Scheduler, SpecCluster

    spec = {"plain": {"cls": Nanny, "options": {"nthreads": 1}},
            "torch": {"cls": Nanny, "options": {"nthreads": 1, "resources": {"toolchain-torch": 1}}}}
    with SpecCluster(workers=spec, scheduler={"cls": Scheduler, "options": {"dashboard_address": None}}) as cluster:
        cluster.wait_for_workers(2)
        torch_worker = next(a for a, w in workers(cluster.scheduler_address).items() if w["resources"])
        dask_build(tiny, cluster.scheduler_address)
    built_on = {name: e["built"]["worker"] for name, e in record(tiny).items()}
    # Steps of the torch toolchain (and the checks of their artifacts) only where it is declared;
    # onnx-toolchain steps (int8) ask for toolchain-onnx, which no worker declares: anywhere.
    for name in ("tiny/reference", "tiny/torchscript", "tiny/onnx", "verify:ts", "verify:server"):
        assert built_on[name] == torch_worker, (name, built_on)
    assert set(built_on) >= {"tiny/onnx-int8", "verify:int8"}


def test_resource_names() -> None:
    assert resources_for("coreml") == ["toolchain-coreml"]
    assert resources_for("tensorrt") == ["toolchain-tensorrt", "gpu"]


def test_without_a_remote_cache_the_dask_executor_refuses_clearly(tiny: TinyProject,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MODELBUILD_REMOTE", "off")
    proc = tiny.run("build", "--executor", "dask", "--scheduler", "tcp://127.0.0.1:1", check=False)
    assert proc.returncode == 2
    assert "--executor dask needs a remote cache (MODELBUILD_REMOTE) so workers can exchange artifacts" in proc.stderr
    assert not (tiny.root / "deploy.lock").exists() and tiny.factory_calls() == 0


def test_other_misconfigurations_are_clear_errors(tiny: TinyProject, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MODELBUILD_REMOTE", (tmp_path / "r").as_uri())
    monkeypatch.delenv("MODELBUILD_SCHEDULER", raising=False)
    proc = tiny.run("build", "--executor", "dask", check=False)
    assert proc.returncode == 2 and "needs a scheduler address" in proc.stderr and "MODELBUILD_SCHEDULER" in proc.stderr
    proc = tiny.run("build", "--scheduler", "tcp://127.0.0.1:1", check=False)
    assert proc.returncode == 2 and "--scheduler is only used by the dask executor" in proc.stderr
    monkeypatch.setenv("MODELBUILD_REMOTE_READONLY", "1")
    proc = tiny.run("build", "--executor", "dask", "--scheduler", "tcp://127.0.0.1:1", check=False)
    assert proc.returncode == 2 and "writable remote cache" in proc.stderr
    assert tiny.factory_calls() == 0
