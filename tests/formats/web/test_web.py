"""The web formats: ONNX models packaged for ONNX Runtime Web and checked in real headless Chromium.

Browser tests skip only when this host lacks Chromium, onnxruntime-web (python -m
buildsys.formats.web.install) or playwright; CI installs all three.
"""

from __future__ import annotations

import json
import shutil
import textwrap
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from buildsys.config.schema import Model
from buildsys.errors import StepError
from buildsys.formats import get_format, get_runtime, get_step
from buildsys.formats.web import artifact
from buildsys.formats.web.web import web_problems
from buildsys.storage.lock import Lock
from tests.conftest import make_tiny_project
from tests.helpers.models import Tiny
from tests.formats.onnx.test_steps_onnx import check

RUNTIME = "ort-web-chromium"
WHY = get_runtime(RUNTIME).unavailable()
browser = pytest.mark.skipif(WHY is not None, reason=f"ort-web-chromium cannot run here: {WHY}")

STEPS = {"fp32": ("web-from-onnx", "web", None),
         "fp16": ("web-fp16-from-onnx-fp16", "web-fp16", "onnx-fp16-from-onnx"),
         "int8": ("web-int8-from-onnx-int8", "web-int8", "onnx-int8-from-onnx")}


def web_artifact(tiny: Tiny, onnx_path: Path, out: Path, precision: str, **options: object) -> Path:
    """The ONNX model of `precision` made from `onnx_path`, then packaged by that precision's web step."""
    step, _, upstream = STEPS[precision]
    if upstream:
        tiny.run(upstream, out / "onnx", input_path=onnx_path, **options)
        onnx_path = out / "onnx/model.onnx"
    tiny.run(step, out / "web", input_path=onnx_path)
    return out / "web" / artifact.MODEL_FILE


def handmade(folder: Path, inputs: dict[str, int], op: str = "Add", domain: str = "", ir: int = 10) -> Path:
    """A web artifact around a one-node graph: each output is `op(x, x)` of the same-named input."""
    folder.mkdir(parents=True)
    nodes = [helper.make_node(op, [name, name], [f"{name}_out"], domain=domain) for name in inputs]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info(n, t, ["batch", 4]) for n, t in inputs.items()],
                              [helper.make_tensor_value_info(f"{n}_out", t, ["batch", 4]) for n, t in inputs.items()])
    imports = [helper.make_opsetid("", 18)] + ([helper.make_opsetid(domain, 1)] if domain else [])
    proto = helper.make_model(graph, opset_imports=imports)
    proto.ir_version = ir
    onnx.save(proto, folder / artifact.MODEL_FILE)
    (folder / artifact.LOADER_FILE).write_bytes(artifact.loader())
    sig = {"inputs": [{"name": n, "type": artifact.TENSOR_TYPES.get(t, "?"), "shape": ["batch", 4]} for n, t in inputs.items()],
           "outputs": [{"name": f"{n}_out", "type": artifact.TENSOR_TYPES.get(t, "?"), "shape": ["batch", 4]}
                       for n, t in inputs.items()]}
    (folder / artifact.SIGNATURE_FILE).write_text(json.dumps(sig))
    return folder / artifact.MODEL_FILE


def handmade_model(inputs: dict[str, int]) -> Model:
    return Model.model_validate({"source": {"onnx": "given.onnx"}, "inputs": [{"name": n, "shape": ["batch", 4]} for n in inputs],
                                 "outputs": [{"name": f"{n}_out"} for n in inputs]})


# --- formats and the step -------------------------------------------------------------------------


def test_one_family_three_precisions() -> None:
    for precision, (step, fmt, _) in STEPS.items():
        info = get_format(fmt)
        assert (info.family, info.precision, info.runtime, info.filename) == ("web", precision, RUNTIME, "model.onnx")
        cls = get_step(step)
        assert cls.produces == fmt and cls.precision == precision and artifact.LOADER_SOURCE in cls.shipped_files
    assert get_step("web-fp16-from-onnx-fp16").consumes == ("onnx-fp16",)
    assert get_step("web-int8-from-onnx-int8").consumes == ("onnx-int8",)
    assert {get_step(s)._run for s, _, _ in STEPS.values()} == {get_step("web-from-onnx")._run}  # one body


def test_artifact_is_model_loader_and_signature(cnn: Tiny, cnn_onnx: Path, tmp_path: Path) -> None:
    model = web_artifact(cnn, cnn_onnx, tmp_path, "fp32")
    folder = model.parent
    assert sorted(p.name for p in folder.iterdir()) == ["model.js", "model.onnx", "signature.json"]
    assert (folder / "model.js").read_bytes() == artifact.loader()  # the same bytes in every artifact
    assert model.read_bytes() == cnn_onnx.read_bytes()  # nothing to repair: the bytes are the export's
    assert artifact.read_signature(folder) == {
        "inputs": [{"name": "image", "type": "float32", "shape": ["batch", 1, 8, 8]}],
        "outputs": [{"name": "logits", "type": "float32", "shape": ["batch", 10]}]}
    again = web_artifact(cnn, cnn_onnx, tmp_path / "again", "fp32")
    assert all((again.parent / n).read_bytes() == (folder / n).read_bytes() for n in ("model.onnx", "signature.json"))


