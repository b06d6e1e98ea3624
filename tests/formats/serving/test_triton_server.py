"""Triton model repositories checked by a real Triton Inference Server (the `triton-server` runtimes) and
config.pbtxt validated with Triton's own ModelConfig protobuf schema.

The server is the tritonserver binary that nvidia-pytriton ships. That wheel ships only Triton's Python
backend, not the ONNX Runtime or PyTorch backends, so on a host without Triton's release backends the
serving check must report "not run" (asserted below). To exercise the real server end to end anyway,
`standin_backends` provides a *Python-based Triton backend* named `onnxruntime` (Triton runs
`backends/<name>/model.py` in its Python backend for models of that backend): the real server parses
config.pbtxt, validates every request against it and batches, and the stand-in runs model.onnx in ONNX
Runtime. Those tests say so in their names; they prove the server machinery, not Triton's C++ backend.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from buildsys.config.schema import Acceptance
from buildsys.config.data import Batch
from buildsys.errors import StepError
from buildsys.storage.lock import Lock
from buildsys.formats import get_runtime
from buildsys.formats.serving.repository import locate
from buildsys.formats.serving.pbtxt import parse_config
from buildsys.formats import get_format
from buildsys.nodes.verify import resolve_acceptance
from tests.conftest import make_tiny_project, out_of_reach
from tests.helpers.models import Tiny, torch_outputs, validation_feeds

SERVER = get_runtime("triton-server")
LIBTORCH = get_runtime("triton-server-libtorch")


def _no_server() -> str | None:
    from buildsys.formats.serving.triton_server import server_files

    files = server_files()
    return files if isinstance(files, str) else None


def _no_python_backend() -> str | None:
    from buildsys.formats.serving.triton_server import _python_backend, server_files

    files = server_files()
    if isinstance(files, str):
        return files
    return None if _python_backend(files) is not None else "the wheel has no Python backend stub for this Python"


needs_server = pytest.mark.skipif(_no_server() is not None, reason=f"no Triton server here: {_no_server()}")
needs_standin = pytest.mark.skipif(_no_python_backend() is not None,
                                   reason=f"the stand-in backend needs Triton's Python backend: {_no_python_backend()}")

# A Python-based Triton backend named "onnxruntime": runs <version>/model.onnx in ONNX Runtime. Tensors
# cross the Python backend through DLPack because its stub is built against numpy 1 (as_numpy and
# Tensor(name, array) misread numpy 2 arrays).
STANDIN = '''\
import json
import os

import numpy as np
import onnxruntime
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        name = config.get("default_model_filename") or "model.onnx"
        path = os.path.join(args["model_repository"], args["model_version"], name)
        self.session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
        self.inputs = [i.name for i in self.session.get_inputs()]
        self.outputs = [o["name"] for o in config["output"]]

    def execute(self, requests):
        responses = []
        for request in requests:
            feeds = {n: np.from_dlpack(pb_utils.get_input_tensor_by_name(request, n)) for n in self.inputs}
            values = self.session.run(self.outputs, feeds)
            responses.append(pb_utils.InferenceResponse(
                [pb_utils.Tensor.from_dlpack(n, np.ascontiguousarray(v)) for n, v in zip(self.outputs, values)]))
        return responses
'''


@pytest.fixture
def standin_backends(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """MODELBUILD_TRITON_BACKENDS pointing at the stand-in `onnxruntime` backend (see the module docstring)."""
    backends = tmp_path / "standin-backends"
    (backends / "onnxruntime").mkdir(parents=True)
    (backends / "onnxruntime/model.py").write_text(STANDIN)
    monkeypatch.setenv("MODELBUILD_TRITON_BACKENDS", str(backends))
    return backends


@pytest.fixture
def no_release_backends(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Only the wheel's own backends (an empty MODELBUILD_TRITON_BACKENDS, no /opt/tritonserver)."""
    from buildsys.formats.serving import triton_server

    monkeypatch.delenv("MODELBUILD_TRITON_BACKENDS", raising=False)
    monkeypatch.setattr(triton_server, "RELEASE_BACKENDS", tmp_path / "no-release-backends")


def _check(tiny: Tiny, out: Path, fmt: str, artifact: Path) -> dict[str, Any]:
    """The check step in-process with `serving: true`, as the worker runs it."""
    ref = out / "ref"
    tiny.run("reference", ref, extra={"source_format": "pytorch"})
    options = resolve_acceptance(Acceptance(serving=True), "fp32", tiny.model.outputs)
    return tiny.run("check", out / "check", input_path=artifact,
                    extra={"format": fmt, "reference": str(ref / "reference.npz")}, **options)


# --- config.pbtxt through Triton's ModelConfig schema ----------------------------------------------


