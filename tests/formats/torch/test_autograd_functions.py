"""Custom autograd functions (formats/torch/autograd.py): traced as their forward's ops, so TorchScript saves them and
Core ML converts them; on a model written here, in both styles of function (a forward taking ctx, and one with its
own setup_context)."""

from __future__ import annotations

import io
import textwrap
from pathlib import Path

import pytest

from buildsys.storage.lock import Lock
from tests.conftest import TinyProject

#: An edge classifier with a memory-efficient Swish (saves its input for a hand-written backward, as
#: EfficientNet-PyTorch's does) and a straight-through rounding of its features (the new-style function).
GATED = '''\
import torch
from torch import nn


class EfficientSwish(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x * torch.sigmoid(x)

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        s = torch.sigmoid(x)
        return grad * s * (1 + x * (1 - s))


class StraightThroughRound(torch.autograd.Function):
    @staticmethod
    def forward(x, scale):
        return torch.round(x * scale) / scale

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.scale = inputs[1]

    @staticmethod
    def backward(ctx, grad):
        return grad, None


class GatedClassifier(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.head = nn.Linear(8, 4)

    def forward(self, image):
        features = EfficientSwish.apply(self.conv(image)).mean(dim=(2, 3))
        return self.head(StraightThroughRound.apply(features, 64.0))


def build():
    return GatedClassifier()
'''


def _module(tmp_path: Path):
    import importlib.util

    (tmp_path / "gated.py").write_text(GATED)
    spec = importlib.util.spec_from_file_location("gated_model", tmp_path / "gated.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.build().eval()


def test_a_trace_records_the_functions_ops_and_saves(tmp_path: Path) -> None:
    import torch

    from buildsys.formats.torch.autograd import autograd_functions_inlined

    model, image = _module(tmp_path), torch.randn(2, 3, 8, 8)
    with pytest.raises(RuntimeError, match="Could not export Python function call"):  # what it answers
        torch.jit.save(torch.jit.trace(model, (image,)), io.BytesIO())
    apply = torch.autograd.Function.__dict__["apply"]
    with autograd_functions_inlined():
        traced = torch.jit.trace(model, (image,))
    assert torch.autograd.Function.__dict__["apply"] is apply  # restored
    kinds = {node.kind() for node in traced.inlined_graph.nodes()}
    assert {"aten::sigmoid", "aten::round"} <= kinds and "prim::PythonOp" not in kinds
    buffer = io.BytesIO()
    torch.jit.save(traced, buffer)
    buffer.seek(0)
    loaded, other = torch.jit.load(buffer), torch.randn(3, 3, 8, 8)
    assert torch.equal(loaded(other), model(other))
    with torch.enable_grad():  # training still runs the function's own backward
        x = torch.randn(2, 3, 8, 8, requires_grad=True)
        model(x).sum().backward()
        assert x.grad is not None


def test_restored_when_the_trace_fails(tmp_path: Path) -> None:
    import torch

    from buildsys.formats.torch.autograd import autograd_functions_inlined

    apply = torch.autograd.Function.__dict__["apply"]
    with pytest.raises(ValueError), autograd_functions_inlined():
        raise ValueError("a trace that fails")
    assert torch.autograd.Function.__dict__["apply"] is apply


@pytest.mark.slow
def test_a_model_with_custom_functions_reaches_torchscript_and_core_ml(tmp_path: Path) -> None:
    """Both targets go through the TorchScript trace (the ios one is pinned to it): each verifies against the
    eager model in its runtime (libtorch's TorchScript interpreter; Core ML by the MIL reference)."""
    (tmp_path / "gated.py").write_text(GATED)
    project = TinyProject(tmp_path, tmp_path / "calls.txt")
    project.write("models:\n  model:\n    source: {factory: gated:build}\n"
                  "    inputs: [{name: image, shape: [batch, 3, 16, 16]}]\n    outputs: [{name: logits}]\n"
                  "targets:\n" + textwrap.indent("mobile: {model: model, format: torchscript}\n"
                                                 "ios: {model: model, format: coreml, routes: [[torchscript]]}\n", "  "))
    proc = project.run("build", "-k", "-j", "1", check=False, timeout=1200)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lock = Lock.read(project.root / "deploy.lock")
    assert lock.targets["ios"]["route"] == ["pytorch", "torchscript", "coreml"]
    for target in ("mobile", "ios"):
        assert lock.nodes[f"verify:{target}"]["verdict"].startswith("passed"), lock.nodes[f"verify:{target}"]
