"""Serving layouts run in-process on tiny real models: Triton model repositories (ONNX Runtime and
libtorch backends, config.pbtxt written from the artifact and read back with Triton's ModelConfig) and
TorchServe archives (torch-model-archiver, the generated handler, the archived TorchScript run back)."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from pydantic import ValidationError

from buildsys.config.load import load
from buildsys.config.schema import Acceptance
from buildsys.config.data import Batch
from buildsys.errors import ConfigError, PlanError, StepError
from buildsys.planning.expand import expand
from buildsys.formats import get_runtime
from buildsys.formats.serving.pbtxt import parse_config
from buildsys.formats import formats, get_step, steps
from buildsys.formats.serving.pbtxt import write_pbtxt
from buildsys.nodes.verify import resolve_acceptance
from tests.conftest import make_tiny_project
from tests.helpers.models import Tiny, make_model, torch_outputs, validation_feeds

needs_archiver = pytest.mark.skipif(importlib.util.find_spec("model_archiver") is None,
                                    reason="needs torch-model-archiver (the serving extra)")

MINE = ("triton-from-onnx", "triton-fp16-from-onnx-fp16", "triton-int8-from-onnx-int8",
        "triton-torchscript-from-torchscript", "torchserve-from-torchscript")


@pytest.fixture(scope="module")
def two_ts(two: Tiny, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("two-ts")
    two.run("torchscript-from-pytorch", out)
    return out / "model.pt"


@pytest.fixture(scope="module")
def cnn_mar(cnn: Tiny, cnn_ts: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("cnn-mar")
    cnn.run("torchserve-from-torchscript", out, input_path=cnn_ts)
    return out / "model.mar"


def config_of(out: Path, name: str) -> dict[str, Any]:
    return parse_config((out / "model_repository" / name / "config.pbtxt").read_text(), f"{name}/config.pbtxt")


def run_session(session: Any, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    return session.run_all(Batch(feeds, None, "test"))


def check(tiny: Tiny, out: Path, fmt: str, artifact: Path, precision: str = "fp32") -> dict:
    ref = out / "ref"
    tiny.run("reference", ref, extra={"source_format": "pytorch"})
    options = resolve_acceptance(Acceptance(), precision, tiny.model.outputs)
    return tiny.run("check", out / "check", input_path=artifact, precision=precision,
                    extra={"format": fmt, "reference": str(ref / "reference.npz")}, **options)


# --- contract -------------------------------------------------------------------------------------


def test_steps_follow_the_contract_and_import_nothing_heavy() -> None:
    for name in MINE:
        step = steps()[name]
        assert step.__doc__ and step.produces in formats() and all(c in formats() for c in step.consumes), name
        assert all(info.description for info in step.Options.model_fields.values()), name
    assert {formats()[f].filename for f in ("triton", "triton-fp16", "triton-int8", "triton-torchscript")} == \
        {"model_repository"}
    assert formats()["torchserve"].filename == "model.mar"
    code = ("import sys; import buildsys.formats.serving.triton, buildsys.formats.serving.torchserve, buildsys.formats.serving.triton_layout, "
            "buildsys.formats.serving.torchserve_archive; "
            "print(sorted(m for m in ('torch', 'onnx', 'onnxruntime', 'numpy', 'model_archiver') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


# --- config.pbtxt ---------------------------------------------------------------------------------


def test_pbtxt_writes_and_parses_back_the_subset() -> None:
    config = {"name": 'we"ird\\name', "platform": "onnxruntime_onnx", "max_batch_size": 4,
              "input": [{"name": "x", "data_type": "TYPE_FP16", "dims": [-1, 3]},
                        {"name": "s", "data_type": "TYPE_INT64", "dims": [1], "reshape": {"shape": []}}],
              "output": [{"name": "y", "data_type": "TYPE_FP32", "dims": [2]}],
              "instance_group": [{"count": 2, "kind": "KIND_GPU"}],
              "dynamic_batching": {"preferred_batch_size": [2, 4], "max_queue_delay_microseconds": 100}}
    text = write_pbtxt(config, ["a comment"])
    assert text.startswith("# a comment\n") and "data_type: TYPE_FP16" in text and "dims: [ -1, 3 ]" in text
    # Read back with Triton's ModelConfig schema: an empty repeated field (reshape's shape) is not set.
    scalar = {"name": "s", "data_type": "TYPE_INT64", "dims": [1], "reshape": {}}
    assert parse_config(text, "m/config.pbtxt") == {**config, "input": [config["input"][0], scalar]}
    assert parse_config(write_pbtxt({"name": "m", "dynamic_batching": {}}), "m/config.pbtxt") == \
        {"name": "m", "dynamic_batching": {}}


def test_config_reader_reads_what_triton_users_write() -> None:
    text = textwrap.dedent("""\
        # hand-written, in the other spellings protobuf text format allows
        name: 'm' platform: "onnx" "runtime_onnx"
        max_batch_size: 0
        input { name: "a" data_type: TYPE_FP32 dims: 3 dims: -1 }   # repeated scalars one by one
        input < name: "b", data_type: TYPE_BOOL, dims: [ 1 ] >
        output [ { name: "c"; data_type: TYPE_INT8 dims: [2] } ]
        instance_group { kind: KIND_CPU }
        parameters { key: "k" value: { string_value: "t\\x41\\101" } }
        """)
    assert parse_config(text, "m/config.pbtxt") == {  # max_batch_size: 0 is protobuf's default: not set
        "name": "m", "platform": "onnxruntime_onnx",
        "input": [{"name": "a", "data_type": "TYPE_FP32", "dims": [3, -1]},
                  {"name": "b", "data_type": "TYPE_BOOL", "dims": [1]}],
        "output": [{"name": "c", "data_type": "TYPE_INT8", "dims": [2]}],
        "instance_group": [{"kind": "KIND_CPU"}],
        "parameters": {"k": {"string_value": "tAA"}}}
    for bad, where in (("name: \"m\" input { name: \"x\"", r'1:25 : Expected "}"'),
                       ("max_batch_size 8", r'1:16 : .*Expected ":"'),
                       ("name: @", "1:7 : .*Expected string but found: '@'")):
        with pytest.raises(StepError, match=r"^m/config\.pbtxt is not a valid Triton ModelConfig: " + where):
            parse_config(bad, "m/config.pbtxt")


# --- Triton: ONNX Runtime backend -----------------------------------------------------------------


def test_triton_onnx_dynamic_batch_layout_config_and_session(cnn: Tiny, cnn_onnx: Path, tmp_path: Path) -> None:
    metrics = cnn.run("triton-from-onnx", tmp_path, input_path=cnn_onnx)
    repo = tmp_path / "model_repository"
    assert sorted(p.relative_to(repo).as_posix() for p in repo.rglob("*") if p.is_file()) == \
        ["cnn/1/model.onnx", "cnn/config.pbtxt"]
    assert (repo / "cnn/1/model.onnx").read_bytes() == cnn_onnx.read_bytes()
    assert config_of(tmp_path, "cnn") == {
        "name": "cnn", "platform": "onnxruntime_onnx", "max_batch_size": 8,
        "input": [{"name": "image", "data_type": "TYPE_FP32", "dims": [1, 8, 8]}],
        "output": [{"name": "logits", "data_type": "TYPE_FP32", "dims": [10]}],
        "instance_group": [{"count": 1}], "dynamic_batching": {}}  # KIND_AUTO is the default: not set
    assert metrics["max_batch_size"] == 8 and metrics["dynamic_batching"] is True
    session = get_runtime("triton-layout").load(repo, cnn.model, cnn.root)
    assert session.max_batch == 8  # Triton would refuse a larger batch
    feeds = validation_feeds(cnn)
    plain = get_runtime("onnxruntime").load(cnn_onnx, cnn.model, cnn.root)
    np.testing.assert_array_equal(run_session(session, feeds)[0], run_session(plain, feeds)[0])
    np.testing.assert_allclose(run_session(session, feeds)[0], torch_outputs(cnn, feeds)[0], rtol=1e-4, atol=1e-5)


def test_triton_options_name_version_instances_and_batching(cnn: Tiny, cnn_onnx: Path, tmp_path: Path) -> None:
    cnn.run("triton-from-onnx", tmp_path, input_path=cnn_onnx, model_name="digits-cnn", version=3, max_batch_size=32,
            instance_count=2, instance_kind="KIND_CPU", preferred_batch_size=[8, 16], max_queue_delay_microseconds=250)
    assert (tmp_path / "model_repository/digits-cnn/3/model.onnx").is_file()
    config = config_of(tmp_path, "digits-cnn")
    assert config["name"] == "digits-cnn" and config["max_batch_size"] == 32
    assert config["instance_group"] == [{"count": 2, "kind": "KIND_CPU"}]
    assert config["dynamic_batching"] == {"preferred_batch_size": [8, 16], "max_queue_delay_microseconds": 250}
    off = tmp_path / "off"
    cnn.run("triton-from-onnx", off, input_path=cnn_onnx, dynamic_batching=False)
    assert "dynamic_batching" not in config_of(off, "cnn") and config_of(off, "cnn")["max_batch_size"] == 8


def test_triton_onnx_fixed_batch_keeps_the_batch_axis_in_dims(tmp_path: Path) -> None:
    mlp = make_model(tmp_path / "p", "mlp")
    mlp.run("onnx-from-pytorch", tmp_path / "onnx", dynamic_axes=False)  # fixed [1, 4]
    mlp.run("triton-from-onnx", tmp_path / "t", input_path=tmp_path / "onnx/model.onnx")
    config = config_of(tmp_path / "t", "mlp")
    assert config.get("max_batch_size", 0) == 0 and "dynamic_batching" not in config
    assert config["input"] == [{"name": "x", "data_type": "TYPE_FP32", "dims": [1, 4]}]
    assert config["output"] == [{"name": "y", "data_type": "TYPE_FP32", "dims": [1, 3]}]
    session = get_runtime("triton-layout").load(tmp_path / "t/model_repository", mlp.model, mlp.root)
    feeds = validation_feeds(mlp)
    np.testing.assert_allclose(run_session(session, feeds)[0], torch_outputs(mlp, feeds)[0], rtol=1e-4, atol=1e-5)
    with pytest.raises(StepError, match=r"^model 'mlp': max_batch_size: 8 needs a dynamic first \(batch\) axis .*"
                                        r"'x' has the fixed shape \[1, 4\]; set max_batch_size: 0 or export with "
                                        r"dynamic_axes: true \(step triton-from-onnx\)$"):
        mlp.run("triton-from-onnx", tmp_path / "bad", input_path=tmp_path / "onnx/model.onnx", max_batch_size=8)


def test_fixed_batch_signature_and_bad_options_are_plan_time_errors(tmp_path: Path) -> None:
    mlp = make_model(tmp_path / "p", "mlp", validation=False, calibration=False)
    fixed = mlp.with_model(inputs=[{"name": "x", "shape": [1, 4]}])
    step = get_step("triton-from-onnx")
    problem = step.check_config(fixed.model, step.Options(max_batch_size=8), fixed.root)
    assert problem and problem.startswith("max_batch_size: 8 needs a dynamic batch axis shared by every input, but "
                                          "input 'x' has the fixed first axis 1") and "set max_batch_size: 0" in problem
    assert step.check_config(fixed.model, step.Options(), fixed.root) is None  # the default resolves to 0
    assert "dynamic_batching: true needs" in step.check_config(fixed.model, step.Options(dynamic_batching=True),
                                                               fixed.root)
    assert "preferred_batch_size 16 exceeds max_batch_size 8 (the default" in \
        step.check_config(mlp.model, step.Options(preferred_batch_size=[16]), mlp.root)
    for options, message in (({"preferred_batch_size": [16], "max_batch_size": 8}, "exceeds max_batch_size 8"),
                             ({"dynamic_batching": False, "preferred_batch_size": [2]}, "dynamic_batching is false"),
                             ({"dynamic_batching": True, "max_batch_size": 0}, "needs max_batch_size > 0"),
                             ({"model_name": "a/b"}, "should match pattern"), ({"version": 0}, "greater than or equal"),
                             ({"instance_kind": "GPU"}, "KIND_AUTO")):
        with pytest.raises(ValidationError, match=message):
            step.Options(**options)


def test_two_file_onnx_carries_its_side_file(cnn: Tiny, tmp_path: Path) -> None:
    cnn.run("onnx-from-pytorch", tmp_path / "onnx", dynamo=True, external_data=True)
    assert (tmp_path / "onnx/model.onnx.data").is_file()
    cnn.run("triton-from-onnx", tmp_path / "t", input_path=tmp_path / "onnx/model.onnx")
    version = tmp_path / "t/model_repository/cnn/1"
    assert sorted(p.name for p in version.iterdir()) == ["model.onnx", "model.onnx.data"]
    assert (version / "model.onnx.data").read_bytes() == (tmp_path / "onnx/model.onnx.data").read_bytes()
    runtime = get_runtime("triton-layout")
    assert runtime.inspect(tmp_path / "t/model_repository", cnn.model, "triton")["problems"] == []
    feeds = validation_feeds(cnn)
    session = runtime.load(tmp_path / "t/model_repository", cnn.model, cnn.root)
    np.testing.assert_allclose(run_session(session, feeds)[0], torch_outputs(cnn, feeds)[0], rtol=1e-4, atol=1e-5)
    (version / "model.onnx.data").unlink()
    assert runtime.inspect(tmp_path / "t/model_repository", cnn.model, "triton")["problems"] == \
        ["1/model.onnx.data (external data of model.onnx) is missing"]


@pytest.mark.parametrize("keep_io_types, io_type", [(True, "TYPE_FP32"), (False, "TYPE_FP16")])
def test_fp16_io_types_are_read_from_the_file(cnn: Tiny, cnn_onnx: Path, tmp_path: Path, keep_io_types: bool,
                                              io_type: str) -> None:
    cnn.run("onnx-fp16-from-onnx", tmp_path / "fp16", input_path=cnn_onnx, keep_io_types=keep_io_types)
    cnn.run("triton-fp16-from-onnx-fp16", tmp_path / "t", input_path=tmp_path / "fp16/model.onnx")
    config = config_of(tmp_path / "t", "cnn")
    assert config["input"][0]["data_type"] == io_type and config["output"][0]["data_type"] == io_type
    assert check(cnn, tmp_path, "triton-fp16", tmp_path / "t/model_repository", "fp16")["passed"] is True


def test_int8_layout_passes_its_check(cnn: Tiny, cnn_onnx: Path, tmp_path: Path) -> None:
    cnn.run("onnx-int8-from-onnx", tmp_path / "int8", input_path=cnn_onnx)
    cnn.run("triton-int8-from-onnx-int8", tmp_path / "t", input_path=tmp_path / "int8/model.onnx")
    report = check(cnn, tmp_path, "triton-int8", tmp_path / "t/model_repository", "int8")
    assert report["passed"] is True and report["runtime"] == "triton-layout"


def test_check_runs_the_model_inside_the_repository(cnn: Tiny, cnn_onnx: Path, tmp_path: Path) -> None:
    cnn.run("triton-from-onnx", tmp_path / "t", input_path=cnn_onnx)
    report = check(cnn, tmp_path, "triton", tmp_path / "t/model_repository")
    assert report["passed"] is True and report["runtime"] == "triton-layout"
    written = json.loads((tmp_path / "check/report.json").read_text())
    assert written["structure"]["facts"]["files"] == ["1/model.onnx", "config.pbtxt"]
    mismatch = get_runtime("triton-layout").inspect(tmp_path / "t/model_repository", cnn.model, "triton-torchscript")
    assert mismatch["problems"] == ["format triton-torchscript is served by Triton's pytorch backend, but "
                                    "config.pbtxt selects onnxruntime"]
    (tmp_path / "t/model_repository/cnn/1/model.onnx").unlink()
    with pytest.raises(StepError, match=r"cnn/ has no version directory \(<name>/<number>/\) holding model\.onnx"):
        check(cnn, tmp_path / "again", "triton", tmp_path / "t/model_repository")


def test_session_holds_requests_and_replies_to_the_config(cnn: Tiny, cnn_onnx: Path, tmp_path: Path) -> None:
    cnn.run("triton-from-onnx", tmp_path, input_path=cnn_onnx)
    path = tmp_path / "model_repository/cnn/config.pbtxt"
    text = path.read_text()
    runtime = get_runtime("triton-layout")
    feeds = validation_feeds(cnn)
    path.write_text(text.replace("dims: [ 10 ]", "dims: [ 12 ]"))
    with pytest.raises(StepError, match=r"model output 'logits' has shape \[8, 10\], but config\.pbtxt declares dims "
                                        r"\[12\] after the batch axis"):
        run_session(runtime.load(tmp_path / "model_repository", cnn.model, cnn.root), feeds)
    path.write_text(text.replace("TYPE_FP32", "TYPE_FP16", 1))
    with pytest.raises(StepError, match="declares input 'image' as TYPE_FP16, but the model takes float32"):
        runtime.load(tmp_path / "model_repository", cnn.model, cnn.root)
    path.write_text(text.replace('name: "cnn"', 'name: "other"'))
    with pytest.raises(StepError, match="names the model 'other', but Triton needs the name of its directory, 'cnn'"):
        runtime.load(tmp_path / "model_repository", cnn.model, cnn.root)


# --- Triton: libtorch backend ---------------------------------------------------------------------


def test_triton_torchscript_positional_names_types_dims_and_outputs(two: Tiny, two_ts: Path, tmp_path: Path) -> None:
    metrics = two.run("triton-torchscript-from-torchscript", tmp_path, input_path=two_ts)
    assert metrics["backend"] == "pytorch"
    text = (tmp_path / "model_repository/two/config.pbtxt").read_text()
    assert "# INPUT__0 = x\n# OUTPUT__0 = scores\n# OUTPUT__1 = box\n" in text
    assert parse_config(text, "two/config.pbtxt") == {
        "name": "two", "backend": "pytorch", "max_batch_size": 8,
        "input": [{"name": "INPUT__0", "data_type": "TYPE_FP32", "dims": [4]}],
        "output": [{"name": "OUTPUT__0", "data_type": "TYPE_FP32", "dims": [3]},
                   {"name": "OUTPUT__1", "data_type": "TYPE_FP32", "dims": [2]}],
        "instance_group": [{"count": 1}], "dynamic_batching": {}}
    assert (tmp_path / "model_repository/two/1/model.pt").read_bytes() == two_ts.read_bytes()
    feeds = validation_feeds(two)
    session = get_runtime("triton-layout").load(tmp_path / "model_repository", two.model, two.root)
    for got, want in zip(run_session(session, feeds), torch_outputs(two, feeds)):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_triton_torchscript_fixed_batch_and_dynamic_inner_axes(tmp_path: Path) -> None:
    cnn = make_model(tmp_path / "p", "cnn")
    fixed = cnn.with_model(inputs=[{"name": "image", "shape": [2, 1, 8, 8]}])
    fixed.run("torchscript-from-pytorch", tmp_path / "ts")
    fixed.run("triton-torchscript-from-torchscript", tmp_path / "t", input_path=tmp_path / "ts/model.pt")
    config = config_of(tmp_path / "t", "cnn")
    assert config.get("max_batch_size", 0) == 0
    assert config["input"][0]["dims"] == [2, 1, 8, 8] and config["output"][0]["dims"] == [2, 10]
    with pytest.raises(StepError, match=r"max_batch_size: 4 needs a dynamic first \(batch\) axis"):
        fixed.run("triton-torchscript-from-torchscript", tmp_path / "bad", input_path=tmp_path / "ts/model.pt",
                  max_batch_size=4)  # what check_config refuses at plan time, refused here too
    # Only the batch size is varied when observing outputs: with other dynamic input axes, every
    # non-batch output axis is declared variable (-1) rather than guessed from one run.
    spatial = cnn.with_model(inputs=[{"name": "image", "shape": ["batch", 1, "h", "w"]}])
    spatial.run("torchscript-from-pytorch", tmp_path / "sts")
    spatial.run("triton-torchscript-from-torchscript", tmp_path / "st", input_path=tmp_path / "sts/model.pt")
    config = config_of(tmp_path / "st", "cnn")
    assert config["max_batch_size"] == 8
    assert config["input"][0]["dims"] == [1, -1, -1] and config["output"][0]["dims"] == [-1]


# --- TorchServe -----------------------------------------------------------------------------------


@needs_archiver
def test_mar_holds_the_torchscript_manifest_handler_and_signature(cnn: Tiny, cnn_ts: Path, cnn_mar: Path) -> None:
    with zipfile.ZipFile(cnn_mar) as archive:
        assert sorted(archive.namelist()) == ["MAR-INF/MANIFEST.json", "handler.py", "model.pt", "signature.json"]
        manifest = json.loads(archive.read("MAR-INF/MANIFEST.json"))
        assert archive.read("model.pt") == cnn_ts.read_bytes()
        assert json.loads(archive.read("signature.json")) == {
            "inputs": [{"name": "image", "shape": ["batch", 1, 8, 8], "dtype": "float32"}],
            "outputs": [{"name": "logits"}], "dynamic_batch": True}
    assert manifest["model"] == {"modelName": "cnn", "serializedFile": "model.pt", "handler": "handler.py",
                                 "modelVersion": "1.0"}
    assert manifest["runtime"] == "python"


@needs_archiver
def test_archived_torchscript_runs_and_matches_torch(cnn: Tiny, cnn_mar: Path, tmp_path: Path) -> None:
    import torch

    feeds = validation_feeds(cnn)
    session = get_runtime("torchserve-archive").load(cnn_mar, cnn.model, cnn.root)
    np.testing.assert_allclose(run_session(session, feeds)[0], torch_outputs(cnn, feeds)[0], rtol=1e-5, atol=1e-6)
    with zipfile.ZipFile(cnn_mar) as archive:
        archive.extract("model.pt", tmp_path)
    module = torch.jit.load(str(tmp_path / "model.pt"))
    with torch.no_grad():
        direct = module(torch.from_numpy(feeds["image"])).numpy()
    np.testing.assert_allclose(direct, torch_outputs(cnn, feeds)[0], rtol=1e-5, atol=1e-6)
    assert check(cnn, tmp_path, "torchserve", cnn_mar)["passed"] is True
    facts = json.loads((tmp_path / "check/report.json").read_text())["structure"]["facts"]
    assert facts["model_name"] == "cnn" and facts["serialized_file"] == "model.pt"


@needs_archiver
def test_archive_is_reproducible(cnn: Tiny, cnn_ts: Path, cnn_mar: Path, tmp_path: Path) -> None:
    cnn.run("torchserve-from-torchscript", tmp_path, input_path=cnn_ts)
    assert (tmp_path / "model.mar").read_bytes() == cnn_mar.read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.mar"]  # no scratch left behind


def _handler(mar: Path, tmp_path: Path) -> tuple[Any, Any]:
    """The archive's handler module, loaded as TorchServe loads it, and a TorchServe-like context."""
    model_dir = tmp_path / "served"
    with zipfile.ZipFile(mar) as archive:
        archive.extractall(model_dir)
        manifest = json.loads(archive.read("MAR-INF/MANIFEST.json"))
    spec = importlib.util.spec_from_file_location(f"served_handler_{id(tmp_path)}", model_dir / "handler.py")
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    context = SimpleNamespace(system_properties={"model_dir": str(model_dir), "gpu_id": None}, manifest=manifest)
    return module, context


