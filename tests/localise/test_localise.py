"""Per-layer localisation (buildsys.localise): a fault injected into one known layer of a real artifact is
named by its module path in every runtime that shows intermediates, a badly quantized layer is the one
that adds the most error, and a check that misses says where, in its failures and in `explain`."""

from __future__ import annotations

import copy
import json
import textwrap
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from buildsys.config.schema import Acceptance, Model
from buildsys.localise import NotLocalisable, localise
from buildsys.localise.names import from_name_scopes, from_scope, from_underscored
from buildsys.nodes.verify import resolve_acceptance
from tests.conftest import TinyProject


class Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.act = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x))) + x


class Net(nn.Module):
    """Residual blocks with BatchNorm (which every converter folds into the Conv before it)."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(1, 4, 3, padding=1)
        self.layers = nn.Sequential(Block(), Block(), Block())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(4, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(self.layers(torch.relu(self.stem(x)))).flatten(1))


MODEL = Model.model_validate({"source": {"factory": "tests.localise.test_localise:Net"},
                              "inputs": [{"name": "x", "shape": ["batch", 1, 8, 8]}], "outputs": [{"name": "y"}]})
FP32 = resolve_acceptance(Acceptance(), "fp32", MODEL.outputs)["outputs"]["y"]
X = np.random.default_rng(0).standard_normal((4, 1, 8, 8)).astype(np.float32)
FAULTY = "layers.1.conv"


@pytest.fixture(scope="module")
def nets() -> tuple[nn.Module, nn.Module]:
    """The reference net (BatchNorm with real running statistics) and a copy whose one conv is corrupted."""
    torch.manual_seed(0)
    net = Net().train()
    with torch.no_grad():
        for _ in range(3):
            net(torch.randn(16, 1, 8, 8) * 2 + 0.5)
    net.eval()
    bad = copy.deepcopy(net)
    with torch.no_grad():
        bad.get_submodule(FAULTY).weight[1, 2] += 0.5
    return net, bad


def export(module: nn.Module, path: Path, dynamo: bool = False) -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if dynamo:
            torch.onnx.export(module, (torch.from_numpy(X),), dynamo=True, opset_version=18, input_names=["x"],
                              output_names=["y"], dynamic_axes={"x": {0: "b"}, "y": {0: "b"}},
                              verbose=False).save(str(path), external_data=False)
        else:
            torch.onnx.export(module, (torch.from_numpy(X),), str(path), dynamo=False, opset_version=17,
                              input_names=["x"], output_names=["y"], dynamic_axes={"x": {0: "b"}, "y": {0: "b"}})
    return path


def test_converter_names_map_back_to_module_paths() -> None:
    known = ["stem", "layers", "layers.0", "layers.0.conv", "layers.0.bn", "fc", "encoder_layer", "encoder_layer.fc1"]
    assert from_scope("/layers/layers.0/conv/Conv", known) == "layers.0.conv"
    assert from_scope("/layers/layers.0/conv/Conv/WithoutBiases", known) == "layers.0.conv"  # OpenVINO's split bias
    assert from_scope("/layers/layers.0/Add", known) == "layers.0"
    assert from_scope("/Relu", known) == "" and from_scope("31", known) == ""
    assert from_name_scopes("['', 'layers', 'layers.0', 'layers.0.bn', '_native_batch_norm']", known) == "layers.0.bn"
    assert from_underscored("layers_0_conv", known) == "layers.0.conv"
    assert from_underscored("encoder_layer_fc1", known) == "encoder_layer.fc1"
    assert from_underscored("const_0", known) == ""


@pytest.mark.parametrize("dynamo", [False, True], ids=["legacy", "dynamo"])
def test_onnx_fault_is_named_by_its_module(tmp_path: Path, nets: Any, dynamo: bool) -> None:
    net, bad = nets
    path = export(bad, tmp_path / "model.onnx", dynamo)
    found = localise(path, "onnxruntime", net, {"x": X}, MODEL, tmp_path, FP32, fmt="onnx")
    assert found.first is not None and found.first.module == FAULTY, [(r.module, r.error) for r in found.rows]
    before = found.rows[:found.rows.index(found.first)]
    assert before and all(r.ok or r.absent for r in before), [(r.module, r.error, r.absent) for r in before]
    assert f"'{FAULTY}'" in found.headline("fp32") and "Conv" in found.headline("fp32")
    # the same export of the sound net: nothing diverges
    clean = localise(export(net, tmp_path / "clean.onnx", dynamo), "onnxruntime", net, {"x": X}, MODEL, tmp_path, FP32)
    assert clean.first is None and clean.rows and all(r.ok or r.absent for r in clean.rows), [(r.module, r.error) for r in clean.rows]
    assert [r.module for r in clean.rows if r.absent] == [f"layers.{i}.conv" for i in range(3)]  # BatchNorm folded in


def test_openvino_fault_is_named_by_its_module(tmp_path: Path, nets: Any) -> None:
    ov = pytest.importorskip("openvino")
    net, bad = nets
    ov.save_model(ov.convert_model(str(export(bad, tmp_path / "model.onnx"))), str(tmp_path / "model.xml"),
                  compress_to_fp16=False)
    found = localise(tmp_path / "model.xml", "openvino", net, {"x": X}, MODEL, tolerance=FP32)  # a format name
    assert found.first is not None and found.first.module == FAULTY, [(r.module, r.error) for r in found.rows]


def test_coreml_fault_is_named_through_the_mil_reference(tmp_path: Path, nets: Any) -> None:
    """Core ML folds the BatchNorm into the Conv and names the fused weights `const_N`: the fault is found by
    value among the unnamed ops, between the named ones around it."""
    ct = pytest.importorskip("coremltools")
    net, bad = nets
    traced = torch.jit.trace(bad, (torch.from_numpy(X[:1]),))
    fixed = MODEL.model_copy(update={"inputs": [MODEL.inputs[0].model_copy(update={"shape": [1, 1, 8, 8]})]})
    ct.convert(traced, convert_to="mlprogram", inputs=[ct.TensorType(name="x", shape=(1, 1, 8, 8))],
               compute_precision=ct.precision.FLOAT32, minimum_deployment_target=ct.target.iOS16,
               skip_model_load=True).save(str(tmp_path / "model.mlpackage"))
    found = localise(tmp_path / "model.mlpackage", "coreml", net, {"x": X}, fixed, tmp_path, FP32)  # its stand-in here
    assert found.format == "coreml"
    assert found.first is not None and found.first.module == FAULTY, [(r.module, r.tensor, r.error) for r in found.rows]
    assert found.first.op == "conv"


class Mlp(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2, self.fc3 = nn.Linear(8, 32), nn.Linear(32, 32), nn.Linear(32, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc3(torch.relu(self.fc2(torch.relu(self.fc1(x)))))


def test_int8_table_names_the_layer_that_quantizes_worst(tmp_path: Path) -> None:
    """fc2 holds one huge weight on an input that is always zero (a dead unit): harmless in float, but
    per-tensor int8 gives fc2 a step that rounds every other weight to zero."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    torch.manual_seed(1)
    net = Mlp().eval()
    with torch.no_grad():
        net.fc1.bias[0] = -100.0  # unit 0 never fires
        net.fc2.weight[:, 0] = 60.0
    x = np.random.default_rng(1).standard_normal((8, 8)).astype(np.float32)
    model = Model.model_validate({"source": {"factory": "tests.localise.test_localise:Mlp"},
                                  "inputs": [{"name": "x", "shape": ["batch", 8]}], "outputs": [{"name": "y"}]})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (torch.from_numpy(x),), str(tmp_path / "f.onnx"), dynamo=False, input_names=["x"],
                          output_names=["y"], dynamic_axes={"x": {0: "b"}, "y": {0: "b"}})
    quantize_dynamic(str(tmp_path / "f.onnx"), str(tmp_path / "q.onnx"), weight_type=QuantType.QInt8)
    int8 = resolve_acceptance(Acceptance(), "int8", model.outputs)["outputs"]["y"]
    found = localise(tmp_path / "q.onnx", "onnxruntime", net, {"x": x}, model, tmp_path, int8, fmt="onnx-int8")
    table = {r.module: r.error for r in found.rows}
    assert found.worst is not None and found.worst.module == "fc2", table
    assert found.first is not None and found.first.module == "fc2", table
    assert table["fc1"] < 0.01 < table["fc2"] and found.criterion.metric == "range_error"
    assert "keep it in float" in found.headline("int8")


