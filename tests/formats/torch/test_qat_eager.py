"""Eager-mode QAT sources (buildsys.formats.torch.qat): a digits CNN prepared with torch.ao.quantization's `prepare_qat` and
trained a few steps is recognised from its FakeQuantize modules, exported by the TorchScript ONNX exporter with its
fake quantization as QuantizeLinear/DequantizeLinear (learned scales), and lowered to ONNX int8 (ONNX Runtime) and
OpenVINO int8 (FakeQuantize, no NNCF) with no calibration data; both agree with its fake-quant outputs better than
post-training int8 of the same float weights. ExecuTorch int8 refuses it, saying to re-train with PT2E; a float
model without calibration data keeps the calibration error."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.conftest import TinyProject

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(any(importlib.util.find_spec(m) is None for m in ("sklearn", "openvino", "onnxruntime")),
                                 reason="needs scikit-learn (digits data), openvino and onnxruntime")]

EAGERNET = '''\
"""A small digits CNN, float or prepared for eager-mode quantization-aware training (torch.ao prepare_qat)."""
import torch
from torch import nn
from torch.ao import quantization as tq


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.quant, self.dequant = tq.QuantStub(), tq.DeQuantStub()
        self.conv1 = nn.Conv2d(1, 8, 3, padding=1)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(8, 16, 3, padding=1, stride=2)
        self.relu2 = nn.ReLU()
        self.head = nn.Linear(16 * 4 * 4, 10)

    def forward(self, image):
        x = self.relu1(self.conv1(self.quant(image)))
        x = self.relu2(self.conv2(x))
        return self.dequant(self.head(x.flatten(1)))


def float_net():
    return Net()


def eager_qat_net():
    """Net with conv+relu fused, prepared by prepare_qat with qnnpack's QAT qconfig (FakeQuantize modules)."""
    net = Net().train()
    net.qconfig = tq.get_default_qat_qconfig("qnnpack")
    return tq.prepare_qat(tq.fuse_modules_qat(net, [["conv1", "relu1"], ["conv2", "relu2"]]))
