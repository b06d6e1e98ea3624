"""The one keep-float search on the formats that had no repair of their own (docs/repair.md), end to end through the
`modelbuild` CLI on models written for it: an OpenVINO int8 target (NNCF's `ignored_scope`) and a Core ML fp16
target (coremltools' `op_selector`, judged by the MIL reference interpreter) that miss their check at default
options, pass after the search keeps their most sensitive layers at higher precision, record the kept layers
in deploy.lock, and are answered by a no-op build that does not search again. Real converters and runtimes.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from buildsys.storage.lock import Lock

MODELS = '''\
import os

import torch
from torch import nn


def _count():
    with open(os.path.join(os.path.dirname(__file__), "calls.txt"), "a") as f:
        f.write("x")


class Outlier(nn.Module):
    """An MLP whose classifier reads its hidden features beside one outlier channel of magnitude ~1000 that it
    ignores (weight 0): one per-tensor int8 range for the classifier's input leaves the features no levels."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.fc1 = nn.Linear(16, 32)
        self.head = nn.Linear(33, 10)
        with torch.no_grad():
            self.head.weight[:, 32] = 0.0

    def forward(self, x):
        h = torch.relu(self.fc1(x))
        return self.head(torch.cat([h, 1000.0 * (1.0 + h[:, :1])], dim=1))


class RmsOverflow(nn.Module):
    """An RMS normalisation of features of magnitude ~300: their squares (~1e5) overflow float16 (65504), so a
    float16 program divides by infinity and the normalised features vanish. Kept in float32, the squares,
    their mean and its root are fine, and everything else computes in float16."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.fc1 = nn.Linear(16, 32)
        self.head = nn.Linear(32, 8)
        with torch.no_grad():
            self.fc1.weight.mul_(300.0)

    def forward(self, x):
        h = self.fc1(x)
        return self.head(h / torch.sqrt((h * h).mean(dim=-1, keepdim=True) + 1e-6))


def outlier():
    _count()
    return Outlier()


def rms():
    _count()
    return RmsOverflow()
'''

DEPLOY = """\
models:
  mlp:
    source: {factory: nets:outlier}
    inputs: [{name: x, shape: [batch, 16]}]
    outputs: [{name: logits, kind: scores}]
    data: {calibration: cal.npz, validation: val.npz}
  rms:
    source: {factory: nets:rms}
    inputs: [{name: x, shape: [batch, 16]}]
    outputs: [{name: y, kind: values}]
    data: {calibration: cal.npz, validation: val.npz}
targets:
  # the classifier the repair keeps float is 39 % of this tiny MLP's weights: the target accepts that share
  intel: {model: mlp, format: openvino, precision: int8, repair: [keep-float], options: {onnx: {dynamo: false}},
          acceptance: {min_quantized_share: 0.5}}
  ios: {model: rms, format: coreml, precision: fp16}
"""


class Project:
    def __init__(self, root: Path):
        self.root = root
        (root / "nets.py").write_text(MODELS)
        np.savez(root / "cal.npz", x=np.random.default_rng(0).standard_normal((48, 16)).astype("float32"))
        np.savez(root / "val.npz", x=np.random.default_rng(1).standard_normal((48, 16)).astype("float32"))
        (root / "deploy.yaml").write_text(textwrap.dedent(DEPLOY))

    def run(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "buildsys", *args], cwd=self.root, capture_output=True, text=True,
                              timeout=1200, env={**os.environ, "NO_COLOR": "1", "COLUMNS": "250"})

    def calls(self) -> int:
        path = self.root / "calls.txt"
        return len(path.read_text()) if path.exists() else 0

    def lock(self) -> Lock:
        return Lock.read(self.root / "deploy.lock")


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Project:
    return Project(tmp_path_factory.mktemp("repair-formats"))


def _repaired(project: Project, target: str, last: str) -> dict:
    """Build `target`: the default route misses, its keep-float recipe passes; returns the committed record."""
    proc = project.run("build", target, "-j", "1")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lock = project.lock()
    assert lock.targets[target]["route"][-1] == f"{last} (repair keep-float)"
    [dropped] = lock.routes[target]["dropped"]
    assert dropped["route"][-1] == last and dropped["repair"] is True  # the default options missed
    repair = lock.nodes[lock.targets[target]["node"]]["facts"]["repair"]
    assert repair["kept_float"] and repair["trials"][-1]["keep_float"] == repair["kept_float"]
    assert repair["baseline"]["passed"] is False and repair["trials"][-1]["passed"] is True
    assert f"{target}: accuracy repair keep-float: kept {len(repair['kept_float'])} layer(s) in float" in proc.stdout
    # A no-op build: no factory call, no search.
    calls = project.calls()
    again = project.run("build", target, "-j", "1")
    assert again.returncode == 0 and "Nothing to do" in again.stdout and project.calls() == calls
    return repair


@pytest.mark.slow
def test_openvino_int8_misses_and_keep_float_passes(project: Project) -> None:
    pytest.importorskip("nncf")
    repair = _repaired(project, "intel", "openvino-int8")
    assert repair["reduced"] == "int8"
    # The classifier (NNCF quantizes its input: the concat with the outlier) is what stays float.
    assert any("head" in name for name in repair["kept_float"]), repair
    lock = project.lock()
    check = lock.nodes["verify:intel"]["metrics"]["outputs"]["logits"]
    assert check["top1_agreement"]["observed"] >= 0.9
    # every weight counts, the kept classifier too: the check records the share the target accepted
    weights = lock.nodes["verify:intel"]["metrics"]["quantized_weights"]
    assert 0.5 <= weights["observed"] < 0.75 and weights["ok"] is True
    assert lock.routes["intel"]["dropped"][0]["observed"]["logits"]["top1_agreement"] < 0.9


@pytest.mark.slow
def test_coreml_fp16_misses_and_keep_float_passes(project: Project) -> None:
    pytest.importorskip("coremltools")
    repair = _repaired(project, "ios", "coreml-fp16")
    assert repair["reduced"] == "fp16"
    lock = project.lock()
    dropped = lock.routes["ios"]["dropped"][0]
    # The all-float16 program: the squares overflow (the interpreter names the op), the output is lost.
    assert "fp16 overflow at mul" in dropped["reason"] and dropped["observed"]["y"]["cosine"] < 0.999
    # Kept in float32: the square and its mean (each reduced alone overflows); not the layers around them.
    assert len(repair["kept_float"]) == 2 and {n for n, _ in repair["sensitivity"][:2]} == set(repair["kept_float"])
    check = lock.nodes["verify:ios"]["metrics"]["outputs"]["y"]
    assert check["max_rel"]["ok"] is True and check["cosine"]["ok"] is True
    # the ops kept float32 hold no weight: every weight of the package is float16, judged against the fp16 floor
    weights = lock.nodes["verify:ios"]["metrics"]["quantized_weights"]
    assert weights["asked"] == "fp16" and weights["observed"] == 1.0 and weights["allowed"] == 0.75 and weights["ok"]

