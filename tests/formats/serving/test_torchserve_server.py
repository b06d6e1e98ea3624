"""TorchServe archives served by a real torchserve on loopback, through the generated handler (slow), and
the handler's (de)serialization and the runtime's host checks unit-tested without a server."""

from __future__ import annotations

import importlib.util
import io
import json
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from buildsys.config.schema import Acceptance
from buildsys.errors import StepError
from buildsys.storage.lock import Lock
from buildsys.formats import get_runtime
from buildsys.formats.serving import torchserve_server as server
from buildsys.formats import get_format, get_step
from buildsys.formats.serving import torchserve_handler as handler
from buildsys.formats.serving.torchserve import HANDLER_SOURCE
from buildsys.nodes.verify import resolve_acceptance
from tests.conftest import REPO, make_tiny_project
from tests.helpers.models import Tiny

UNAVAILABLE = get_runtime("torchserve-server").unavailable()
needs_archiver = pytest.mark.skipif(importlib.util.find_spec("model_archiver") is None,
                                    reason="needs torch-model-archiver (the serving extra)")
needs_server = pytest.mark.skipif(UNAVAILABLE is not None, reason=f"no TorchServe here: {UNAVAILABLE}")


SERVED = """\
models:
  tiny:
    source: {factory: "tinynet:build", weights: tiny.pt}
    inputs: [{name: x, shape: [batch, 4]}]
    outputs: [{name: y, kind: scores}]
    data: {validation: val.npz}
targets:
  served: {model: tiny, format: torchserve, acceptance: {serving: true}}
"""

# Appended to the archived handler: later definitions replace the generated ones.
FAILS_TO_INITIALIZE = '''

def handle(data, context):
    raise RuntimeError("broken on purpose: this handler cannot initialize")
'''
DROPS_A_COLUMN = '''

def encode(names, results, single):
    return {name: value[:, :-1].tolist() for name, value in zip(names, results)}
'''