@needs_archiver
def test_generated_handler_serves_json_and_numpy(cnn: Tiny, cnn_mar: Path, tmp_path: Path) -> None:
    import io

    handler, context = _handler(cnn_mar, tmp_path)
    assert handler.handle(None, context) is None  # TorchServe's initialize call
    images = validation_feeds(cnn)["image"][:5]
    want = torch_outputs(cnn, {"image": images})[0]
    npy = io.BytesIO()
    np.save(npy, images[3:5])
    requests = [
        {"body": json.dumps({"image": images[:2].tolist()}).encode()},  # raw JSON bytes, keyed by input name
        {"body": images[2].tolist()},                                   # decoded JSON, one sample, bare list
        {"data": bytearray(npy.getvalue())},                            # an .npy upload
    ]
    replies = handler.handle(requests, context)  # three requests merged into one batch of five
    assert [sorted(r) for r in replies] == [["logits"]] * 3
    np.testing.assert_allclose(np.array(replies[0]["logits"]), want[:2], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.array(replies[1]["logits"]), want[2], rtol=1e-5, atol=1e-6)  # no batch axis back
    np.testing.assert_allclose(np.array(replies[2]["logits"]), want[3:5], rtol=1e-5, atol=1e-6)
    json.dumps(replies)  # TorchServe sends them as JSON
    with pytest.raises(ValueError, match=r"input 'image' has shape \[1, 1, 8, 9\]; "
                                         r"the model takes \['batch', 1, 8, 8\]"):
        handler.handle([{"body": np.zeros((1, 1, 8, 9)).tolist()}], context)


