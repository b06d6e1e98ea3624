"""Mobile steps and runtimes in-process: SavedModel/TFLite (LiteRT), Core ML (structure), lite interpreter.

Tiny models are trained for a second on separable synthetic data, so int8 artifacts can be judged
the way users judge them (top-1 agreement with the float model) rather than on random logits.
"""

from __future__ import annotations

import contextlib
import io
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from buildsys.config.schema import Model
from buildsys.config.data import Batch
from buildsys.errors import StepError
from buildsys.formats import get_runtime
from buildsys.formats import StepContext, get_step
from tests.conftest import out_of_reach

torch = pytest.importorskip("torch")
nn = torch.nn


# --- tiny models ---------------------------------------------------------------------------------


class TinyCNN(nn.Module):
    """[N, 1, 8, 8] → 10 logits."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(1, 8, 3, padding=1)
        self.c2 = nn.Conv2d(8, 16, 3, stride=2, padding=1)
        self.fc = nn.Linear(16 * 4 * 4, 10)

    def forward(self, x: Any) -> Any:
        return self.fc(torch.relu(self.c2(torch.relu(self.c1(x)))).flatten(1))


class TinyConv1d(nn.Module):
    """[N, 4, 16] channels first (NCL) → 3 logits."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv1d(4, 32, 5, padding=2), nn.ReLU(), nn.MaxPool1d(2),
                                      nn.Conv1d(32, 32, 3, padding=1), nn.ReLU())
        self.fc = nn.Linear(32, 3)

    def forward(self, x: Any) -> Any:
        return self.fc(self.features(x).mean(2))


class TinyONet(nn.Module):
    """MTCNN ONet's shape at 24x24: PReLU, ceil-mode pooling, three heads (probabilities, box, landmarks)."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3), nn.PReLU(8), nn.MaxPool2d(3, 2, ceil_mode=True),
                                  nn.Conv2d(8, 16, 3), nn.PReLU(16), nn.MaxPool2d(2, 2, ceil_mode=True),
                                  nn.Conv2d(16, 32, 2), nn.PReLU(32), nn.Flatten(), nn.Linear(512, 64), nn.PReLU(64))
        self.cls, self.box, self.lmk = nn.Linear(64, 2), nn.Linear(64, 4), nn.Linear(64, 10)

    def forward(self, x: Any) -> Any:
        h = self.body(x)
        return torch.softmax(self.cls(h), 1), self.box(h), self.lmk(h)


class Determinant(nn.Module):
    """An op neither TFLite's builtins nor Core ML have: the determinant of 4x4 blocks."""

    def forward(self, x: Any) -> Any:
        return torch.linalg.det(x.reshape(-1, 4, 4)).reshape(-1, 1)


@dataclass
class Case:
    name: str
    model: Model
    net: Any
    onnx: Path  # model.onnx in its own folder, as the onnx step leaves it
    torchscript: Path
    val: np.ndarray
    ref: list[np.ndarray]  # eager PyTorch outputs on `val`