def test_external_data_is_embedded(cnn: Tiny, tmp_path: Path) -> None:
    cnn.run("onnx-from-pytorch", tmp_path / "onnx", dynamo=True, external_data=True)
    assert (tmp_path / "onnx/model.onnx.data").is_file()
    metrics = cnn.run("web-from-onnx", tmp_path / "web", input_path=tmp_path / "onnx/model.onnx")
    assert metrics["embedded_external_data"] is True and metrics["external_data"] is False
    assert not (tmp_path / "web/model.onnx.data").exists()


def test_fp16_without_float32_io_declares_float16(cnn: Tiny, cnn_onnx: Path, tmp_path: Path) -> None:
    model = web_artifact(cnn, cnn_onnx, tmp_path, "fp16", keep_io_types=False)
    sig = artifact.read_signature(model.parent)
    assert sig["inputs"][0]["type"] == "float16" and sig["outputs"][0]["type"] == "float16"


def test_what_the_wasm_backend_cannot_run_is_refused(tmp_path: Path) -> None:
    ok = onnx.load(handmade(tmp_path / "ok", {"a": TensorProto.INT64, "b": TensorProto.FLOAT16}))
    assert web_problems(ok) == []
    strings = onnx.load(handmade(tmp_path / "str", {"s": TensorProto.STRING}, op="Identity"))
    assert any("input 's' is STRING" in p for p in web_problems(strings))
    custom = onnx.load(handmade(tmp_path / "custom", {"x": TensorProto.FLOAT}, op="Fancy", domain="com.example"))
    assert any("com.example::Fancy" in p for p in web_problems(custom))
    newer = onnx.load(handmade(tmp_path / "ir", {"x": TensorProto.FLOAT}, ir=artifact.MAX_IR_VERSION + 1))
    assert any(f"IR version {artifact.MAX_IR_VERSION + 1}" in p for p in web_problems(newer))
    tiny = Tiny(tmp_path, "given", handmade_model({"x": 1}), "given")
    with pytest.raises(StepError, match=r"model 'given': ONNX Runtime Web cannot run this model: operators of custom "
                                        r"domains \(com.example::Fancy\).*\(step web-from-onnx\)"):
        tiny.run("web-from-onnx", tmp_path / "out", input_path=tmp_path / "custom/model.onnx")


# --- the runtime ----------------------------------------------------------------------------------