@needs_archiver
def test_generated_handler_two_outputs_by_name(two: Tiny, two_ts: Path, tmp_path: Path) -> None:
    two.run("torchserve-from-torchscript", tmp_path / "mar", input_path=two_ts, model_name="heads", version="2.0")
    handler, context = _handler(tmp_path / "mar/model.mar", tmp_path)
    assert context.manifest["model"]["modelName"] == "heads" and context.manifest["model"]["modelVersion"] == "2.0"
    x = validation_feeds(two)["x"][:3]
    reply = handler.handle([{"body": {"x": x.tolist()}}], context)[0]
    scores, box = torch_outputs(two, {"x": x})
    np.testing.assert_allclose(np.array(reply["scores"]), scores, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.array(reply["box"]), box, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match=r"missing input\(s\) \['x'\]"):
        handler.handle([{"body": {"y": x.tolist()}}], context)


@needs_archiver
def test_builtin_handler_custom_handler_and_extra_files(cnn: Tiny, cnn_ts: Path, tmp_path: Path) -> None:
    (cnn.root / "labels.json").write_text('{"0": "zero"}')
    (cnn.root / "my_handler.py").write_text("def handle(data, context):\n    return data\n")
    cnn.run("torchserve-from-torchscript", tmp_path / "a", input_path=cnn_ts, handler="image_classifier",
            extra_files=["labels.json"])
    with zipfile.ZipFile(tmp_path / "a/model.mar") as archive:
        assert sorted(archive.namelist()) == ["MAR-INF/MANIFEST.json", "labels.json", "model.pt"]
        assert json.loads(archive.read("MAR-INF/MANIFEST.json"))["model"]["handler"] == "image_classifier"
    cnn.run("torchserve-from-torchscript", tmp_path / "b", input_path=cnn_ts, handler="my_handler.py")
    with zipfile.ZipFile(tmp_path / "b/model.mar") as archive:
        assert sorted(archive.namelist()) == ["MAR-INF/MANIFEST.json", "model.pt", "my_handler.py"]