def test_tflite_fault_is_named_through_litert_tensors(tmp_path: Path, nets: Any) -> None:
    """litert-torch fuses Conv, BatchNorm and ReLU into one CONV_2D in NHWC: its tensors are compared
    transposed, and the fused output is the ReLU's."""
    litert_torch = pytest.importorskip("litert_torch")
    net, bad = nets
    litert_torch.convert(bad, (torch.from_numpy(X[:1]),)).export(str(tmp_path / "model.tflite"))
    fixed = MODEL.model_copy(update={"inputs": [MODEL.inputs[0].model_copy(update={"shape": [1, 1, 8, 8]})]})
    found = localise(tmp_path / "model.tflite", "litert", net, {"x": X}, fixed, tmp_path, FP32, fmt="tflite")
    assert found.first is not None and found.first.module == FAULTY, [(r.module, r.op, r.error) for r in found.rows]
    assert found.first.op == "CONV_2D" and len(found.headline()) < 700


@pytest.mark.parametrize("runtime", ["executorch", "tensorflow", "coreml"])
def test_runtimes_without_intermediates_say_why(runtime: str) -> None:
    from buildsys.formats import get_runtime

    with pytest.raises(NotLocalisable, match=f"localisation not available for {runtime}: .+"):
        get_runtime(runtime).intermediates(Path("x"), MODEL, Path("."), {"x": X}, ["fc"])