@pytest.fixture(scope="module")
def cnn_mar(cnn: Tiny, cnn_ts: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("cnn-mar")
    cnn.run("torchserve-from-torchscript", out, input_path=cnn_ts)
    return out / "model.mar"


@pytest.fixture
def short_tmp() -> Iterator[Path]:
    """A temp directory shallow enough that a server's worker sockets fit in it (AF_UNIX: 107 bytes)."""
    path = Path(tempfile.mkdtemp(prefix="mbt-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def with_handler_tail(mar: Path, dest: Path, tail: str) -> Path:
    """A copy of `mar` whose handler.py has `tail` appended (a broken handler in a valid archive)."""
    with zipfile.ZipFile(mar) as old, zipfile.ZipFile(dest, "w", zipfile.ZIP_DEFLATED) as new:
        for name in old.namelist():
            data = old.read(name)
            new.writestr(name, data + tail.encode() if name == "handler.py" else data)
    return dest


def server_processes(private: Path) -> list[str]:
    """Command lines of running processes that mention `private` (a server's directory or temp dir)."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if proc.name.isdigit() and str(private) in cmdline:
            found.append(cmdline)
    return found


def check_served(tiny: Tiny, out: Path, artifact: Path) -> dict[str, Any]:
    """The check step run in-process on `artifact` with `serving: true`; its metrics."""
    tiny.run("reference", out / "ref", extra={"source_format": "pytorch"})
    options = resolve_acceptance(Acceptance(serving=True), "fp32", tiny.model.outputs)
    return tiny.run("check", out / "check", input_path=artifact,
                    extra={"format": "torchserve", "reference": str(out / "ref/reference.npz")}, **options)


# --- a real server ---------------------------------------------------------------------------------


@pytest.mark.slow
@needs_archiver
@needs_server
def test_served_target_builds_and_its_check_compares_served_outputs(tmp_path: Path, short_tmp: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TMPDIR", str(short_tmp))  # the build's workers put the server's directory here
    project = make_tiny_project(tmp_path / "proj", SERVED)
    out = project.run("build", "served").stdout
    assert "passed" in out, out
    metrics = Lock.read(project.root / "deploy.lock").as_dict()["nodes"]["verify:served"]["metrics"]
    serving = metrics["serving"]
    assert metrics["passed"] is True and metrics["samples"] == 48
    assert serving["runtime"] == "torchserve-server" and serving["passed"] is True and serving["failures"] == []
    observed = serving["outputs"]["y"]
    assert {"max_abs", "max_rel", "cosine", "top1_agreement"} <= set(observed)
    assert observed["max_abs"]["observed"] <= 1e-5 and observed["top1_agreement"]["observed"] == 1.0
    # The server is gone with its directory, and wrote nothing where the build ran.
    assert not server_processes(short_tmp)
    assert not [p for p in short_tmp.iterdir() if p.name.startswith("modelbuild-torchserve-")]
    assert not (project.root / "logs").exists() and not (project.root / "model_store").exists()


@pytest.mark.slow
@needs_archiver
@needs_server
def test_a_handler_that_cannot_initialize_fails_with_its_exception(cnn: Tiny, cnn_mar: Path, tmp_path: Path,
                                                                   short_tmp: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(server.tempfile, "tempdir", str(short_tmp))  # where load() makes the server's directory
    broken = with_handler_tail(cnn_mar, tmp_path / "broken.mar", FAILS_TO_INITIALIZE)
    with pytest.raises(StepError, match=r"^TorchServe could not load model 'cnn' from 'broken\.mar' \(HTTP 500: "
                                        r"Failed to start workers.*RuntimeError: broken on purpose: this handler "
                                        r"cannot initialize") as failure:
        get_runtime("torchserve-server").load(broken, cnn.model, cnn.root)
    assert "\n" not in str(failure.value)
    assert not server_processes(short_tmp) and not list(short_tmp.iterdir())  # stopped, directory removed


@pytest.mark.slow
@needs_archiver
@needs_server
def test_a_handler_that_answers_the_wrong_shape_fails_the_served_check(cnn: Tiny, cnn_mar: Path,
                                                                       tmp_path: Path) -> None:
    broken = with_handler_tail(cnn_mar, tmp_path / "model.mar", DROPS_A_COLUMN)
    metrics = check_served(cnn, tmp_path, broken)
    assert metrics["outputs"]["logits"]["passed"] is True  # the archived model itself is right...
    assert metrics["passed"] is False and metrics["serving"]["passed"] is False  # ...what is served is not
    assert metrics["failures"] == ["served by torchserve-server: logits: shape [48, 9] != reference shape [48, 10]"]


# --- the handler, without a server ---------------------------------------------------------------


def test_the_archived_handler_is_the_module_and_part_of_the_key() -> None:
    assert HANDLER_SOURCE == Path(handler.__file__)
    assert get_step("torchserve-from-torchscript").shipped_files == (HANDLER_SOURCE,)  # editing it rebuilds
    assert get_format("torchserve").serving_runtime == "torchserve-server"


@needs_archiver
def test_the_archive_holds_the_handler_verbatim(cnn_mar: Path) -> None:
    with zipfile.ZipFile(cnn_mar) as archive:
        assert archive.read("handler.py") == HANDLER_SOURCE.read_bytes()


def test_importing_the_handler_imports_neither_torch_nor_numpy() -> None:
    code = ("import sys, buildsys.formats.serving.torchserve_handler, buildsys.formats.serving.torchserve_server; "
            "heavy = [m for m in ('torch', 'numpy') if m in sys.modules]; assert not heavy, heavy")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)


def _npy(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array)
    return buf.getvalue()


def _npz(**arrays: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def test_load_value_reads_npy_npz_json_bytes_text_and_decoded_json() -> None:
    x = np.arange(6, dtype="float32").reshape(2, 3)
    np.testing.assert_array_equal(handler.load_value(_npy(x)), x)
    loaded = handler.load_value(bytearray(_npz(a=x, b=x[:1])))
    assert sorted(loaded) == ["a", "b"] and loaded["b"].shape == (1, 3)
    assert handler.load_value(b'{"x": [1, 2]}') == {"x": [1, 2]}
    assert handler.load_value("[[1.5]]") == [[1.5]]
    assert handler.load_value([1, 2]) == [1, 2]


SPECS = [{"name": "image", "shape": ["batch", 1, 2, 2], "dtype": "float32"}]
TWO = [{"name": "x", "shape": ["batch", 3], "dtype": "float32"}, {"name": "ids", "shape": ["batch"], "dtype": "int64"}]


def test_decode_batches_single_samples_and_casts() -> None:
    images = np.ones((3, 1, 2, 2), dtype="float64")
    arrays, single = handler.decode(SPECS, {"body": _npz(image=images)})
    assert not single and arrays["image"].dtype == np.float32 and arrays["image"].shape == (3, 1, 2, 2)
    arrays, single = handler.decode(SPECS, {"data": images[0].tolist()})  # a bare list, one sample
    assert single and arrays["image"].shape == (1, 1, 2, 2) and arrays["image"].flags.c_contiguous
    arrays, single = handler.decode(TWO, {"x": json.dumps([[1, 2, 3]]).encode(), "ids": _npy(np.array([7]))})
    assert not single and arrays["ids"].dtype == np.int64 and arrays["ids"].tolist() == [7]  # multipart fields


@pytest.mark.parametrize("request_, message", [
    ({}, "the request has no body"),
    ({"body": {"x": [[1, 2, 3]]}}, r"missing input\(s\) \['ids'\]; the model takes \['x', 'ids'\]"),
    ({"body": [[1, 2, 3]]}, r"this model takes the inputs \['x', 'ids'\]: send a JSON object keyed by input name"),
    ({"body": {"x": [[1, 2]], "ids": [1]}}, r"input 'x' has shape \[1, 2\]; the model takes \['batch', 3\]"),
    ({"body": {"x": [[[1, 2, 3]]], "ids": [1]}}, r"input 'x' has 3 dimension\(s\); the model takes 2"),
    ({"body": {"x": [[1, 2, 3], [4, 5, 6]], "ids": [1]}}, "the inputs of one request must hold the same number"),
])
def test_decode_names_what_is_wrong_with_a_request(request_: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        handler.decode(TWO, request_)


def test_outputs_in_order_and_encode() -> None:
    assert handler.outputs_in_order({"b": 2, "a": 1}, ["a", "b"]) == [1, 2]
    assert handler.outputs_in_order({"p": 1, "q": 2}, ["a"]) == [1]  # unnamed dict: its order
    assert handler.outputs_in_order((1, 2, 3), ["a", "b"]) == [1, 2]
    with pytest.raises(ValueError, match="the model returned 1 output"):
        handler.outputs_in_order(5, ["a", "b"])
    results = [np.array([[1.5, 2.0]], dtype="float32"), np.array([[3]])]
    assert handler.encode(["s", "n"], results, single=False) == {"s": [[1.5, 2.0]], "n": [[3]]}
    assert handler.encode(["s", "n"], results, single=True) == {"s": [1.5, 2.0], "n": [3]}
    assert json.loads(json.dumps(handler.encode(["s"], results, False))) == {"s": [[1.5, 2.0]]}


def test_handle_merges_requests_into_one_batch_and_splits_replies() -> None:
    import torch

    service = handler.ModelbuildHandler()
    calls: list[int] = []

    def module(x: torch.Tensor) -> dict[str, torch.Tensor]:
        calls.append(len(x))
        return {"total": x.sum(dim=1, keepdim=True), "double": (2 * x).to(torch.bfloat16)}

    service.inputs = [{"name": "x", "shape": ["batch", 2], "dtype": "float32"}]
    service.outputs, service.module, service.device = ["double", "total"], module, torch.device("cpu")
    service.dynamic_batch = service.initialized = True
    replies = service.handle([{"body": {"x": [[1, 2], [3, 4]]}}, {"body": _npy(np.array([5, 6], "float32"))}])
    assert calls == [3]
    assert replies == [{"double": [[2, 4], [6, 8]], "total": [[3], [7]]}, {"double": [10, 12], "total": [11]}]
    service.dynamic_batch = False
    service.handle([{"body": {"x": [[1, 2]]}}, {"body": {"x": [[3, 4]]}}])
    assert calls == [3, 1, 1]


# --- the runtime, without a server ---------------------------------------------------------------


def test_unavailable_says_what_to_install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    runtime = get_runtime("torchserve-server")
    monkeypatch.setattr(server, "torchserve_version", lambda: None)
    assert runtime.unavailable() == "TorchServe is not installed (pip install -c constraints.txt torchserve)"
    monkeypatch.setattr(server, "torchserve_version", lambda: "0.12.0")
    monkeypatch.delenv("JAVA_HOME", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))
    assert runtime.unavailable() == ("TorchServe needs Java, and there is no java on PATH "
                                     "(apt-get install default-jre-headless)")
    jdk = tmp_path / "jdk"
    (jdk / "bin").mkdir(parents=True)
    (jdk / "bin/java").write_text("")
    (jdk / "release").write_text('JAVA_VERSION="11.0.2"\n')
    monkeypatch.setenv("JAVA_HOME", str(jdk))
    assert runtime.unavailable() == (f"TorchServe 0.12.0 needs Java 17+, but {jdk}/bin/java is Java 11 "
                                     "(apt-get install openjdk-17-jre-headless, or set JAVA_HOME)")
    (jdk / "release").write_text('JAVA_VERSION="17.0.15"\n')
    assert runtime.unavailable() is None
    (jdk / "release").write_text('JAVA_VERSION="1.8.0_392"\n')
    assert server.java_major(str(jdk / "bin/java")) == 8 and server.min_java("0.10.0") == 11


def test_config_binds_loopback_only_and_turns_auth_and_metrics_off(tmp_path: Path) -> None:
    ports = dict(zip(server.PORTS, server.free_ports(len(server.PORTS))))
    assert len(set(ports.values())) == len(server.PORTS)
    config = dict(line.split("=", 1) for line in server.config_properties(ports, tmp_path).splitlines())
    addresses = [v for k, v in config.items() if k.endswith("_address")]
    assert len(addresses) == 5 and all("127.0.0.1" in a for a in addresses)
    assert config["disable_token_authorization"] == "true" and config["enable_metrics_api"] == "false"
    assert config["enable_envvars_config"] == "false" and config["model_store"] == str(tmp_path)


def test_log_excerpt_is_one_line_with_the_workers_exceptions(tmp_path: Path) -> None:
    logs = server.ServerLogs(tmp_path)
    assert logs.excerpt(wait_s=0) == "(the server wrote no log)"
    logs.dir.mkdir()
    prefix = "2026-01-01T00:00:00,000 [INFO ] W-9000-m_1.0-stdout MODEL_LOG - "
    (logs.dir / "model_log.log").write_text("".join(prefix + line + "\n" for line in [
        "Torch worker started.", "Traceback (most recent call last):", '  File "handler.py", line 3, in handle',
        "ValueError: input 'x' has shape [1, 2]", "Backend worker process died.", "RuntimeError: 500 - Unknown"]))
    assert logs.excerpt(wait_s=0) == "ValueError: input 'x' has shape [1, 2] | RuntimeError: 500 - Unknown"
    assert logs.excerpt(logs.offset(), wait_s=0) == "(the server wrote no log)"
