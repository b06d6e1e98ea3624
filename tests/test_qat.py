"""Quantization-aware-trained sources (buildsys.qat): a digits CNN trained a few steps with PT2E
`prepare_qat_pt2e` is recognised from its graph, referenced by its own fake-quant outputs, and lowered to
int8 formats with its learned parameters (no calibration), each checked in its real runtime; its int8
artifacts agree with the fake-quant outputs better than post-training int8 of the same float weights."""

from __future__ import annotations

import importlib.util
import json
import textwrap
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
    data: {{validation: val.npz, calibration: calib.npz}}
"""

TARGETS = """\
targets:
  qat-executorch: {model: qat, format: executorch, precision: int8}
  qat-onnx: {model: qat, format: onnx, precision: int8}
  qat-tflite: {model: qat, format: tflite, precision: int8, via: [pt2]}
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
    deploy = DEPLOY.format(name="qat", factory="qat_net", weights="qat.pt") + \
        DEPLOY.format(name="ptq", factory="float_net", weights="float.pt").removeprefix("models:\n") + TARGETS
    (root / "deploy.yaml").write_text("models:\n" + deploy.removeprefix("models:\n"))
    return TinyProject(root, root / "calls.txt")


@pytest.fixture(scope="module")
def built(project: TinyProject) -> dict[str, Any]:
    proc = project.run("build", "--keep-going", check=False)
    lock = json.loads((project.root / "deploy.lock").read_text())
    return {"stdout": proc.stdout + proc.stderr, "rc": proc.returncode, "lock": lock}


def _record(project: TinyProject) -> dict[str, Any]:
    return json.loads(project.run("explain", "--json", check=False).stdout or "{}")


def test_qat_model_is_recognised_in_the_plan(project: TinyProject) -> None:
    out = project.run("plan", "--ops").stdout
    assert "qat: quantization-aware trained (" in out and "PT2E prepare_qat_pt2e" in out, out
    assert "ptq: quantization-aware" not in out


def test_qat_int8_targets_pass_against_the_fake_quant_reference(project: TinyProject, built: dict[str, Any]) -> None:
    verdicts = {t: built["lock"]["nodes"].get(f"verify:{t}", {}).get("verdict")
                for t in ("qat-executorch", "qat-onnx", "qat-tflite", "qat-openvino")}
    assert verdicts == dict.fromkeys(verdicts, "passed"), built["stdout"]