@needs_archiver
def test_torchserve_bad_options_are_named(cnn: Tiny, cnn_ts: Path, tmp_path: Path) -> None:
    step = get_step("torchserve-from-torchscript")

    def problem(**options: Any) -> str | None:
        return step.check_config(cnn.model, step.Options(**options), cnn.root)

    assert problem() is None
    assert problem(handler="nope.py") == "handler file 'nope.py' does not exist (paths are relative to the deploy file)"
    assert problem(handler="resnet") .startswith("handler 'resnet' is neither a built-in TorchServe handler")
    assert problem(extra_files=["missing.txt"]) == \
        "extra file 'missing.txt' does not exist (paths are relative to the deploy file)"
    (cnn.root / "handler.py").write_text("")
    assert problem(extra_files=["handler.py"]) == \
        "extra_files would overwrite 'handler.py', which modelbuild puts in the archive"
    with pytest.raises(ValidationError, match="separates extra files with commas"):
        step.Options(extra_files=["a,b"])
    with pytest.raises(StepError, match=r"^model 'cnn': handler file 'nope\.py' does not exist .*"
                                        r"\(step torchserve-from-torchscript\)$"):
        cnn.run("torchserve-from-torchscript", tmp_path, input_path=cnn_ts, handler="nope.py")


def test_torchserve_runtime_names_a_broken_archive(cnn: Tiny, tmp_path: Path) -> None:
    bad = tmp_path / "model.mar"
    with zipfile.ZipFile(bad, "w") as archive:
        archive.writestr("MAR-INF/MANIFEST.json", json.dumps({"model": {"modelName": "m", "serializedFile": "x.pt"}}))
    runtime = get_runtime("torchserve-archive")
    with pytest.raises(StepError, match="names the serialized file 'x.pt', which the archive does not hold"):
        runtime.load(bad, cnn.model, cnn.root)
    assert runtime.inspect(bad, cnn.model, "torchserve")["problems"] == [
        "MAR-INF/MANIFEST.json in 'model.mar' names the serialized file 'x.pt', which the archive does not hold"]
    bad.write_bytes(b"not a zip")
    with pytest.raises(StepError, match="is not a readable .mar"):
        runtime.load(bad, cnn.model, cnn.root)


