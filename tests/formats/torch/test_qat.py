"""Quantization-aware-trained sources (buildsys.formats.torch.qat): a digits CNN trained a few steps with PT2E
`prepare_qat_pt2e` is recognised from its graph, referenced by its own fake-quant outputs, and lowered to
int8 formats with its learned parameters (no calibration: its deploy.yaml has no data.calibration), each checked
in its real runtime; its int8 artifacts agree with the fake-quant outputs better than post-training int8 of the
same float weights."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.conftest import TinyProject

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(importlib.util.find_spec("executorch") is None or importlib.util.find_spec("sklearn")
                                 is None, reason="needs the executorch extra and scikit-learn (digits data)")]

QATNET = '''\
"""A small digits CNN, float or prepared for quantization-aware training with PT2E (XNNPACKQuantizer)."""
import torch
from torch import nn


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 16, 3, padding=1, stride=2)
        self.head = nn.Linear(16 * 4 * 4, 10)

    def forward(self, image):
        x = torch.relu(self.conv1(image))
        x = torch.relu(self.conv2(x))
        return self.head(x.flatten(1))


def float_net():
    return Net()


def qat_net():
    """The graph prepare_qat_pt2e makes of Net: fake-quant modules around its convolutions and linear."""
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
        XNNPACKQuantizer, get_symmetric_quantization_config)
    from torchao.quantization.pt2e.quantize_pt2e import prepare_qat_pt2e

    example = (torch.zeros(2, 1, 8, 8),)
    program = torch.export.export(Net(), example, dynamic_shapes=({0: torch.export.Dim("batch")},))
    quantizer = XNNPACKQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True, is_qat=True))
    return prepare_qat_pt2e(program.module(), quantizer)
'''

DEPLOY = """\
models:
  {name}:
    source: {{factory: "qatnet:{factory}", weights: {weights}}}
    inputs: [{{name: image, shape: [batch, 1, 8, 8], layout: NCHW}}]
    outputs: [{{name: logits, kind: scores}}]
    data: {{validation: val.npz{calibration}}}
"""

TARGETS = """\
targets:
  qat-executorch: {model: qat, format: executorch, precision: int8}
  qat-onnx: {model: qat, format: onnx, precision: int8}
  qat-tflite: {model: qat, format: tflite, precision: int8}
  qat-openvino: {model: qat, format: openvino, precision: int8}
  ptq-executorch: {model: ptq, format: executorch, precision: int8}
  ptq-onnx: {model: ptq, format: onnx, precision: int8, options: {onnx-int8: {method: static, per_channel: true}}}