HOSTILE = '''\
import torch
from torch import nn


class Gain(nn.Module):
    """A gain held as a weight too large for float16 (1e5 > 65504), scaled back after: exact in float32."""

    def __init__(self):
        super().__init__()
        self.gain = nn.Parameter(torch.tensor(1e5))

    def forward(self, x):
        return x * self.gain * 1e-5


class Hostile(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.fc1 = nn.Linear(8, 16)
        self.gain = Gain()
        self.fc2 = nn.Linear(16, 4)

    def forward(self, x):
        return self.fc2(self.gain(torch.relu(self.fc1(x))))
'''


def test_a_missed_check_names_the_layer_in_its_failure_and_in_explain(tmp_path: Path) -> None:
    """A real build: the float16 converter clamps a weight to 65504, the fp16 ONNX artifact misses its
    tolerance, the failure names the module `gain`, and `explain` shows the per-layer table (the lock
    keeps only what passed)."""
    root = tmp_path / "p"
    root.mkdir()
    (root / "hostile.py").write_text(HOSTILE)
    rng = np.random.default_rng(0)
    np.savez(root / "val.npz", x=rng.standard_normal((16, 8)).astype("float32"))
    project = TinyProject(root, root / "calls.txt")
    project.write(textwrap.dedent("""\
        models:
          h:
            source: {factory: "hostile:Hostile"}
            inputs: [{name: x, shape: [batch, 8]}]
            outputs: [{name: y, kind: values}]
            data: {validation: val.npz}
        targets:
          half:
            model: h
            format: onnx
            precision: fp16
            via: [onnx]
          half-warned:
            model: h
            format: onnx
            precision: fp16
            via: [onnx]
            acceptance: {on_fail: warn}
        """))
    proc = project.run("build", "-j", "1", "-k", check=False)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    out = proc.stdout + proc.stderr
    assert "first divergence from PyTorch at module 'gain'" in out, out
    assert "keep it in float32" in out
    shown = project.run("explain", "verify:half")
    explained = json.loads(shown.stdout)
    miss = explained["misses"][0]
    assert miss["localisation"]["first"] == "gain"
    assert any(line.startswith("gain") and "FIRST" in line for line in miss["table"]), miss["table"]
    assert any(line.startswith("fc1") and line.endswith("ok") for line in miss["table"]), miss["table"]
    # a miss the target only warns about is in the lock's record, and so in explain and the HTML report
    warned = json.loads(project.run("explain", "verify:half-warned").stdout)["misses"][0]
    assert warned["localisation"]["first"] == "gain" and any("FIRST" in line for line in warned["table"])
    from buildsys.report.html.cli import main as report

    assert report([str(root / "deploy.lock"), "-o", str(root / "report.html")]) == 0
    page = (root / "report.html").read_text()
    assert '<pre class="localisation">' in page and "FIRST" in page and "module &#x27;gain&#x27;" in page


def test_the_check_localises_only_a_miss(tmp_path: Path) -> None:
    """In the check step itself: a passing check pays nothing (no localisation), and the same ONNX file
    with one weight of `body.2` corrupted in place fails naming that module."""
    import onnx
    from onnx import numpy_helper

    from tests.helpers.models import make_model

    tiny = make_model(tmp_path / "m", "mlp")
    tiny.run("onnx-from-pytorch", tmp_path / "onnx")
    tiny.run("reference", tmp_path / "ref", extra={"source_format": "pytorch"})
    options = resolve_acceptance(Acceptance(), "fp32", tiny.model.outputs)
    extra = {"format": "onnx", "reference": str(tmp_path / "ref" / "reference.npz")}
    passed = tiny.run("check", tmp_path / "c1", input_path=tmp_path / "onnx" / "model.onnx", extra=extra, **options)
    assert passed["passed"] is True and "localisation" not in passed
    proto = onnx.load(str(tmp_path / "onnx" / "model.onnx"))
    node = next(n for n in proto.graph.node if n.name.startswith("/body/body.2/"))
    weight = next(t for t in proto.graph.initializer if t.name in node.input and len(t.dims) == 2)
    array = numpy_helper.to_array(weight).copy()
    array[0, :4] += 0.5
    weight.CopyFrom(numpy_helper.from_array(array, weight.name))
    (tmp_path / "bad").mkdir()
    onnx.save(proto, str(tmp_path / "bad" / "model.onnx"))
    failed = tiny.run("check", tmp_path / "c2", input_path=tmp_path / "bad" / "model.onnx", extra=extra, **options)
    assert failed["passed"] is False and failed["localisation"]["first"] == "body.2", failed["localisation"]
    assert any("first divergence from PyTorch at module 'body.2' (Linear" in f for f in failed["failures"])
    # a miss a repair answers next (the builder says which) is not localised: the repair measures each layer itself
    repair = "pytorch → onnx → onnx-int8 (repair keep-float)"
    deferred = tiny.run("check", tmp_path / "c3", input_path=tmp_path / "bad" / "model.onnx",
                        extra={**extra, "localise_deferred": repair}, **options)
    assert deferred["passed"] is False and "rows" not in deferred["localisation"]
    assert deferred["localisation"]["not_available"].startswith(f"localisation deferred: the repair route {repair}")
    report = json.loads((tmp_path / "c2" / "report.json").read_text())
    assert report["localisation"]["rows"][0]["module"] == "body.0" and report["localisation"]["rows"][0]["ok"]
