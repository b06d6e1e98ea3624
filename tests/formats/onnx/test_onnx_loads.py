"""An ONNX file is loaded by ONNX Runtime before its step ends (formats/onnx/onnxfile._validate): a file the checker
passes whose shapes do not hold fails its step, and the other exporter answers, instead of a check that cannot run.

The model: patches of a series cut with `Tensor.unfold`, as a time-series transformer patchifies its input
(PatchTST); the legacy exporter's Unfold symbolic under a dynamic batch writes a shape that ONNX Runtime's shape
inference refuses ("Add: Incompatible dimensions"), though `onnx.checker` passes it.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from buildsys.storage.lock import Lock
from tests.conftest import TinyProject

pytestmark = pytest.mark.slow  # a build through both exporters

PATCHES = '''\
import torch
from torch import nn


class Patches(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.position = nn.Parameter(torch.randn(8, 8))
        self.head = nn.Linear(8, 4)

    def forward(self, series):  # [batch, 64 steps, 3 channels] -> [batch, 3, 8 patches, 4]
        patches = series.unfold(-2, 8, 8).transpose(-2, -3)
        return self.head(patches + self.position)


def build():
    return Patches()
'''


def test_a_file_onnx_runtime_cannot_load_fails_its_step_and_the_dynamo_exporter_answers(tmp_path: Path) -> None:
    (tmp_path / "patches.py").write_text(PATCHES)
    project = TinyProject(tmp_path, tmp_path / "calls.txt")
    project.write(textwrap.dedent("""\
        models:
          patches:
            source: {factory: patches:build}
            inputs: [{name: series, shape: [batch, 64, 3]}]
            outputs: [{name: y}]
        targets:
          server: {model: patches, format: onnx}
        """))
    proc = project.run("build", "-k", "-j", "1", check=False, timeout=900)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lock = Lock.read(tmp_path / "deploy.lock")
    [dropped] = lock.routes["server"]["dropped"]
    assert "ONNX Runtime cannot load the model the legacy exporter wrote" in dropped["reason"], dropped
    assert dropped["answers"] == [["pytorch", "onnx (switch onnx dynamo)"]]  # not the exporter that wrote it
    assert "Incompatible dimensions" in dropped["reason"]
    assert lock.targets["server"]["route"] == ["pytorch", "onnx (switch onnx dynamo)"]
    assert lock.nodes["verify:server"]["verdict"] == "passed"
