"""Op rewrites as routes, end to end through the `modelbuild` CLI: a converter refuses an op, the same route
with the rewrite that removes it is tried next, the artifact passes its numeric check against the original
PyTorch model, and the lock, explain, the summary and the report name the rewrite; a target can pin or
forbid rewrites; a no-op build runs nothing; a new version of a rewrite rebuilds what carries it. A refusal
of the spotter's stft is answered by the FFT family (`fft`, of which `stft` is a member a target can still
name), the recommender's embedding_bag by the scatter family (`scatter`, member `embedding-bag`).

Models (tiny, written into each project): a keyword spotter with a torch.stft log-mel frontend and a
recommender with nn.EmbeddingBag. Refusals met here (torch 2.13, coremltools 9.0, onnx2tf 1.28):
the legacy ONNX exporter ("STFT does not currently support complex types"), coremltools' trace frontend
on the spotter (a TypeError that names no op: matched through the traced graph's ops) and on the
recommender ("op 'embedding_bag'"), onnx2tf on the recommender's ONNX `Loop`.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from buildsys import rewrites
from buildsys.storage.lock import Lock

AUDIO = '''\
import math
import os

import torch
from torch import nn


def mel_filterbank(n_fft, n_mels, sample_rate):
    def mel(f):
        return 2595.0 * math.log10(1.0 + f / 700.0)
    freqs = torch.linspace(0, sample_rate / 2, n_fft // 2 + 1)
    points = 700.0 * (10 ** (torch.linspace(mel(0.0), mel(sample_rate / 2), n_mels + 2) / 2595.0) - 1.0)
    low, mid, high = points[:-2], points[1:-1], points[2:]
    up = (freqs[:, None] - low[None, :]) / (mid - low)[None, :]
    down = (high[None, :] - freqs[:, None]) / (high - mid)[None, :]
    return torch.clamp(torch.minimum(up, down), min=0.0)


class Spotter(nn.Module):
    """Waveform → torch.stft (hann, centred, reflect; complex) → power → log-mel → conv → 4 logits."""

    def __init__(self, n_fft=128, hop=64, n_mels=16):
        super().__init__()
        torch.manual_seed(0)
        self.n_fft, self.hop = n_fft, hop
        self.register_buffer("window", torch.hann_window(n_fft))
        self.register_buffer("mel", mel_filterbank(n_fft, n_mels, 8000))
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.fc = nn.Linear(4, 4)

    def forward(self, audio):
        spec = torch.stft(audio, self.n_fft, hop_length=self.hop, window=self.window, center=True,
                          pad_mode="reflect", return_complex=True)
        logmel = torch.log(torch.matmul(spec.abs().pow(2).transpose(1, 2), self.mel) + 1e-6)
        h = torch.relu(self.conv(logmel.unsqueeze(1)))
        return self.fc(h.mean(dim=(2, 3)))


def build():
    with open(os.path.join(os.path.dirname(__file__), "calls.txt"), "a") as f:
        f.write("x")
    return Spotter()
'''

RECSYS = '''\
import torch
from torch import nn


class Recommender(nn.Module):
    """Bags of item ids through nn.EmbeddingBag (sum) beside dense features, then an MLP."""

    def __init__(self, items=100, dim=8, dense=4):
        super().__init__()
        torch.manual_seed(0)
        self.bag = nn.EmbeddingBag(items, dim, mode="sum")
        self.dense = nn.Linear(dense, dim)
        self.mlp = nn.Sequential(nn.Linear(2 * dim, 16), nn.ReLU(), nn.Linear(16, 1))

    def forward(self, ids, features):
        pooled = self.bag(ids)
        return torch.sigmoid(self.mlp(torch.cat([pooled, torch.relu(self.dense(features))], dim=1)))


def build():
    return Recommender()
'''

MODELS = """\
models:
  spotter:
    source: {factory: audio:build}
    inputs: [{name: audio, shape: [batch, 1024]}]
    outputs: [{name: logits}]
  recsys:
    source: {factory: recsys:build}
    inputs: [{name: ids, shape: [batch, 5], dtype: int64}, {name: features, shape: [batch, 4]}]
    outputs: [{name: score}]
    data: {validation: rec.npz}