"""


def _train(module_file: Path, steps: int = 120) -> tuple[Any, Any]:
    """(the QAT-prepared module trained `steps` Adam steps on digits, the digits arrays): deterministic."""
    import torch
    from sklearn.datasets import load_digits

    spec = importlib.util.spec_from_file_location("qatnet_for_training", module_file)
    assert spec is not None and spec.loader is not None
    code = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(code)
    digits = load_digits()
    images = (digits.images / 16.0).astype("float32")[:, None]
    labels = digits.target.astype("int64")
    torch.manual_seed(0)
    model = code.qat_net()
    x, y = torch.from_numpy(images[:1400]), torch.from_numpy(labels[:1400])
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    generator = torch.Generator().manual_seed(0)
    for _ in range(steps):
        idx = torch.randint(0, len(x), (64,), generator=generator)
        loss = torch.nn.functional.cross_entropy(model(x[idx]), y[idx])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model, (images, labels)


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> TinyProject:
    """A project with the QAT model (factory + trained state) and the same float weights as a plain model."""
    import torch

    root = tmp_path_factory.mktemp("qat")
    (root / "qatnet.py").write_text(QATNET)
    model, (images, labels) = _train(root / "qatnet.py")
    state = model.state_dict()
    torch.save(state, root / "qat.pt")
    floats = {k: v for k, v in state.items() if k.split(".")[0] in ("conv1", "conv2", "head")}
    torch.save(floats, root / "float.pt")  # the QAT model's float weights, for post-training int8
    np.savez(root / "val.npz", image=images[1500:1700], labels=labels[1500:1700])
    np.savez(root / "calib.npz", image=images[1400:1500])
    # The QAT model has no calibration data: its int8 targets lower the learned scales (buildsys.formats.torch.qat)
    deploy = DEPLOY.format(name="qat", factory="qat_net", weights="qat.pt", calibration="") + \
        DEPLOY.format(name="ptq", factory="float_net", weights="float.pt",
                      calibration=", calibration: calib.npz").removeprefix("models:\n") + TARGETS
    (root / "deploy.yaml").write_text("models:\n" + deploy.removeprefix("models:\n"))
    return TinyProject(root, root / "calls.txt")


@pytest.fixture(scope="module")
def built(project: TinyProject) -> dict[str, Any]:
    proc = project.run("build", "--keep-going", check=False)
    lock = json.loads((project.root / "deploy.lock").read_text())
    return {"stdout": proc.stdout + proc.stderr, "rc": proc.returncode, "lock": lock}


def _fake_quant_outputs(project: TinyProject, images: np.ndarray) -> np.ndarray:
    """The QAT model's own fake-quant outputs, made here with torchao's API (not modelbuild's): the trained
    state loaded, eval behaviour, observers frozen, fake quantization on."""
    import torch
    from torchao.quantization.pt2e import move_exported_model_to_eval
    from torchao.quantization.pt2e.fake_quantize import FakeQuantizeBase

    spec = importlib.util.spec_from_file_location("qatnet_for_reference", project.root / "qatnet.py")
    assert spec is not None and spec.loader is not None
    code = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(code)
    model = code.qat_net()
    model.load_state_dict(torch.load(project.root / "qat.pt", weights_only=True))
    move_exported_model_to_eval(model)
    for sub in model.modules():
        if isinstance(sub, FakeQuantizeBase):
            sub.disable_observer()
    with torch.no_grad():
        return model(torch.from_numpy(images)).numpy()


def _artifact_outputs(project: TinyProject, target: str, fmt: str, images: np.ndarray) -> np.ndarray:
    """What the delivered artifact of `target` computes on `images`, in its real runtime."""
    from buildsys.config.load import load
    from buildsys.config.data import Batch
    from buildsys.formats import get_format, get_runtime

    cfg = load(project.config)
    model = cfg.project.models[cfg.project.targets[target].model]
    path = project.root / "artifacts" / target / get_format(fmt).filename
    session = get_runtime(get_format(fmt).runtime).load(path, model, project.root)  # type: ignore[arg-type]
    return session.run_all(Batch({"image": images}, None, "test"))[0]


def test_plain_plan_cannot_tell_and_says_how_to(project: TinyProject) -> None:
    """Before the op analysis, nothing torch-free says the model is QAT: a plain `plan` keeps the calibration
    error, saying that `plan --ops` / `build` recognise a QAT model from its graph."""
    proc = project.run("plan", check=False)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "needs calibration data" in proc.stderr and "`modelbuild plan --ops` or `build` recognise it" in proc.stderr


def test_qat_model_is_recognised_in_the_plan(project: TinyProject) -> None:
    out = project.run("plan", "--ops").stdout
    assert "qat: quantization-aware trained (" in out and "PT2E prepare_qat_pt2e" in out, out
    assert "ptq: quantization-aware" not in out


def test_qat_int8_targets_pass_against_the_fake_quant_reference(project: TinyProject, built: dict[str, Any]) -> None:
    verdicts = {t: built["lock"]["nodes"].get(f"verify:{t}", {}).get("verdict")
                for t in ("qat-executorch", "qat-onnx", "qat-tflite", "qat-openvino")}
    assert verdicts == dict.fromkeys(verdicts, "passed"), built["stdout"]
    assert built["rc"] == 0, built["stdout"]
    # TFLite's onnx2tf route could only re-calibrate: a recognised QAT model takes litert-torch's route first
    nodes = built["lock"]["nodes"]
    assert "qat/tflite-int8" in nodes, built["stdout"]
    assert "qat/saved_model" not in nodes and "route fallback" not in built["stdout"], built["stdout"]


def test_reference_is_the_fake_quant_outputs(project: TinyProject, built: dict[str, Any]) -> None:
    entry = built["lock"]["nodes"]["qat/reference"]
    digest = entry["files"][0][1]
    reference = np.load(project.root / ".modelbuild" / "cas" / digest[:2] / digest[2:])
    images = reference["input:image"]
    np.testing.assert_allclose(reference["output:logits"], _fake_quant_outputs(project, images), atol=1e-5)
    assert entry["components"]["step_version"] >= 2  # the QAT-aware reference (version 2 on), not the float one
    record = json.loads((project.root / ".modelbuild" / "deploy.record.json").read_text())
    assert "fake-quant outputs" in json.dumps(record), "the record says what the reference is"


def test_no_calibration_for_qat_targets(project: TinyProject, built: dict[str, Any]) -> None:
    """Each int8 step saw the learned parameters and calibrated nothing (the metrics are in the record)."""
    record = json.dumps(json.loads((project.root / ".modelbuild" / "deploy.record.json").read_text()))
    for node in ("qat/executorch-int8", "qat/tflite-int8", "qat/onnx-int8", "qat/openvino-int8"):
        assert node in record
    assert record.count("learned quantization parameters (no calibration)") >= 2  # ExecuTorch, litert-torch
    assert "kept as it is, not re-quantized" in record  # ONNX QDQ and OpenVINO FakeQuantize


def test_qat_beats_post_training_int8_of_the_same_weights(project: TinyProject, built: dict[str, Any]) -> None:
    """Against the QAT model's fake-quant outputs, its int8 artifacts agree better than post-training int8
    (calibrated on 100 digits) of the same float weights, in the same runtimes."""
    images = np.load(project.root / "val.npz")["image"]
    want = _fake_quant_outputs(project, images)
    errors = {}
    for target, fmt in (("qat-executorch", "executorch-int8"), ("ptq-executorch", "executorch-int8"),
                        ("qat-onnx", "onnx-int8"), ("ptq-onnx", "onnx-int8"),
                        ("qat-tflite", "tflite-int8"), ("qat-openvino", "openvino-int8")):
        got = _artifact_outputs(project, target, fmt, images)
        errors[target] = (float(np.abs(got - want).mean()), float(np.mean(got.argmax(1) == want.argmax(1))))
    print("mean |artifact - fake-quant|, top-1 agreement:", errors)
    for fmt in ("executorch", "onnx"):
        qat, ptq = errors[f"qat-{fmt}"], errors[f"ptq-{fmt}"]
        assert qat[0] < ptq[0] / 5, (fmt, qat, ptq)  # measured: ~10-30x closer
        assert qat[1] >= ptq[1], (fmt, qat, ptq)
    assert max(e[0] for t, e in errors.items() if t.startswith("qat-")) < min(errors["ptq-executorch"][0],
                                                                                errors["ptq-onnx"][0])


def test_eager_qat_is_recognised_exported_as_fake_quant_and_refused_for_pt2e_steps() -> None:
    """Eager-mode QAT (torch.ao.quantization.prepare_qat) is recognised; the ONNX export gets it with plain
    fake-quant calls (the same numbers); the steps that need a PT2E graph refuse it, saying what to do."""
    import torch

    from buildsys.errors import StepError
    from buildsys.formats.torch.qat import as_trained, quantized, recognise

    quantization = pytest.importorskip("torch.ao.quantization")
    net = torch.nn.Sequential(quantization.QuantStub(), torch.nn.Conv2d(1, 4, 3), torch.nn.ReLU(),
                              quantization.DeQuantStub())
    net.qconfig = quantization.get_default_qat_qconfig("qnnpack")
    prepared = quantization.prepare_qat(net.train())
    x = torch.randn(3, 1, 6, 6)
    prepared(x)  # one training step's observers: scales that are not the initial 1.0
    info = recognise(prepared)
    assert info is not None and info.flow == "eager" and info.fake_quant >= 2
    assert recognise(torch.nn.Conv2d(1, 4, 3)) is None  # a float module is not QAT
    with pytest.raises(StepError, match="eager-mode QAT has no PT2E graph: re-train it with torchao's prepare_qat_pt2e"):
        quantized(prepared, step="pt2-from-pytorch")
    exportable = quantized(prepared, step="onnx-from-pytorch", eager=True)
    assert recognise(exportable) is None  # no FakeQuantize module left: plain fake-quant calls
    with torch.no_grad():
        want = as_trained(prepared).eval()(x)
        assert torch.equal(exportable(x), want)
        assert not torch.allclose(torch.relu(net[1](x)), want, atol=1e-6)  # the float path differs: it quantizes