# --- planning ------------------------------------------------------------------------------------

SERVING = """\
models:
  tiny:
    source: {factory: "tinynet:build", weights: tiny.pt}
    inputs: [{name: x, shape: [batch, 4]}]
    outputs: [{name: y, kind: scores}]
    data: {calibration: calib.npz, validation: val.npz}
targets:
  triton: {model: tiny, format: triton, options: {triton: {max_batch_size: 16}}}
  triton-opt: {model: tiny, format: triton, via: [onnx-optimized]}
  triton-int8: {model: tiny, format: triton, precision: int8}
  triton-fp16: {model: tiny, format: triton, precision: fp16}
  triton-libtorch: {model: tiny, format: triton-torchscript}
  torchserve: {model: tiny, format: torchserve, options: {torchserve: {version: "2.0"}}}
"""


def test_serving_routes(tmp_path: Path) -> None:
    project = make_tiny_project(tmp_path / "proj", SERVING)
    routes = {t: r.words() for t, r in expand(load(project.config)).routes.items()}
    assert routes == {
        "triton": ["pytorch", "onnx", "triton"],
        "triton-opt": ["pytorch", "onnx", "onnx-optimized", "triton"],
        "triton-int8": ["pytorch", "onnx", "onnx-int8", "triton-int8"],
        "triton-fp16": ["pytorch", "onnx", "onnx-fp16", "triton-fp16"],
        "triton-libtorch": ["pytorch", "torchscript", "triton-torchscript"],
        "torchserve": ["pytorch", "torchscript", "torchserve"]}