def test_not_run_without_chromium(cnn: Tiny, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("MODELBUILD_CHROMIUM", str(tmp_path / "no-such-chromium"))
    assert get_runtime(RUNTIME).unavailable() == ("no Chromium (MODELBUILD_CHROMIUM does not name an executable; "
                                                  "install chromium, e.g. apt-get install chromium)")
    folder = handmade(tmp_path / "web", {"x": TensorProto.FLOAT})
    np.savez(tmp_path / "ref.npz", **{"input:x": np.ones((2, 4), "float32"), "output:x_out": np.ones((2, 4), "float32")})
    given = Tiny(tmp_path, "given", handmade_model({"x": 1}), "given")
    result = check(given, tmp_path / "check", "web", folder, tmp_path / "ref.npz")
    assert result["passed"] is None and result["not_run"].startswith("no Chromium")


def test_not_run_without_onnxruntime_web(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("MODELBUILD_CHROMIUM", shutil.which("true") or "/bin/true")  # any executable will do here
    monkeypatch.setenv("MODELBUILD_WEB_NODE_MODULES", str(tmp_path / "node_modules"))
    assert get_runtime(RUNTIME).unavailable() == (f"onnxruntime-web is not installed in {tmp_path / 'node_modules'} "
                                                  "(run python -m buildsys.formats.web.install)")
    package = tmp_path / "node_modules/onnxruntime-web"
    package.mkdir(parents=True)
    (package / "package.json").write_text('{"version": "1.0.0"}')
    assert "onnxruntime-web 1.0.0 is installed but modelbuild checks with" in get_runtime(RUNTIME).unavailable()


@browser
@pytest.mark.slow
@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8"])
def test_check_passes_in_chromium(cnn: Tiny, cnn_onnx: Path, cnn_reference: Path, tmp_path: Path,
                                  precision: str) -> None:
    model = web_artifact(cnn, cnn_onnx, tmp_path, precision)
    fmt = STEPS[precision][1]
    result = check(cnn, tmp_path / "check", fmt, model, cnn_reference, precision)
    assert result["passed"] is True, result
    assert result["runtime"] == RUNTIME and result["samples"] == 48 and result["structure"]["problems"] == []
    observed = result["outputs"]["logits"]["max_abs"]["observed"]
    assert (observed < 1e-5) if precision == "fp32" else (0 < observed)  # fp16/int8 really are other numbers


@browser
@pytest.mark.slow
def test_perturbed_artifact_fails(cnn: Tiny, cnn_onnx: Path, cnn_reference: Path, tmp_path: Path) -> None:
    model = web_artifact(cnn, cnn_onnx, tmp_path, "fp32")
    proto = onnx.load(str(model))
    weight = max(proto.graph.initializer, key=lambda t: len(onnx.numpy_helper.to_array(t).ravel()))
    weight.CopyFrom(onnx.numpy_helper.from_array(onnx.numpy_helper.to_array(weight) * 1.05, weight.name))
    onnx.save(proto, str(model))
    result = check(cnn, tmp_path / "check", "web", model, cnn_reference)
    assert result["passed"] is False and any("max_rel" in f for f in result["failures"]), result


@browser
@pytest.mark.slow
def test_int64_float16_and_bool_cross_the_page_exactly(tmp_path: Path) -> None:
    types = {"a": TensorProto.INT64, "h": TensorProto.FLOAT16, "b": TensorProto.BOOL}
    model = handmade(tmp_path / "web", types, op="Add")
    proto = onnx.load(str(model))
    proto.graph.node[2].op_type = "Or"  # bool has no Add
    onnx.save(proto, str(model))
    feeds = {"a": np.array([[2**40 + 1, -3, 0, 7]] * 3, "int64"), "h": np.full((3, 4), 1.5, "float16"),
             "b": np.array([[True, False, True, False]] * 3)}
    with get_runtime(RUNTIME).load(model, handmade_model(types), tmp_path) as session:
        a, h, b = session.run(feeds)
        # model.js as its header documents it: bare typed arrays take the batch from their length...
        dims = session.page.evaluate("""async () => {
            const { predict } = await import("./model/model.js");
            const out = await predict(window.model, { a: new BigInt64Array(8), h: new Uint16Array(8), b: new Uint8Array(8) });
            return [out.a_out.dims, out.h_out.dims, out.b_out.dims]; }""")
        assert dims == [[2, 4]] * 3
        # ...and a wrongly typed input is named with what it must be.
        refused = session.page.evaluate("""async () => {
            const { predict } = await import("./model/model.js");
            try { await predict(window.model, { a: new Float32Array(8), h: new Uint16Array(8), b: new Uint8Array(8) }); }
            catch (e) { return e.message; } }""")
        assert refused == 'input "a" must be a BigInt64Array (int64), not Float32Array'
    assert a.dtype == np.int64 and (a == 2 * feeds["a"]).all()  # beyond 2**32: BigInt64Array end to end
    assert h.dtype == np.float16 and (h == 3.0).all()
    assert b.dtype == np.bool_ and (b == feeds["b"]).all()


@browser
@pytest.mark.slow
def test_loader_errors_reach_the_check(cnn: Tiny, cnn_onnx: Path, tmp_path: Path) -> None:
    model = web_artifact(cnn, cnn_onnx, tmp_path, "fp32")
    model.write_bytes(model.read_bytes()[:200])  # a truncated download
    with pytest.raises(StepError, match="onnxruntime-web could not load the model: .*") as info:
        get_runtime(RUNTIME).load(model, cnn.model, cnn.root)
    assert "/_work/" not in str(info.value)  # no C++ paths of ONNX Runtime's build machine


DEPLOY = """\
models:
  tiny:
    source: {factory: "tinynet:build", weights: tiny.pt, kwargs: {calls: CALLS}}
    inputs: [{name: x, shape: [batch, 4]}]
    outputs: [{name: y, kind: scores}]
    data: {calibration: calib.npz, validation: val.npz}
targets:
  browser:
    model: tiny
    format: web
  browser-int8:
    model: tiny
    format: web
    precision: int8
"""


@browser
@pytest.mark.slow
def test_modelbuild_build_end_to_end(tmp_path: Path) -> None:
    project = make_tiny_project(tmp_path / "proj", textwrap.dedent(DEPLOY))
    out = project.run("build").stdout
    assert "passed" in out
    for target in ("browser", "browser-int8"):
        folder = project.root / "artifacts" / target
        assert sorted(p.name for p in folder.iterdir()) == ["MODEL_CARD.md", "model.js", "model.onnx",
                                                             "model_card.json", "signature.json"]  # the card beside it
        entry = Lock.read(project.root / "deploy.lock").as_dict()["nodes"][f"verify:{target}"]
        assert entry["metrics"]["passed"] is True and entry["metrics"]["runtime"] == RUNTIME
    nodes = Lock.read(project.root / "deploy.lock").as_dict()["nodes"]
    assert {"tiny/web", "tiny/web-int8", "tiny/onnx-int8"} <= set(nodes)