targets:
"""

#: The spotter's first route to ONNX is the legacy exporter, which refuses the complex STFT.
SERVER = "server: {model: spotter, format: onnx}\n"
#: The same, forbidding rewrites, on the one route that keeps the legacy exporter (dynamo: false).
STRICT = "strict: {model: spotter, format: onnx, rewrites: [], options: {onnx: {dynamo: false}}}\n"


class Project:
    def __init__(self, root: Path, targets: str):
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        (root / "audio.py").write_text(AUDIO)
        (root / "recsys.py").write_text(RECSYS)
        rng = np.random.default_rng(0)
        np.savez(root / "rec.npz", ids=rng.integers(0, 100, (8, 5)).astype("int64"),
                 features=rng.standard_normal((8, 4)).astype("float32"))
        (root / "deploy.yaml").write_text(MODELS + textwrap.indent(textwrap.dedent(targets), "  "))

    def run(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "buildsys", *args], cwd=self.root, capture_output=True, text=True,
                              timeout=900, env={**os.environ, "NO_COLOR": "1", "COLUMNS": "250"})

    def calls(self) -> int:
        path = self.root / "calls.txt"
        return len(path.read_text()) if path.exists() else 0

    def lock(self) -> Lock:
        return Lock.read(self.root / "deploy.lock")

    def check(self, target: str) -> dict:
        return self.lock().nodes[f"verify:{target}"]

    def max_abs(self, target: str) -> float:
        metrics = self.lock().nodes[f"verify:{target}"]["metrics"]
        return max(v["max_abs"]["observed"] for v in metrics["outputs"].values())


def test_stft_refused_by_the_legacy_onnx_exporter_takes_the_rewrite_route(tmp_path: Path) -> None:
    project = Project(tmp_path, SERVER + STRICT)
    proc = project.run("build", "server")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "STFT does not currently support complex types" in proc.stdout  # the refusal, as the exporter said it
    assert "server: made by pytorch → onnx (rewrite fft)" in proc.stdout
    assert "server: carries op rewrites fft" in proc.stdout

    lock = project.lock()
    assert lock.targets["server"]["route"] == ["pytorch", "onnx (rewrite fft)"]
    assert lock.targets["server"]["rewrites"] == ["fft"]
    [dropped] = lock.routes["server"]["dropped"]
    assert dropped["route"] == ["pytorch", "onnx"] and dropped["rewrites"] == ["fft"]
    node = lock.targets["server"]["node"]
    assert node.startswith("spotter/onnx~")  # a node of its own: the refused export keeps its name and key
    entry = lock.nodes[node]
    assert entry["facts"] == {"rewrites": ["fft"]}
    assert entry["components"]["rewrites"] == {"fft": rewrites.get("fft").version}
    assert entry["components"]["options"]["rewrites"] == ["fft"]
    assert "rewrites" not in lock.nodes.get("spotter/onnx", {}).get("components", {}).get("options", {})
    # Judged against the original model (complex STFT in PyTorch), in ONNX Runtime.
    assert project.check("server")["verdict"] == "passed" and project.max_abs("server") < 1e-5

    explained = json.loads(project.run("explain", "verify:server").stdout)
    assert explained["rewrites"] == ["fft"] and explained["route"] == ["pytorch", "onnx (rewrite fft)"]
    assert explained["candidate_routes"][:2] == [["pytorch", "onnx"], ["pytorch", "onnx (rewrite fft)"]]
    notes = json.loads(project.run("explain", node).stdout)["notes"]
    assert notes == ["op rewrites applied: fft (removes aten::stft; see docs/rewrites.md)"]
    assert project.run("report").returncode == 0
    report = (tmp_path / "artifacts/report/report.md").read_text()
    assert "- route: pytorch → onnx (rewrite fft)" in report and "- op rewrites: fft" in report

    # A no-op build runs nothing: not the refused export, not the factory.
    calls = project.calls()
    again = project.run("build", "server")
    assert again.returncode == 0 and "Nothing to do" in again.stdout and project.calls() == calls

    # Forbidding rewrites: the refused route fails, and the failure names the rewrite it did not try.
    strict = project.run("build", "strict")
    assert strict.returncode == 1
    [record] = project.lock().routes["strict"]["dropped"]
    assert "rewrites" not in record
    assert record["reason"].endswith("(rewrite fft would remove what was refused; not tried: the target sets "
                                      "rewrites: [])")
    assert "no route passes its check" in strict.stdout and "not tried: the target sets rewrites: []" in strict.stdout
    assert not (tmp_path / "artifacts/strict").exists()
    # ...and is not tried again while nothing it depends on changes.
    calls = project.calls()
    assert project.run("build", "strict").returncode == 1 and project.calls() == calls


def test_a_new_version_of_a_rewrite_rebuilds_what_carries_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import modelbuild
    from buildsys.rewrites import REGISTRY

    project = Project(tmp_path, SERVER)
    assert project.run("build").returncode == 0
    node = project.lock().targets["server"]["node"]
    loaded = REGISTRY._load()  # type: ignore[attr-defined]
    monkeypatch.setitem(loaded, "fft", dataclasses.replace(loaded["fft"], version=loaded["fft"].version + 1))
    plan = modelbuild.load(tmp_path / "deploy.yaml").plan()
    stale = {n.name: n.reasons for n in plan.nodes if n.state == "stale"}
    assert stale[node] == [f"rewrite fft version {loaded['fft'].version - 1}→{loaded['fft'].version}"]
    assert "spotter/onnx" not in stale and "spotter/reference" not in stale


def test_a_target_can_pin_a_rewrite_and_unknown_names_are_config_errors(tmp_path: Path) -> None:
    project = Project(tmp_path, "server: {model: spotter, format: onnx, rewrites: [stft]}\n")
    plan = json.loads(project.run("plan", "--json").stdout)
    assert plan["routes"]["server"] == ["pytorch", "onnx"]  # no label: the target's own options say it
    assert all(len(r) > 1 for r in plan["candidate_routes"]["server"])
    explained = json.loads(project.run("explain", "spotter/onnx").stdout)
    assert explained["components"]["rewrites"] == {"stft": 1}

    deploy = tmp_path / "deploy.yaml"
    deploy.write_text(deploy.read_text().replace("rewrites: [stft]", "rewrites: [sftf]"))
    bad = project.run("plan")
    assert bad.returncode == 2 and "deploy.yaml:" in bad.stderr and "targets.server.rewrites" in bad.stderr
    assert "no rewrite is named 'sftf'" in bad.stderr and "did you mean 'stft'" in bad.stderr
    deploy.write_text(MODELS + "  server: {model: spotter, format: onnx, options: {onnx: {rewrites: [stfft]}}}\n")
    bad = project.run("plan")
    assert bad.returncode == 2 and "targets.server.options.onnx.rewrites" in bad.stderr and "'stft'" in bad.stderr


@pytest.mark.slow
def test_coreml_and_onnx2tf_refusals_take_rewrite_routes(tmp_path: Path) -> None:
    """Core ML (the trace frontend) on the recommender and TFLite through onnx2tf on both: each first
    route is refused, each rewrite route passes its numeric check (Core ML's through the MIL reference
    interpreter off macOS, the stand-in its status names)."""
    project = Project(tmp_path, """\
      ios: {model: spotter, format: coreml}
      android: {model: spotter, format: tflite, routes: [[onnx, saved_model]]}
      rec-ios: {model: recsys, format: coreml}
      rec-android: {model: recsys, format: tflite, routes: [[onnx, saved_model]]}
    """)  # the TFLite targets list onnx2tf's route: for inputs without a channels-first layout litert-torch leads
    proc = project.run("build", "-k")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lock = project.lock()
    # The spotter's STFT on Core ML: coremltools converts it itself since its frontend's int() of a traced size is
    # folded (formats/coreml/frontend.py); the first route passes its check, no rewrite needed.
    assert "ios" not in lock.routes and lock.targets["ios"]["route"] == ["pytorch", "torchscript", "coreml"]
    assert project.check("ios")["verdict"] == "passed" and project.max_abs("ios") < 1e-5
    expected = {"android": ("spotter/onnx", ["pytorch", "onnx (rewrite fft)", "saved_model", "tflite"], "fft"),
                "rec-ios": ("recsys/coreml", ["pytorch", "torchscript (rewrite scatter)", "coreml"],
                            "scatter"),
                "rec-android": ("recsys/saved_model", ["pytorch", "onnx (rewrite scatter)", "saved_model", "tflite"],
                                "scatter")}
    for target, (refused_at, route, rewrite) in expected.items():
        [dropped] = lock.routes[target]["dropped"]
        assert dropped["node"] == refused_at and dropped["rewrites"] == [rewrite], (target, dropped)
        assert lock.targets[target]["route"] == route and lock.targets[target]["rewrites"] == [rewrite]
        assert project.check(target)["verdict"] == "passed" and project.max_abs(target) < 1e-5, target
        assert f"{target}: carries op rewrites {rewrite}" in proc.stdout
    assert "op 'embedding_bag'" in lock.routes["rec-ios"]["dropped"][0]["reason"]
    assert "Loop" in lock.routes["rec-android"]["dropped"][0]["reason"]
    again = project.run("build")
    assert again.returncode == 0 and "Nothing to do" in again.stdout
