"""The shared remote cache against a real S3 API (moto's server on loopback) and a file:// remote.

Builds go through the real CLI in subprocesses, as a user's would; project B is a clean copy of A
(same deploy.yaml and model files, no lock, empty .modelbuild), like a fresh CI checkout.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from buildsys.formats import get_step
from buildsys.storage.hashing import StatCache, digest_file
from buildsys.storage.keys import HostBinding, explain, host_platform
from buildsys.storage.lock import Lock
from buildsys.storage.remote import Remote, settings
from buildsys.storage.store import Store
from tests.conftest import TinyProject, make_tiny_project, tiny_deploy

pytest.importorskip("s3fs")
moto_server = pytest.importorskip("moto.server")

DEPLOY = tiny_deploy("""\
  ts:
    model: tiny
    format: torchscript
  server:
    model: tiny
    format: onnx
""", calibration=False)
NODES = {"tiny/reference", "tiny/torchscript", "tiny/onnx", "verify:ts", "verify:server"}
COPIED = ("deploy.yaml", "tinynet.py", "tiny.pt", "val.npz", "calib.npz")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class S3:
    """A moto S3 server on loopback, and the AWS settings that point botocore at it."""

    def __init__(self) -> None:
        import logging

        logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one log line per request otherwise
        self.port = _free_port()
        self.server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)
        self.server.start()
        self.endpoint = f"http://127.0.0.1:{self.port}"

    def env(self, monkeypatch: pytest.MonkeyPatch) -> None:
        for name, value in {"AWS_ENDPOINT_URL": self.endpoint, "AWS_ACCESS_KEY_ID": "testing",
                            "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}.items():
            monkeypatch.setenv(name, value)
        for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL_S3"):
            monkeypatch.delenv(name, raising=False)

    def bucket(self, name: str) -> str:
        import boto3

        client = boto3.client("s3", endpoint_url=self.endpoint, region_name="us-east-1",
                              aws_access_key_id="testing", aws_secret_access_key="testing")
        client.create_bucket(Bucket=name)
        return f"s3://{name}/cache"

    def stop(self) -> None:
        self.server.stop()


@pytest.fixture(scope="module")
def s3_server() -> Iterator[S3]:
    server = S3()
    yield server
    server.stop()


@pytest.fixture
def s3(s3_server: S3, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest) -> str:
    """A fresh bucket for one test; returns its remote URL."""
    s3_server.env(monkeypatch)
    name = request.node.name.replace("_", "-").lower()[:50].strip("-")
    return s3_server.bucket(name)


@pytest.fixture
def remote_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    monkeypatch.delenv("MODELBUILD_REMOTE_READONLY", raising=False)
    monkeypatch.delenv("MODELBUILD_CACHE", raising=False)
    return monkeypatch


def project_a(tmp_path: Path) -> TinyProject:
    return make_tiny_project(tmp_path / "a", DEPLOY)


def clone(a: TinyProject, where: Path) -> TinyProject:
    """A clean checkout of `a` elsewhere: same deploy.yaml and model files, nothing built."""
    where.mkdir(parents=True)
    for name in COPIED:
        if (a.root / name).exists():
            shutil.copy2(a.root / name, where / name)
    return TinyProject(where, a.calls)  # the same factory-call counter: steps run in B show up there


def keys(project: TinyProject) -> dict[str, str]:
    return {name: e["key"] for name, e in Lock.read(project.root / "deploy.lock").nodes.items()}


def plan_nodes(project: TinyProject) -> dict[str, dict]:
    return {n["node"]: n for n in json.loads(project.run("plan", "--json").stdout)["nodes"]}


def remote_files(url: str) -> dict[str, bytes]:
    remote = Remote(url)
    return {p[len(remote._root):].lstrip("/"): remote.fs.cat_file(p) for p in remote.fs.find(remote._root)}


# --- end to end ---------------------------------------------------------------------------------

@pytest.mark.slow
def test_a_clean_clone_builds_nothing_when_the_remote_has_it(tmp_path: Path, s3: str, remote_env: pytest.MonkeyPatch) -> None:
    remote_env.setenv("MODELBUILD_REMOTE", s3)
    a = project_a(tmp_path)
    a.run("build")
    calls = a.factory_calls()
    stored = remote_files(s3)
    entries = [p for p in stored if p.startswith("ac/")]
    assert len(entries) == len(NODES)
    for path, data in stored.items():  # every blob is named by its bytes
        if path.startswith("cas/"):
            from buildsys.storage.hashing import digest_bytes

            assert path.split("/")[-1] == digest_bytes(data)

    b = clone(a, tmp_path / "b")
    plan = plan_nodes(b)
    assert set(plan) == NODES
    for node in plan.values():  # downstream nodes are keyed through their upstream's remote tree
        assert node["state"] == "stale" and any(r.startswith("from remote") for r in node["reasons"]), node
    out = b.run("build").stdout
    assert out.count("from remote") == len(NODES), out
    assert " built " not in out
    assert a.factory_calls() == calls  # zero steps ran
    assert keys(b) == keys(a)
    assert (b.root / "artifacts/ts/model.pt").read_bytes() == (a.root / "artifacts/ts/model.pt").read_bytes()
    assert (b.root / "artifacts/server/model.onnx").is_file()
    assert "Nothing to do" in b.run("build").stdout
    status = b.run("cache", "status").stdout
    assert f"{len(NODES)} result(s) in the lock, {len(NODES)} in the local cache, {len(NODES)} on the remote" in status


@pytest.mark.slow
def test_read_only_pulls_but_never_pushes_and_cache_push_pull(tmp_path: Path, s3: str, remote_env: pytest.MonkeyPatch) -> None:
    remote_env.setenv("MODELBUILD_REMOTE", s3)
    remote_env.setenv("MODELBUILD_REMOTE_READONLY", "1")
    a = project_a(tmp_path)
    a.run("build")
    assert remote_files(s3) == {}
    refused = a.run("cache", "push", check=False)
    assert refused.returncode == 2 and "read-only" in refused.stderr

    remote_env.setenv("MODELBUILD_REMOTE_READONLY", "0")
    out = a.run("cache", "push").stdout
    assert f"pushed {len(NODES)} result(s)" in out
    assert f"pushed 0 result(s) to {s3}; {len(NODES)} already there" in a.run("cache", "push").stdout

    remote_env.setenv("MODELBUILD_REMOTE_READONLY", "1")  # a CI consumer: pulls, pushes nothing
    b = clone(a, tmp_path / "b")
    shutil.copy2(a.root / "deploy.lock", b.root / "deploy.lock")  # a committed lock, as in a real clone
    before = remote_files(s3)
    assert f"pulled {len(NODES)} result(s)" in b.run("cache", "pull").stdout
    out = b.run("build").stdout
    assert " built " not in out and "from remote" not in out  # everything was prefetched
    assert remote_files(s3) == before
    assert (b.root / "artifacts/ts/model.pt").is_file()


@pytest.mark.slow
def test_a_corrupted_remote_blob_is_a_miss_and_is_repaired(tmp_path: Path, remote_env: pytest.MonkeyPatch) -> None:
    shared = tmp_path / "shared"
    url = shared.as_uri()  # file:// remote
    remote_env.setenv("MODELBUILD_REMOTE", url)
    a = project_a(tmp_path)
    a.run("build")
    calls = a.factory_calls()
    onnx = Lock.read(a.root / "deploy.lock").nodes["tiny/onnx"]["files"][0][1]
    blob = shared / "cas" / onnx[:2] / onnx
    good = blob.read_bytes()
    blob.chmod(0o644)
    blob.write_bytes(good[:-1] + bytes([good[-1] ^ 0xFF]))  # same size, one byte flipped

    b = clone(a, tmp_path / "b")
    proc = b.run("build")
    assert "does not match its digest" in proc.stderr
    lines = {line.split()[1]: line.split()[0] for line in proc.stdout.splitlines() if line.startswith("  ")
             and len(line.split()) > 1 and line.split()[1] in NODES}
    assert lines["tiny/onnx"] == "built"  # rebuilt here, not trusted
    assert lines["tiny/torchscript"] == "cached" and lines["tiny/reference"] == "cached"
    assert a.factory_calls() > calls
    store = b.root / ".modelbuild" / "cas"
    for path in store.glob("*/*"):  # nothing in B's store is the bad bytes
        assert digest_file(path) == path.parent.name + path.name
    rebuilt = Lock.read(b.root / "deploy.lock").nodes["tiny/onnx"]["files"][0][1]
    if rebuilt == onnx:  # the export is deterministic: B's push replaced the corrupt copy
        assert blob.read_bytes() == good
    assert not list(shared.rglob(".*.tmp"))


def test_racing_publishers_leave_one_valid_entry(tmp_path: Path, s3: str) -> None:
    stat = StatCache(None)
    store = Store(tmp_path / "store", stat)
    out = store.scratch("out")
    (out / "model.bin").write_bytes(os.urandom(3 << 20))  # a multi-chunk blob
    (out / "meta.json").write_text("{}")
    tree, listing = store.put_tree(out)
    files = [e.as_list() for e in listing]
    url_file = (tmp_path / "shared").as_uri()
    for url in (s3, url_file):
        barrier = threading.Barrier(6)
        results: list[bool] = []

        def publish(i: int, url: str = url, barrier: threading.Barrier = barrier, results: list = results) -> None:
            remote = Remote(url)  # one per builder, as separate processes would have
            entry = {"tree": tree, "files": files, "metrics": {"i": i}, "built": {"host": f"builder{i}"}}
            barrier.wait()
            results.append(remote.push("k" * 64, entry, store))

        threads = [threading.Thread(target=publish, args=(i,)) for i in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert results == [True] * 6, url
        stored = remote_files(url)
        assert sorted(p for p in stored if p.startswith("ac/")) == [f"ac/kk/{'k' * 64}.json"], url
        assert not [p for p in stored if p.rsplit("/", 1)[-1].startswith(".")], url  # no temporaries left
        fresh = Store(tmp_path / f"consumer-{url[:2]}", StatCache(None))
        entry = Remote(url).pull("k" * 64, fresh)
        assert entry is not None and entry["tree"] == tree and entry["built"]["host"].startswith("builder")
        fresh.checkout(entry["files"], tmp_path / f"checkout-{url[:2]}", link=False)  # verifies every blob


def test_a_corrupt_s3_blob_never_reaches_the_local_store(tmp_path: Path, s3: str) -> None:
    store = Store(tmp_path / "a", StatCache(None))
    out = store.scratch("out")
    (out / "model.bin").write_bytes(b"x" * 1000)
    tree, listing = store.put_tree(out)
    entry = {"tree": tree, "files": [e.as_list() for e in listing], "metrics": {}, "built": {}}
    remote = Remote(s3)
    assert remote.push("a" * 64, entry, store)
    digest = listing[0].digest
    remote.fs.pipe_file(remote.blob_path(digest), b"y" * 1000)
    consumer = Store(tmp_path / "b", StatCache(None))
    assert Remote(s3).pull("a" * 64, consumer) is None
    assert not consumer.blob(digest).exists() and consumer.get_action("a" * 64) is None
    remote.fs.pipe_file(remote.action_path("b" * 64), b'{"tree": "0", "files": []}')  # tree does not match
    assert Remote(s3).lookup("b" * 64) is None


@pytest.mark.slow
def test_no_network_when_everything_is_fresh(tmp_path: Path, remote_env: pytest.MonkeyPatch) -> None:
    server = S3()
    try:
        server.env(remote_env)
        url = server.bucket("noop")
        remote_env.setenv("MODELBUILD_REMOTE", url)
        a = project_a(tmp_path)
        a.run("build")
    finally:
        server.stop()
    for command in ("plan", "build"):  # the server is gone: a no-op must not notice (a call would say "unavailable")
        proc = a.run(command)
        assert "remote cache" not in proc.stderr and "unavailable" not in proc.stderr, proc.stderr
        assert "fresh" in proc.stdout.lower() or "nothing to do" in proc.stdout.lower()
    b = clone(a, tmp_path / "b")  # stale nodes do ask, find it gone, and say so once
    proc = b.run("plan")
    assert proc.stderr.count("unavailable") == 1 and "building without it" in proc.stderr
    assert "from remote" not in proc.stdout


# --- settings and keys -----------------------------------------------------------------------------

class _Cfg:
    def __init__(self, remote: str | None = None, readonly: bool = False) -> None:
        from buildsys.config.schema import Cache

        self.project = type("P", (), {"cache": Cache(remote=remote, remote_readonly=readonly)})()


def test_settings_environment_over_deploy_yaml(remote_env: pytest.MonkeyPatch) -> None:
    remote_env.delenv("MODELBUILD_REMOTE", raising=False)
    assert settings(_Cfg()) is None
    assert settings(_Cfg("s3://b/p", readonly=True)) == ("s3://b/p", True)
    remote_env.setenv("MODELBUILD_REMOTE", "file:///mnt/x")
    assert settings(_Cfg("s3://b/p")) == ("file:///mnt/x", False)
    remote_env.setenv("MODELBUILD_REMOTE_READONLY", "1")
    assert settings(_Cfg("s3://b/p")) == ("file:///mnt/x", True)
    remote_env.setenv("MODELBUILD_REMOTE_READONLY", "0")
    assert settings(_Cfg("s3://b/p", readonly=True)) == ("file:///mnt/x", False)
    remote_env.setenv("MODELBUILD_REMOTE", "off")
    assert settings(_Cfg("s3://b/p")) is None


def test_unknown_protocol_is_a_clear_error() -> None:
    from buildsys.storage.remote import RemoteError

    with pytest.raises(RemoteError, match="cannot open remote cache nosuch://x"):
        _ = Remote("nosuch://x").fs


def test_only_host_dependent_results_name_the_platform() -> None:
    def binding(step: str, options: dict, data_sets: tuple[str, ...] = ()) -> HostBinding:
        return get_step(step).host_binding(options, data_sets)

    assert binding("torchscript-from-pytorch", {}, ("example",)) is HostBinding.PORTABLE
    assert binding("onnx-int8-from-onnx", {"method": "dynamic"}) is HostBinding.PORTABLE
    assert binding("onnx-int8-from-onnx", {"method": "static"}, ("calibration",)) is HostBinding.PLATFORM
    assert binding("tflite-int8-from-saved-model", {"mode": "full"}, ("calibration",)) is HostBinding.PLATFORM
    assert binding("onnx-optimized-from-onnx", {"level": "all"}) is HostBinding.CPU_CLASS
    assert binding("onnx-optimized-from-onnx", {"level": "extended"}) is HostBinding.PORTABLE
    assert binding("openvino-int8-from-openvino", {"max_accuracy_drop": 0.01}, ("calibration",)) is HostBinding.CPU_CLASS
    assert host_platform().count("-") >= 1
    assert explain({"step": "check", "platform": "linux-x86_64"}, {"step": "check", "platform": "darwin-arm64"}) == \
        ["platform linux-x86_64→darwin-arm64"]


def test_plan_keys_checks_by_platform_but_not_converters(tmp_path: Path, remote_env: pytest.MonkeyPatch) -> None:
    from buildsys.planning.expand import expand
    from buildsys.planning.project import open_project

    remote_env.delenv("MODELBUILD_REMOTE", raising=False)
    planner = open_project(str(project_a(tmp_path).config)).planner
    for node in expand(planner.config).order():
        components = planner.components(node, {d: "0" * 64 for d in node.deps})
        assert ("platform" in components) == (node.kind == "check"), node.name
        # an int8 verdict names the CPU's instruction-set class; an fp32 one the OS and architecture only
        assert ("cpu" in components) == (node.kind == "check" and node.precision == "int8"), node.name