def test_formats_name_their_serving_runtimes() -> None:
    assert {get_format(f).serving_runtime for f in ("triton", "triton-fp16", "triton-int8")} == {"triton-server"}
    assert get_format("triton-torchscript").serving_runtime == "triton-server-libtorch"
    code = "import sys, buildsys.formats, buildsys.formats.serving.triton_server, buildsys.formats.serving.triton_layout; " \
           "print(sorted(m for m in ('google.protobuf', 'tritonclient', 'grpc', 'numpy') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"  # importing the steps and runtimes imports neither protobuf nor tritonclient


def test_model_config_schema_rejects_unknown_fields_and_bad_enums(cnn: Tiny, cnn_onnx: Path, tmp_path: Path) -> None:
    cnn.run("triton-from-onnx", tmp_path, input_path=cnn_onnx)
    path = tmp_path / "model_repository/cnn/config.pbtxt"
    text = path.read_text()
    layout = get_runtime("triton-layout")
    for bad, message in (
            (text.replace("max_batch_size: 8", "max_batch_size: 8\nmax_batch: 8"),
             (r'^cnn/config\.pbtxt is not a valid Triton ModelConfig: \d+:\d+ : .*Message type '
              r'"inference\.ModelConfig" has no field named "max_batch"; fix it or rebuild the target$')),
            (text.replace("TYPE_FP32", "TYPE_FLOAT32", 1),
             (r'^cnn/config\.pbtxt is not a valid Triton ModelConfig: \d+:\d+ : .*Enum type '
              r'"inference\.DataType" has no value named TYPE_FLOAT32; fix it or rebuild the target$')),
            (text.replace("KIND_AUTO", "KIND_TPU"), r"has no value named KIND_TPU"),
            (text.replace("max_batch_size: 8", 'max_batch_size: "eight"'), r"max_batch_size")):
        path.write_text(bad)
        with pytest.raises(StepError, match=message):
            locate(tmp_path / "model_repository")
        problems = layout.inspect(tmp_path / "model_repository", cnn.model, "triton")["problems"]
        assert len(problems) == 1 and problems[0].startswith("cnn/config.pbtxt is not a valid Triton ModelConfig")


def test_parse_config_reads_protobuf_text_format() -> None:
    config = parse_config(textwrap.dedent("""\
        name: 'm' platform: "onnx" "runtime_onnx"
        max_batch_size: 0
        input { name: "a" data_type: TYPE_FP32 dims: 3 dims: -1 }
        input < name: "b", data_type: TYPE_BOOL, dims: [ 1 ] >
        output [ { name: "c"; data_type: TYPE_INT8 dims: [2] reshape { shape: [ ] } } ]
        instance_group { kind: KIND_CPU count: 2 }
        dynamic_batching { }
        parameters { key: "k" value: { string_value: "t\\x41\\101" } }
        """), "m/config.pbtxt")
    assert config == {  # proto3: scalars at their default (max_batch_size 0) are absent, as for Triton
        "name": "m", "platform": "onnxruntime_onnx",
        "input": [{"name": "a", "data_type": "TYPE_FP32", "dims": [3, -1]},
                  {"name": "b", "data_type": "TYPE_BOOL", "dims": [1]}],
        "output": [{"name": "c", "data_type": "TYPE_INT8", "dims": [2], "reshape": {}}],
        "instance_group": [{"count": 2, "kind": "KIND_CPU"}], "dynamic_batching": {},
        "parameters": {"k": {"string_value": "tAA"}}}


# --- the serving check on a host without Triton's release backends -------------------------------


@needs_server
def test_missing_backends_are_reported_as_not_run(cnn: Tiny, cnn_onnx: Path, no_release_backends: None,
                                                  tmp_path: Path) -> None:
    reason = SERVER.unavailable()
    assert reason is not None and "ships no 'onnxruntime' backend (it ships: python)" in reason
    assert "MODELBUILD_TRITON_BACKENDS" in reason
    libtorch = LIBTORCH.unavailable()
    assert libtorch is not None and "ships no 'pytorch' backend" in libtorch
    cnn.run("triton-from-onnx", tmp_path / "t", input_path=cnn_onnx)
    report = _check(cnn, tmp_path, "triton", tmp_path / "t/model_repository")
    assert report["passed"] is True and report["runtime"] == "triton-layout"  # the layout check still runs
    assert report["serving"] == {"runtime": "triton-server", "passed": None, "not_run": reason}
    with pytest.raises(StepError, match="selects the 'onnxruntime' backend: the Triton server of nvidia-pytriton"):
        SERVER.load(tmp_path / "t/model_repository", cnn.model, cnn.root)