def _train(net: Any, shape: tuple[int, ...], classes: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Fit `net`'s first output to noisy class templates; return (calibration, validation, labels)."""
    rng = np.random.default_rng(seed)
    templates = rng.standard_normal((classes, *shape)).astype(np.float32)

    def draw(n: int) -> tuple[np.ndarray, np.ndarray]:
        labels = rng.integers(0, classes, n)
        return (templates[labels] + 0.7 * rng.standard_normal((n, *shape))).astype(np.float32), labels

    torch.manual_seed(seed)
    x, y = draw(512)
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    for step in range(60):
        idx = torch.from_numpy(rng.integers(0, len(x), 64))
        out = net(torch.from_numpy(x)[idx])
        logits = out[0] if isinstance(out, tuple) else out
        loss = nn.functional.cross_entropy(logits if not isinstance(out, tuple) else torch.log(logits + 1e-6),
                                           torch.from_numpy(y)[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    net.eval()
    cal, _ = draw(32)
    val, labels = draw(48)
    return cal, val, labels


def _case(root: Path, name: str, net: Any, shape: tuple[int, ...], layout: str, outputs: list[str],
          classes: int) -> Case:
    cal, val, labels = _train(net, shape, classes, seed=len(name))
    folder = root / name
    (folder / "onnx").mkdir(parents=True)
    (folder / "ts").mkdir()
    np.savez(folder / "cal.npz", x=cal)
    np.savez(folder / "val.npz", x=val, labels=labels)
    model = Model.model_validate({
        "source": {"factory": "unused:build"},
        "inputs": [{"name": "x", "shape": ["batch", *shape], "layout": layout}],
        "outputs": [{"name": outputs[0], "kind": "scores"}, *({"name": o} for o in outputs[1:])],
        "data": {"calibration": f"{name}/cal.npz", "validation": f"{name}/val.npz", "example": f"{name}/val.npz"},
    })
    example = torch.from_numpy(val[:2])
    with torch.no_grad(), warnings_quiet():
        torch.onnx.export(net, (example,), str(folder / "onnx/model.onnx"), input_names=["x"], output_names=outputs,
                          dynamic_axes={"x": {0: "batch"}}, dynamo=False, opset_version=18)
        torch.jit.trace(net, (example,)).save(str(folder / "ts/model.pt"))
        ref = net(torch.from_numpy(val))
    ref_list = [r.numpy() for r in (ref if isinstance(ref, tuple) else (ref,))]
    return Case(name, model, net, folder / "onnx/model.onnx", folder / "ts/model.pt", val, ref_list)


def warnings_quiet() -> Any:
    import warnings

    stack = contextlib.ExitStack()
    stack.enter_context(warnings.catch_warnings())
    warnings.simplefilter("ignore")
    return stack


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("mobile")


@pytest.fixture(scope="module")
def cases(root: Path) -> dict[str, Case]:
    torch.manual_seed(0)
    return {
        "cnn": _case(root, "cnn", TinyCNN(), (1, 8, 8), "NCHW", ["logits"], 10),
        "conv1d": _case(root, "conv1d", TinyConv1d(), (4, 16), "NCL", ["logits"], 3),
        "onet": _case(root, "onet", TinyONet(), (3, 24, 24), "NCHW", ["prob", "box", "landmarks"], 2),
    }


def signature(shape: list[Any], layout: str, calibration: bool = True) -> Model:
    """A model signature alone, for plan-time checks that load nothing."""
    return Model.model_validate({
        "source": {"factory": "unused:build"}, "inputs": [{"name": "x", "shape": shape, "layout": layout}],
        "outputs": [{"name": "logits", "kind": "scores"}], "data": {"calibration": "cal.npz"} if calibration else {},
    })


def run_step(step: str, model: Model, source: Path, out: Path, root: Path, **options: Any) -> dict[str, Any]:
    """Run one registered step in-process, the way a worker does."""
    cls = get_step(step)
    out.mkdir(parents=True, exist_ok=True)
    ctx = StepContext(model_name="tiny", model=model, root=root, input_path=source, out_dir=out,
                      options=cls.Options(**options))
    with contextlib.redirect_stdout(io.StringIO()):  # converters chat on stdout
        return cls().run(ctx)


def top1(ref: np.ndarray, got: np.ndarray) -> float:
    return float((ref.argmax(-1) == got.argmax(-1)).mean())


def max_rel(ref: np.ndarray, got: np.ndarray) -> float:
    return float(np.abs(ref - got).max() / np.abs(ref).max())


# --- TFLite --------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def saved_models(cases: dict[str, Case], root: Path) -> dict[str, Path]:
    pytest.importorskip("onnx2tf")
    pytest.importorskip("ai_edge_litert")
    out = {}
    for name, case in cases.items():
        run_step("saved-model-from-onnx", case.model, case.onnx, root / name / "saved_model", root)
        out[name] = root / name / "saved_model"
    return out


@pytest.mark.slow
@pytest.mark.tflite
@pytest.mark.parametrize("name, layout, perm, shape", [
    ("cnn", "NHWC", [0, 2, 3, 1], ["batch", 8, 8, 1]),
    ("conv1d", "NLC", [0, 2, 1], ["batch", 16, 4]),
    ("onet", "NHWC", [0, 2, 3, 1], ["batch", 24, 24, 3]),
])
def test_saved_model_records_the_layout_onnx2tf_chose(saved_models: dict[str, Path], cases: dict[str, Case], name: str,
                                                      layout: str, perm: list[int], shape: list[Any]) -> None:
    record = json.loads((saved_models[name] / "layout.json").read_text())
    (inp,) = record["inputs"]
    assert (inp["name"], inp["source_layout"], inp["layout"], inp["perm"], inp["shape"]) == \
        ("x", cases[name].model.inputs[0].layout, layout, perm, shape)
    assert [o["name"] for o in record["outputs"]] == [o.name for o in cases[name].model.outputs]
    assert (saved_models[name] / "saved_model" / "saved_model.pb").is_file()
    assert not list(saved_models[name].glob(".work-*")), "the private onnx2tf folder must be gone"


VARIANTS = [
    ("tflite-from-saved-model", {}, "fp32"),
    ("tflite-fp16-from-saved-model", {}, "fp16"),
    ("tflite-int8-from-saved-model", {"mode": "dynamic"}, "int8"),
    ("tflite-int8-from-saved-model", {"mode": "full", "io": "float"}, "int8"),
    ("tflite-int8-from-saved-model", {"mode": "full", "io": "int8"}, "int8"),
]


@pytest.mark.slow
@pytest.mark.tflite
@pytest.mark.parametrize("name", ["cnn", "conv1d", "onet"])
def test_tflite_runs_in_litert_and_matches_torch(saved_models: dict[str, Path], cases: dict[str, Case], root: Path,
                                                 name: str) -> None:
    case = cases[name]
    runtime = get_runtime("litert")
    assert runtime.unavailable() is None
    sizes = {}
    for i, (step, options, precision) in enumerate(VARIANTS):
        out = root / name / f"tflite-{i}"
        metrics = run_step(step, case.model, saved_models[name] / "saved_model", out, root, **options)
        assert (out / "layout.json").read_text() == (saved_models[name] / "layout.json").read_text()
        sizes[i] = metrics["bytes"]
        session = runtime.load(out / "model.tflite", case.model, root)
        got = session.run_all(Batch({"x": case.val}, None, "validation"))
        assert [g.shape for g in got] == [r.shape for r in case.ref], (step, options)
        label = f"{name} {step} {options}"
        if precision == "fp32":
            assert all(max_rel(r, g) < 1e-4 for r, g in zip(case.ref, got, strict=True)), label
        elif precision == "fp16":
            assert all(max_rel(r, g) < 1e-2 for r, g in zip(case.ref, got, strict=True)), label
        else:
            assert metrics["tensor_dtypes"].get("int8", 0) > 0, f"{label}: nothing was quantized"
            assert top1(case.ref[0], got[0]) >= 0.9, label
        if options.get("io") == "int8":
            (detail,) = session.runner.get_input_details().values()  # type: ignore[attr-defined]
            assert detail["dtype"] == np.int8 and detail["quantization"][0] > 0
    assert sizes[3] < sizes[1] < sizes[0] and sizes[2] < sizes[1], sizes  # fp32 > fp16 > int8 (small: headers)


@pytest.mark.slow
@pytest.mark.tflite
def test_keep_layout_keeps_channels_first(cases: dict[str, Case], root: Path) -> None:
    pytest.importorskip("onnx2tf")
    case = cases["cnn"]
    sm = root / "keep" / "saved_model"
    run_step("saved-model-from-onnx", case.model, case.onnx, sm, root, keep_layout=True)
    (inp,) = json.loads((sm / "layout.json").read_text())["inputs"]
    assert (inp["layout"], inp["perm"], inp["shape"]) == ("NCHW", [0, 1, 2, 3], ["batch", 1, 8, 8])
    run_step("tflite-from-saved-model", case.model, sm / "saved_model", root / "keep" / "tflite", root)
    got = get_runtime("litert").load(root / "keep/tflite/model.tflite", case.model, root).run_all(
        Batch({"x": case.val}, None, "validation"))
    assert max_rel(case.ref[0], got[0]) < 1e-4


@pytest.mark.slow
@pytest.mark.tflite
def test_fixed_batch_artifact_runs_any_number_of_samples(cases: dict[str, Case], root: Path) -> None:
    pytest.importorskip("onnx2tf")
    case = cases["cnn"]
    sm = root / "fixed" / "saved_model"
    run_step("saved-model-from-onnx", case.model, case.onnx, sm, root, batch_size=4)
    assert json.loads((sm / "layout.json").read_text())["inputs"][0]["shape"] == [4, 8, 8, 1]
    run_step("tflite-from-saved-model", case.model, sm / "saved_model", root / "fixed" / "tflite", root)
    session = get_runtime("litert").load(root / "fixed/tflite/model.tflite", case.model, root)
    assert session.max_batch == 4
    got = session.run_all(Batch({"x": case.val[:10]}, None, "validation"))  # chunks of 4, 4 and a padded 2
    assert got[0].shape == (10, 10) and max_rel(case.ref[0][:10], got[0]) < 1e-4


@pytest.mark.slow
@pytest.mark.tflite
def test_ceil_mode_pool_padding_keeps_full_int8_usable(saved_models: dict[str, Path], cases: dict[str, Case],
                                                       root: Path) -> None:
    # onnx2tf pads ceil-mode pools with -3.4e38; the step pads with the input's minimum instead, so the
    # calibrated ranges stay sane (ONet's int8 accuracy above depends on it).
    from ai_edge_litert.interpreter import Interpreter

    from buildsys.formats.tflite.tflite import _scales

    out = root / "onet" / "ceil-int8"  # its own artifact: tests may run in any order, on any worker
    run_step("tflite-int8-from-saved-model", cases["onet"].model, saved_models["onet"] / "saved_model", out, root,
             mode="full", io="float")
    flatbuffer = (out / "model.tflite").read_bytes()
    ops = {op["op_name"] for op in Interpreter(model_content=flatbuffer)._get_ops_details()}
    assert "PADV2" in ops and max(scale for _, scale in _scales(flatbuffer)) < 10


@pytest.mark.slow
@pytest.mark.tflite
def test_full_int8_refuses_an_unusable_calibrated_range(saved_models: dict[str, Path], cases: dict[str, Case],
                                                       root: Path) -> None:
    case = cases["cnn"]
    cal = np.load(root / "cnn/cal.npz")["x"].copy()
    cal[0, 0, 0, 0] = 3e38  # one corrupt sample
    np.savez(root / "huge.npz", x=cal)
    model = case.model.model_copy(update={"data": case.model.data.model_copy(
        update={"calibration": case.model.data.calibration.model_copy(update={"path": "huge.npz"})})})
    with pytest.raises(StepError, match=r"full int8 calibration produced an unusable range .*calibration data"):
        run_step("tflite-int8-from-saved-model", model, saved_models["cnn"] / "saved_model", root / "huge", root)


@pytest.mark.slow
@pytest.mark.tflite
def test_fixed_batch_rgb_model_converts_without_the_network(cases: dict[str, Case], root: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    # A fixed batch of RGB images is when onnx2tf downloads sample images from GitHub for its dummy
    # inference: the step must feed the model's own example inputs instead.
    import socket

    pytest.importorskip("onnx2tf")

    def no_network(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("the step tried to reach the network")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    examples = []
    original = StepContext.example
    monkeypatch.setattr(StepContext, "example", lambda self: examples.append(1) or original(self))
    case = cases["onet"]
    run_step("saved-model-from-onnx", case.model, case.onnx, root / "rgb1" / "saved_model", root, batch_size=1)
    assert examples, "onnx2tf's sample-image path was not exercised"
    assert json.loads((root / "rgb1/saved_model/layout.json").read_text())["inputs"][0]["shape"] == [1, 24, 24, 3]


@pytest.mark.slow
@pytest.mark.tflite
def test_onnx_op_onnx2tf_lacks_is_a_step_error_naming_it(root: Path) -> None:
    pytest.importorskip("onnx2tf")
    import onnx
    from onnx import TensorProto, helper

    node = helper.make_node("FancyGelu", ["x"], ["y"], name="act", domain="com.example")
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])])
    (root / "custom").mkdir()
    opsets = [helper.make_opsetid("", 18), helper.make_opsetid("com.example", 1)]
    onnx.save(helper.make_model(graph, opset_imports=opsets), str(root / "custom" / "model.onnx"))
    model = signature(["batch", 4], "NC", calibration=False)
    with pytest.raises(StepError, match=r"model 'tiny': onnx2tf does not support the ONNX op FancyGelu \(node act\) "
                                        r"\(step saved-model-from-onnx\)"):
        run_step("saved-model-from-onnx", model, root / "custom" / "model.onnx", root / "custom" / "sm", root)
    assert not list((root / "custom" / "sm").iterdir()), "a failed step leaves nothing behind"


def test_full_int8_without_calibration_is_a_config_error() -> None:
    step = get_step("tflite-int8-from-saved-model")
    bare = signature(["batch", 1, 8, 8], "NCHW", calibration=False)
    assert step.check_config(signature(["batch", 1, 8, 8], "NCHW"), step.Options(), Path(".")) is None
    problem = step.check_config(bare, step.Options(), Path("."))
    assert problem and problem.startswith("full int8 needs calibration data: add data.calibration to the model")
    assert step.check_config(bare, step.Options(mode="dynamic"), Path(".")) is None
    assert step.data_used(step.Options()) == ("calibration",) and step.data_used(step.Options(mode="dynamic")) == ()
    with pytest.raises(ValueError, match="io: int8 needs mode: full"):
        step.Options(mode="dynamic", io="int8")


@pytest.mark.slow
@pytest.mark.tflite
def test_wrong_shape_calibration_is_a_step_error(saved_models: dict[str, Path], cases: dict[str, Case],
                                                 root: Path) -> None:
    case = cases["cnn"]
    np.savez(root / "wrong.npz", x=np.zeros((8, 1, 6, 6), np.float32))
    model = case.model.model_copy(update={"data": case.model.data.model_copy(
        update={"calibration": case.model.data.calibration.model_copy(update={"path": "wrong.npz"})})})
    with pytest.raises(StepError, match=r"model 'tiny': calibration: wrong.npz: 'x' has shape \[8, 1, 6, 6\].*axis 2"):
        run_step("tflite-int8-from-saved-model", model, saved_models["cnn"] / "saved_model", root / "wrong", root)


@pytest.fixture(scope="module")
def determinant(root: Path) -> Case:
    folder = root / "det"
    (folder / "onnx").mkdir(parents=True)
    (folder / "ts").mkdir()
    net = Determinant().eval()
    x = torch.randn(2, 16)
    with warnings_quiet():
        torch.onnx.export(net, (x,), str(folder / "onnx/model.onnx"), input_names=["x"], output_names=["det"],
                          dynamo=False, opset_version=18)
        torch.jit.trace(net, (x,)).save(str(folder / "ts/model.pt"))
    model = Model.model_validate({"source": {"factory": "unused:build"}, "inputs": [{"name": "x", "shape": [2, 16]}],
                                  "outputs": [{"name": "det"}]})
    return Case("det", model, net, folder / "onnx/model.onnx", folder / "ts/model.pt", x.numpy(), [])


@pytest.mark.slow
@pytest.mark.tflite
def test_op_without_tflite_kernel_is_a_step_error_naming_it(determinant: Case, root: Path) -> None:
    pytest.importorskip("onnx2tf")
    sm = root / "det" / "saved_model"
    run_step("saved-model-from-onnx", determinant.model, determinant.onnx, sm, root)
    with pytest.raises(StepError, match=r"model 'tiny': TFLite has no builtin kernel for the TensorFlow op\(s\) "
                                        r"MatrixDeterminant.*select_tf_ops.*\(step tflite-from-saved-model\)"):
        run_step("tflite-from-saved-model", determinant.model, sm / "saved_model", root / "det" / "tflite", root)


# --- Core ML -------------------------------------------------------------------------------------


METADATA = {"author": "tests", "license": "MIT", "user_defined": {"team": "mobile"}}


@pytest.fixture(scope="module")
def coreml_packages(cases: dict[str, Case], root: Path) -> dict[str, tuple[Path, dict[str, Any]]]:
    pytest.importorskip("coremltools")
    case = cases["onet"]
    made = {}
    for key, step, options in [
        ("fp32", "coreml-from-torchscript", {}),
        ("fp16", "coreml-fp16-from-torchscript", {}),
        ("int8", "coreml-int8-from-torchscript", {}),
        ("palettize4", "coreml-int8-from-torchscript", {"weight_compression": "palettize4"}),
    ]:
        out = root / "coreml" / key
        metrics = run_step(step, case.model, case.torchscript, out, root, metadata=METADATA, **options)
        made[key] = (out / "model.mlpackage", metrics)
    return made


@pytest.mark.slow
@pytest.mark.coreml
def test_coreml_packages_keep_the_signature_and_compress_for_real(
        coreml_packages: dict[str, tuple[Path, dict[str, Any]]]) -> None:
    from buildsys.formats.coreml.runtime import inspect_mlpackage

    facts = {key: inspect_mlpackage(path) for key, (path, _) in coreml_packages.items()}
    for key, fact in facts.items():
        assert fact["model_type"] == "mlProgram"
        assert [(i["name"], i["kind"], i["dtype"], i["ranges"]) for i in fact["inputs"]] == \
            [("x", "tensor", "float32", [[1, 64], [3, 3], [24, 24], [24, 24]])], key
        assert [o["name"] for o in fact["outputs"]] == ["prob", "box", "landmarks"], key
        assert (fact["spec_version"], fact["minimum_deployment_target"]) == (7, "iOS16"), key
        assert fact["metadata"]["author"] == "tests" and fact["metadata"]["user_defined"]["team"] == "mobile"
        assert "com.github.apple.coremltools.conversion_date" not in fact["metadata"]["user_defined"]
    assert facts["fp32"]["compute_precision"] == "float32" and "float16" not in facts["fp32"]["weight_dtypes"]
    assert facts["fp16"]["compute_precision"] == "float16" and "float32" not in facts["fp16"]["weight_dtypes"]
    assert not facts["fp16"]["weights_compressed"]
    # int8: the 512x64 layer (the only one above the 2048-element threshold) is stored as int8.
    assert facts["int8"]["compressed_weight_ops"] == {"constexpr_affine_dequantize": 1}
    assert facts["int8"]["weight_dtypes"]["int8"]["elements"] >= 512 * 64
    assert facts["palettize4"]["compressed_weight_ops"] == {"constexpr_lut_to_dense": 1}
    sizes = {key: fact["bytes"] for key, fact in facts.items()}
    assert sizes["palettize4"] < sizes["int8"] < sizes["fp16"] < sizes["fp32"], sizes
    assert coreml_packages["int8"][1]["weight_compression"] == "int8"


@pytest.mark.slow
@pytest.mark.coreml
def test_coreml_conversion_is_reproducible(cases: dict[str, Case], root: Path,
                                           coreml_packages: dict[str, tuple[Path, dict[str, Any]]]) -> None:
    case = cases["onet"]
    out = root / "coreml" / "int8-again"
    run_step("coreml-int8-from-torchscript", case.model, case.torchscript, out, root, metadata=METADATA)
    first = coreml_packages["int8"][0]
    files = sorted(p.relative_to(first) for p in first.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(out / "model.mlpackage") for p in (out / "model.mlpackage").rglob("*")
                           if p.is_file())
    for rel in files:
        assert (first / rel).read_bytes() == (out / "model.mlpackage" / rel).read_bytes(), rel


@pytest.mark.slow
@pytest.mark.coreml
def test_coreml_package_of_a_model_without_weights_survives_the_store(tmp_path: Path) -> None:
    """A weightless model's package has an empty `weights` directory; the store keeps files only, so the
    manifest must not name it (it did: every such package failed to open after a round trip)."""
    pytest.importorskip("coremltools")
    import coremltools as ct

    from buildsys.formats.coreml.mil import MilProgram
    from buildsys.storage.hashing import StatCache
    from buildsys.storage.store import Store

    class Sum(nn.Module):
        def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
            return torch.cumsum(a, dim=1) + b

    args = (torch.randn(1, 5), torch.randn(1, 5))
    torch.jit.trace(Sum(), args).save(str(tmp_path / "model.pt"))
    model = Model.model_validate({"source": {"factory": "unused:build"}, "outputs": [{"name": "y"}],
                                  "inputs": [{"name": "a", "shape": [1, 5]}, {"name": "b", "shape": [1, 5]}]})
    with warnings_quiet():
        run_step("coreml-from-torchscript", model, tmp_path / "model.pt", tmp_path / "out", tmp_path)
    store = Store(tmp_path / "cache", StatCache(None))
    _, files = store.put_tree(tmp_path / "out")
    store.checkout([f.as_list() for f in files], tmp_path / "back", link=False)
    package = tmp_path / "back" / "model.mlpackage"
    assert ct.utils.load_spec(str(package)).WhichOneof("Type") == "mlProgram"
    program = MilProgram.load(package)
    got = program.evaluate(dict(zip(program.input_names, (a.numpy() for a in args)))).outputs["y"]
    np.testing.assert_allclose(got, (torch.cumsum(args[0], 1) + args[1]).numpy(), rtol=1e-5, atol=1e-6)


@pytest.mark.slow
@pytest.mark.coreml
def test_coreml_image_input_for_a_grayscale_model(cases: dict[str, Case], root: Path) -> None:
    pytest.importorskip("coremltools")
    from buildsys.formats.coreml.runtime import inspect_mlpackage

    case = cases["cnn"]
    out = root / "coreml" / "image"
    run_step("coreml-fp16-from-torchscript", case.model, case.torchscript, out, root,
             input_type="image", image_scale=1 / 255)
    (inp,) = inspect_mlpackage(out / "model.mlpackage")["inputs"]
    assert (inp["name"], inp["kind"], inp["color_space"], inp["shape"]) == ("x", "image", "GRAYSCALE", [8, 8])


def test_coreml_config_errors_name_the_option_and_the_minimum() -> None:
    int8 = get_step("coreml-int8-from-torchscript")
    fp16 = get_step("coreml-fp16-from-torchscript")
    cnn, conv1d = signature(["batch", 1, 8, 8], "NCHW"), signature(["batch", 4, 16], "NCL")
    assert int8.check_config(cnn, int8.Options(minimum_deployment_target="iOS15"), Path(".")) == \
        "weight_compression: int8 needs minimum_deployment_target iOS16 or later (got iOS15)"
    assert fp16.check_config(cnn, fp16.Options(minimum_deployment_target="macOS12", io_dtype="float16"), Path(".")) == \
        "io_dtype: float16 needs minimum_deployment_target macOS13 or later (got macOS12)"
    assert fp16.check_config(cnn, fp16.Options(minimum_deployment_target="iOS15"), Path(".")) is None
    assert fp16.check_config(conv1d, fp16.Options(input_type="image"), Path(".")) == \
        "input_type: image needs 4-D NCHW float inputs with 1 or 3 channels: 'x' has 3 axes"
    with pytest.raises(ValueError, match="coreml-int8 compresses weights"):
        int8.Options(weight_compression="none")


def test_coreml_runtime_says_it_needs_macos(tmp_path: Path) -> None:
    runtime = get_runtime("coreml")
    if sys.platform == "darwin":
        pytest.skip(out_of_reach("this host can run Core ML"))
    expected = "Core ML execution needs macOS (this host is Linux)" if sys.platform.startswith("linux") else \
        runtime.unavailable()
    assert runtime.unavailable() == expected and expected.startswith("Core ML execution needs macOS")
    with pytest.raises(StepError, match=r"^Core ML execution needs macOS"):
        runtime.load(tmp_path / "model.mlpackage", signature(["batch", 1, 8, 8], "NCHW"), tmp_path)


@pytest.mark.slow
@pytest.mark.coreml
def test_op_core_ml_cannot_convert_is_a_step_error_naming_it(determinant: Case, root: Path) -> None:
    pytest.importorskip("coremltools")
    with pytest.raises(StepError, match=r"model 'tiny': Core ML cannot convert the PyTorch op 'linalg_det'.*"
                                        r"\(step coreml-from-torchscript\)"):
        run_step("coreml-from-torchscript", determinant.model, determinant.torchscript, root / "det" / "coreml", root)


# --- PyTorch Mobile lite interpreter -------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("name", ["cnn", "onet"])
def test_ptl_runs_in_the_lite_interpreter(cases: dict[str, Case], root: Path, name: str) -> None:
    case = cases[name]
    metrics = run_step("ptl-from-torchscript", case.model, case.torchscript, root / name / "ptl", root)
    assert metrics["bytes"] > 0
    with warnings_quiet():
        session = get_runtime("lite-interpreter").load(root / name / "ptl/model.ptl", case.model, root)
        got = session.run_all(Batch({"x": case.val}, None, "validation"))
    assert all(max_rel(r, g) < 1e-5 for r, g in zip(case.ref, got, strict=True))


@pytest.mark.slow
def test_optimize_for_mobile_fails_clearly_without_xnnpack(cases: dict[str, Case], root: Path) -> None:
    import torch.backends.xnnpack

    if torch.backends.xnnpack.enabled:
        pytest.skip(out_of_reach("this torch build has XNNPACK"))
    case = cases["cnn"]
    with pytest.raises(StepError, match=r"optimize_for_mobile needs a torch build with XNNPACK.*"
                                        r"set optimize_for_mobile: false \(step ptl-from-torchscript\)"):
        run_step("ptl-from-torchscript", case.model, case.torchscript, root / "cnn" / "ptl-opt", root,
                 optimize_for_mobile=True)


@pytest.mark.coreml
def test_an_fp16_program_that_keeps_lstm_weights_in_float32_still_computes_in_float16(tmp_path: Path) -> None:
    """coremltools leaves an LSTM's weights in float32 inside a float16 program: fp32 weights outnumber
    the fp16 ones, and the inspection must not call the program float32 for that."""
    import coremltools as ct
    import torch

    from buildsys.formats.coreml.runtime import inspect_mlpackage

    class Recurrent(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lstm = torch.nn.LSTM(8, 64, batch_first=True)
            self.head = torch.nn.Linear(64, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(self.lstm(x)[0][:, -1])

    torch.manual_seed(0)
    traced = torch.jit.trace(Recurrent().eval(), torch.randn(1, 10, 8))
    facts = {}
    for precision in ("FLOAT16", "FLOAT32"):
        mlmodel = ct.convert(traced, convert_to="mlprogram", inputs=[ct.TensorType(name="x", shape=(1, 10, 8))],
                             compute_precision=getattr(ct.precision, precision), skip_model_load=True)
        path = tmp_path / f"{precision}.mlpackage"
        mlmodel.save(str(path))
        facts[precision] = inspect_mlpackage(path)
    fp16 = facts["FLOAT16"]["weight_dtypes"]
    assert fp16["float32"]["elements"] > fp16.get("float16", {}).get("elements", 0)  # what fooled the old rule
    assert facts["FLOAT16"]["compute_precision"] == "float16"
    assert facts["FLOAT32"]["compute_precision"] == "float32"


@pytest.mark.slow
@pytest.mark.coreml
def test_coreml_from_the_torch_export_program_is_the_second_route(cases: dict[str, Case], root: Path) -> None:
    """The torch.export route makes the same package as the trace route (names, shapes, precision),
    and ranks after it: a target takes it only by fallback or with via: [pt2]."""
    from buildsys.formats.coreml.runtime import inspect_mlpackage
    from buildsys.planning.routes import Route, format_graph

    case = cases["onet"]
    batch = torch.export.Dim("batch", min=1, max=64)
    program = torch.export.export(case.net.eval(), (torch.from_numpy(case.val[:2]),), dynamic_shapes=({0: batch},))
    pt2 = root / "coreml-export" / "model.pt2"
    pt2.parent.mkdir(parents=True, exist_ok=True)
    torch.export.save(program, str(pt2))
    facts = {}
    for step in ("coreml-fp16-from-pt2", "coreml-fp16-from-torchscript"):
        out = root / "coreml-export" / step
        run_step(step, case.model, pt2 if "pt2" in step else case.torchscript, out, root)
        facts[step] = inspect_mlpackage(out / "model.mlpackage")
    export, trace = facts["coreml-fp16-from-pt2"], facts["coreml-fp16-from-torchscript"]
    for key in ("inputs", "outputs", "compute_precision", "spec_version", "model_type"):
        assert export[key] == trace[key], key
    g = format_graph()
    assert Route.of_formats(["pytorch", "torchscript", "coreml-fp16"]).cost() < Route.of_formats(["pytorch", "pt2", "coreml-fp16"]).cost()
    assert g.has_edge("pt2", "coreml-int8") and g.edges["pt2", "coreml-fp16"]["step"] == "coreml-fp16-from-pt2"