@pytest.mark.parametrize("target, error, message", [
    ("bad: {model: tiny, format: triton, via: [onnx-int8]}", PlanError,
     r"no route from onnx-int8 to triton \(from onnx-int8 modelbuild can make: [^)]*triton-int8"),
    ("bad: {model: tiny, format: triton, options: {triton: {max_batch_size: 4}}}", ConfigError,
     r"deploy\.yaml:\d+: targets\.bad \(triton\): max_batch_size: 4 needs a dynamic batch axis shared by every input, "
     r"but input 'x' has the fixed first axis 1"),
])
def test_serving_plan_errors(tmp_path: Path, target: str, error: type, message: str) -> None:
    text = SERVING.split("targets:")[0] + "targets:\n  " + target + "\n"
    if "max_batch_size" in target:
        text = text.replace("[batch, 4]", "[1, 4]")
    project = make_tiny_project(tmp_path / "proj", text)
    with pytest.raises(error, match=message):
        expand(load(project.config), ["bad"])


@needs_archiver
def test_build_serving_targets_end_to_end(tmp_path: Path) -> None:
    project = make_tiny_project(tmp_path / "proj", SERVING)
    out = project.run("build", "triton", "triton-libtorch", "torchserve").stdout
    assert out.count("passed") == 3, out
    artifacts = project.root / "artifacts"
    assert (artifacts / "triton/model_repository/tiny/1/model.onnx").is_file()
    assert config_of(artifacts / "triton", "tiny")["max_batch_size"] == 16
    assert (artifacts / "triton-libtorch/model_repository/tiny/1/model.pt").is_file()
    assert (artifacts / "torchserve/model.mar").is_file()
    assert "Nothing to do" in project.run("build", "triton", "triton-libtorch", "torchserve").stdout