@needs_server
def test_libtorch_repository_serving_is_not_run_without_the_pytorch_backend(
        two: Tiny, tmp_path: Path, no_release_backends: None) -> None:
    if LIBTORCH.unavailable() is None:
        pytest.skip(out_of_reach("this host has Triton's pytorch backend; the served libtorch test below covers it"))
    two.run("torchscript-from-pytorch", tmp_path / "ts")
    two.run("triton-torchscript-from-torchscript", tmp_path / "t", input_path=tmp_path / "ts/model.pt")
    report = _check(two, tmp_path, "triton-torchscript", tmp_path / "t/model_repository")
    assert report["passed"] is True
    assert report["serving"]["passed"] is None and report["serving"]["runtime"] == "triton-server-libtorch"
    assert "ships no 'pytorch' backend" in report["serving"]["not_run"]


# --- a real server ---------------------------------------------------------------------------------


@pytest.mark.slow
@needs_standin
def test_served_by_a_real_triton_server_with_the_standin_backend(cnn: Tiny, cnn_onnx: Path, tmp_path: Path,
                                                                 standin_backends: Path) -> None:
    assert SERVER.unavailable() is None
    cnn.run("triton-from-onnx", tmp_path / "t", input_path=cnn_onnx)
    feeds = validation_feeds(cnn)
    with SERVER.load(tmp_path / "t/model_repository", cnn.model, cnn.root) as session:
        assert session.max_batch == 8  # config.pbtxt's max_batch_size
        pid = session.server.process.pid
        out = session.run_all(Batch(feeds, None, "test"))
        np.testing.assert_allclose(out[0], torch_outputs(cnn, feeds)[0], rtol=1e-4, atol=1e-5)
        with pytest.raises(StepError, match="Triton Inference Server refused a request to model 'cnn': .*"):
            session.run({"image": feeds["image"][:, :, :4]})  # dims [1, 8, 8] are enforced by Triton itself
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)  # close() stopped the server
    assert not session.server.scratch.exists()


@pytest.mark.slow
@needs_standin
def test_a_config_triton_refuses_fails_with_its_log(cnn: Tiny, cnn_onnx: Path, tmp_path: Path,
                                                    standin_backends: Path) -> None:
    cnn.run("triton-from-onnx", tmp_path, input_path=cnn_onnx)
    path = tmp_path / "model_repository/cnn/config.pbtxt"
    text = path.read_text()
    # Valid for the schema, refused by Triton when it loads the model; the error is Triton's own log line.
    for old, new, message in (
            ("dynamic_batching { }", "dynamic_batching { preferred_batch_size: 16 }",
             "dynamic batching preferred size must be <= max batch size for cnn"),
            ("dims: [ 1, 8, 8 ]", "dims: [ 1, 8, 8 ] reshape { shape: [ 2, 8, 8 ] }",
             "model input 'image' has different size for dims and reshape for cnn")):
        path.write_text(text.replace(old, new))
        with pytest.raises(StepError, match=r"^Triton Inference Server could not load model 'cnn' \(it exited with "
                                            r"code 1\): E\d+ .*" + message):
            SERVER.load(tmp_path / "model_repository", cnn.model, cnn.root)
    if not Path("/dev/nvidia0").exists():  # through the check step: a GPU-only config fails on a CPU host
        path.write_text(text.replace("KIND_AUTO", "KIND_GPU"))
        with pytest.raises(StepError, match=r"the triton artifact could not be run in triton-server: Triton Inference "
                                            r"Server could not load model 'cnn' .*has kind KIND_GPU but no GPUs are "
                                            r"available"):
            _check(cnn, tmp_path, "triton", tmp_path / "model_repository")


@pytest.mark.slow
@needs_standin
def test_serving_check_passes_in_a_build(tmp_path: Path, standin_backends: Path) -> None:
    project = make_tiny_project(tmp_path / "proj", """\
        models:
          tiny:
            source: {factory: "tinynet:build", weights: tiny.pt, kwargs: {calls: CALLS}}
            inputs: [{name: x, shape: [batch, 4]}]
            outputs: [{name: y, kind: scores}]
            data: {validation: val.npz}
        targets:
          triton:
            model: tiny
            format: triton
            acceptance: {serving: true}
        """)
    out = project.run("build", "triton").stdout
    assert "passed" in out, out
    metrics = Lock.read(project.root / "deploy.lock").nodes["verify:triton"]["metrics"]
    assert metrics["passed"] is True and metrics["runtime"] == "triton-layout" and metrics["samples"] == 48
    serving = metrics["serving"]
    assert serving["runtime"] == "triton-server" and serving["passed"] is True and serving["failures"] == []
    compared = serving["outputs"]["y"]  # the server's answers, judged like the artifact's
    assert compared["passed"] is True and compared["top1_agreement"]["observed"] == 1.0
    assert 0 <= compared["max_abs"]["observed"] < 1e-4 and compared["cosine"]["observed"] > 0.9999