'''

MODEL = """\
  {name}:
    source: {{factory: "eagernet:{factory}", weights: {weights}}}
    inputs: [{{name: image, shape: [batch, 1, 8, 8], layout: NCHW}}]
    outputs: [{{name: logits, kind: scores}}]
    data: {data}
"""

TARGETS = """\
targets:
  qat-onnx: {model: qat, format: onnx, precision: int8}
  qat-openvino: {model: qat, format: openvino, precision: int8}
  ptq-onnx: {model: ptq, format: onnx, precision: int8, options: {onnx-int8: {method: static, per_channel: true}}}
  ptq-openvino: {model: ptq, format: openvino, precision: int8}
"""


def _load(path: Path, name: str) -> Any:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    code = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(code)
    return code


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> TinyProject:
    """The eager QAT model trained 120 Adam steps on digits (no calibration data), and its float weights as a
    plain model calibrated on 100 digits for post-training int8."""
    import torch
    from sklearn.datasets import load_digits

    root = tmp_path_factory.mktemp("qat-eager")
    (root / "eagernet.py").write_text(EAGERNET)
    digits = load_digits()
    images = (digits.images / 16.0).astype("float32")[:, None]
    labels = digits.target.astype("int64")
    torch.manual_seed(0)
    model = _load(root / "eagernet.py", "eagernet_for_training").eager_qat_net()
    x, y = torch.from_numpy(images[:1400]), torch.from_numpy(labels[:1400])
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    generator = torch.Generator().manual_seed(0)
    for _ in range(120):
        idx = torch.randint(0, len(x), (64,), generator=generator)
        loss = torch.nn.functional.cross_entropy(model(x[idx]), y[idx])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    state = model.state_dict()
    torch.save(state, root / "qat.pt")
    floats = {k: v for k, v in state.items() if k.split(".")[-1] in ("weight", "bias") and "fake_quant" not in k}
    _load(root / "eagernet.py", "eagernet_float").float_net().load_state_dict(floats)  # the same float weights
    torch.save(floats, root / "float.pt")
    np.savez(root / "val.npz", image=images[1500:1700], labels=labels[1500:1700])
    np.savez(root / "calib.npz", image=images[1400:1500])
    (root / "deploy.yaml").write_text(
        "models:\n" + MODEL.format(name="qat", factory="eager_qat_net", weights="qat.pt", data="{validation: val.npz}")
        + MODEL.format(name="ptq", factory="float_net", weights="float.pt",
                       data="{validation: val.npz, calibration: calib.npz}") + TARGETS)
    return TinyProject(root, root / "calls.txt")


@pytest.fixture(scope="module")
def built(project: TinyProject) -> dict[str, Any]:
    proc = project.run("build", "--keep-going", check=False)
    lock = json.loads((project.root / "deploy.lock").read_text())
    return {"stdout": proc.stdout + proc.stderr, "rc": proc.returncode, "lock": lock}


def _fake_quant_outputs(project: TinyProject, images: np.ndarray) -> np.ndarray:
    """The eager QAT model's fake-quant outputs with torch.ao's own API: trained state, eval, observers off."""
    import torch
    from torch.ao import quantization as tq

    model = _load(project.root / "eagernet.py", "eagernet_for_reference").eager_qat_net()
    model.load_state_dict(torch.load(project.root / "qat.pt", weights_only=True))
    model.eval().apply(tq.disable_observer)
    with torch.no_grad():
        return model(torch.from_numpy(images)).numpy()


def _artifact_outputs(project: TinyProject, target: str, fmt: str, images: np.ndarray) -> np.ndarray:
    from buildsys.config.load import load
    from buildsys.config.data import Batch
    from buildsys.formats import get_format, get_runtime

    cfg = load(project.config)
    model = cfg.project.models[cfg.project.targets[target].model]
    path = project.root / "artifacts" / target / get_format(fmt).filename
    session = get_runtime(get_format(fmt).runtime).load(path, model, project.root)  # type: ignore[arg-type]
    return session.run_all(Batch({"image": images}, None, "test"))[0]


def test_eager_qat_int8_targets_build_without_calibration_and_pass(project: TinyProject, built: dict[str, Any]) -> None:
    nodes = built["lock"]["nodes"]
    verdicts = {t: nodes.get(f"verify:{t}", {}).get("verdict") for t in ("qat-onnx", "qat-openvino", "ptq-onnx",
                                                                        "ptq-openvino")}
    assert verdicts == dict.fromkeys(verdicts, "passed"), built["stdout"]
    assert built["rc"] == 0, built["stdout"]
    record = json.dumps(json.loads((project.root / ".modelbuild" / "deploy.record.json").read_text()))
    assert "eager prepare_qat" in record and "fake-quant as QuantizeLinear/DequantizeLinear" in record
    assert "kept as it is, not re-quantized" in record  # onnx-int8 and openvino-int8 calibrated nothing


def test_onnx_holds_the_learned_scales_as_qdq(project: TinyProject, built: dict[str, Any]) -> None:
    """The QDQ ONNX carries the fake-quant modules' own scales (7 DequantizeLinear), its 3 weights stored in 8 bits
    (no float weight left); OpenVINO's IR holds the 4 activation ones as FakeQuantize and the weights as int8."""
    import onnx
    import openvino as ov
    import torch
    from onnx import numpy_helper

    model = onnx.load(str(project.root / "artifacts" / "qat-onnx" / "model.onnx"))
    initializers = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    constants = {n.output[0]: numpy_helper.to_array(n.attribute[0].t) for n in model.graph.node
                 if n.op_type == "Constant" and n.attribute and n.attribute[0].type == onnx.AttributeProto.TENSOR}
    scales = sorted(float(np.asarray({**constants, **initializers}[n.input[1]]).reshape(-1)[0])
                    for n in model.graph.node if n.op_type == "DequantizeLinear")
    stored = {k: v for k, v in initializers.items() if v.dtype in (np.int8, np.uint8) and v.ndim > 1}
    assert sorted(stored) == ["/conv1/weight_fake_quant/QuantizeLinear_output_0",
                              "/conv2/weight_fake_quant/QuantizeLinear_output_0",
                              "/head/weight_fake_quant/QuantizeLinear_output_0"]
    # learned weights past 7 bits are stored uint8 at zero point 128 (onnx.weights.unsigned_weights: the same values,
    # which ONNX Runtime's kernels do not saturate on a CPU without VNNI); the others stay int8
    unsigned = [n for n in model.graph.node if n.op_type == "DequantizeLinear" and n.input[0] in stored
                and stored[n.input[0]].dtype == np.uint8]
    assert unsigned and all((initializers[n.input[2]] == 128).all() for n in unsigned)
    assert not any(k.endswith(".weight") for k in initializers)  # the float weights are gone
    assert sum(n.op_type == "QuantizeLinear" for n in model.graph.node) == 4  # the activations
    state = torch.load(project.root / "qat.pt", weights_only=True)
    learned = sorted(float(v.reshape(-1)[0]) for k, v in state.items() if k.endswith("fake_quant.scale")
                     or k.endswith("activation_post_process.scale"))
    assert len(scales) == len(learned) == 7
    np.testing.assert_allclose(scales, learned, rtol=1e-6)
    ir = ov.Core().read_model(str(project.root / "artifacts" / "qat-openvino" / "model.xml"))
    assert sum(op.get_type_name() == "FakeQuantize" for op in ir.get_ops()) == 4
    assert sum(op.get_type_name() == "Constant" and str(op.get_element_type()) == "<Type: 'int8_t'>"
               for op in ir.get_ops()) == 3


def test_eager_qat_beats_post_training_int8_of_the_same_weights(project: TinyProject, built: dict[str, Any]) -> None:
    images = np.load(project.root / "val.npz")["image"]
    want = _fake_quant_outputs(project, images)
    errors = {}
    for target, fmt in (("qat-onnx", "onnx-int8"), ("ptq-onnx", "onnx-int8"),
                        ("qat-openvino", "openvino-int8"), ("ptq-openvino", "openvino-int8")):
        got = _artifact_outputs(project, target, fmt, images)
        errors[target] = (float(np.abs(got - want).mean()), float(np.mean(got.argmax(1) == want.argmax(1))))
    print("mean |artifact - fake-quant|, top-1 agreement:", errors)
    for fmt in ("onnx", "openvino"):
        qat, ptq = errors[f"qat-{fmt}"], errors[f"ptq-{fmt}"]
        assert qat[0] < ptq[0] / 5, (fmt, qat, ptq)
        assert qat[1] >= ptq[1], (fmt, qat, ptq)


def test_pt2e_formats_refuse_eager_qat_saying_why(project: TinyProject, built: dict[str, Any]) -> None:
    """ExecuTorch int8 needs a PT2E graph: the plan (which knows the model is eager QAT from the analysis the
    build made) refuses it without calibration data, saying to re-train with prepare_qat_pt2e."""
    project.edit("targets:\n", "targets:\n  qat-executorch: {model: qat, format: executorch, precision: int8}\n")
    try:
        proc = project.run("plan", check=False)
    finally:
        project.edit("  qat-executorch: {model: qat, format: executorch, precision: int8}\n", "")
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "ExecuTorch int8 needs calibration data" in proc.stderr
    assert "re-train it with torchao's prepare_qat_pt2e" in proc.stderr


def test_a_float_model_without_calibration_keeps_the_error(project: TinyProject, built: dict[str, Any]) -> None:
    """Analysed (plan --ops) and found to hold no fake-quant module, a float model's OpenVINO int8 target still
    needs calibration data: the plain error, nothing waived."""
    project.edit("targets:\n", MODEL.format(name="plain", factory="float_net", weights="float.pt",
                                            data="{validation: val.npz}")
                 + "targets:\n  plain-openvino: {model: plain, format: openvino, precision: int8}\n")
    proc = project.run("plan", "--ops", check=False)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "targets.plain-openvino (openvino-int8): NNCF post-training quantization needs calibration data" \
        in proc.stderr, proc.stderr
    assert "recognise it from its graph" not in proc.stderr  # analysed: not QAT, nothing left to find out
