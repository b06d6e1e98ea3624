"""Structured (channel) pruning, `structured_sparsity:` (buildsys.formats.torch.pruned, docs/mobile.md): whole
channels removed where the route loads the module, so the ONNX file is smaller in parameters and bytes; the
check still judges it against the dense PyTorch reference with the target's own acceptance, so a ratio the
model cannot afford fails the build; the lock records the ratio and the parameter counts."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from buildsys.storage.lock import Lock
from tests.conftest import REPO

pytest.importorskip("torch_pruning")

MODELS = """\
models:
  digits:
    source: {factory: "examples.digits.model:build", weights: examples/digits/weights.pt}
    inputs: [{name: image, shape: [batch, 1, 8, 8], dtype: float32, layout: NCHW}]
    outputs: [{name: logits, kind: scores}]
    data:
      example: examples/digits/data/example.npz
      calibration: examples/digits/data/calibration.npz
      validation: examples/digits/data/validation.npz
"""
# Loose, as pruning without fine-tuning needs (docs/mobile.md): the decisions must mostly hold; logits may move.
LOOSE = "{max_rel: 1.5, min_cosine: 0.3, min_top1_agreement: 0.85, max_accuracy_drop: 0.15}"
TARGETS = f"""\
targets:
  dense: {{model: digits, format: onnx, routes: [[]], acceptance: {LOOSE}}}
  pruned: {{model: digits, format: onnx, routes: [[]], structured_sparsity: 0.1, acceptance: {LOOSE}}}
  overpruned: {{model: digits, format: onnx, routes: [[]], structured_sparsity: 0.5, acceptance: {LOOSE}}}
"""


def project(root: Path, targets: str = TARGETS) -> Path:
    shutil.copytree(REPO / "examples" / "digits", root / "examples" / "digits",
                    ignore=shutil.ignore_patterns("__pycache__"))
    (root / "examples" / "__init__.py").write_text("")
    (root / "deploy.yaml").write_text(MODELS + targets)
    return root


def run(root: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "buildsys", *args], cwd=root, capture_output=True, text=True,
                          timeout=600, env={**os.environ, "NO_COLOR": "1", "COLUMNS": "250"})


def ort_p50_ms(path: Path, batch: np.ndarray, runs: int = 200) -> float:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    feeds = {"image": batch}
    for _ in range(20):
        session.run(None, feeds)
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        session.run(None, feeds)
        times.append(time.perf_counter() - start)
    return float(np.median(times) * 1e3)


def test_pruned_onnx_is_smaller_passes_a_loose_tolerance_and_a_too_high_ratio_fails(tmp_path: Path) -> None:
    root = project(tmp_path)
    proc = run(root, "build", "-j", "1", "--keep-going")
    assert proc.returncode != 0  # overpruned misses its tolerance
    lock = Lock.read(root / "deploy.lock")
    assert lock.nodes["verify:dense"]["verdict"] == "passed", proc.stdout + proc.stderr
    assert lock.nodes["verify:pruned"]["verdict"] == "passed", proc.stdout + proc.stderr
    # Half the channels: the decisions no longer hold against the dense reference, so nothing is delivered.
    out = proc.stdout + proc.stderr
    assert "overpruned" not in lock.targets and "verify:overpruned" not in lock.nodes
    assert "✗ verify:overpruned: acceptance not met" in out and "top1_agreement 0.3639 < 0.85" in out, out
    assert "localisation not available: the artifact is structurally pruned (structured_sparsity 0.5)" in out, out

    dense, pruned = (lock.targets[t]["node"] for t in ("dense", "pruned"))
    facts = lock.nodes[pruned]["facts"]["structured_pruning"]
    assert facts["ratio"] == 0.1 and facts["kept_whole"] == ["classifier.1"] and facts["layers"] == 3
    assert facts["params_dense"] == 15498 and facts["params_pruned"] < facts["params_dense"] * 0.85
    assert "facts" not in lock.nodes[dense] or "structured_pruning" not in lock.nodes[dense]["facts"]
    assert lock.nodes[pruned]["components"]["structured_pruning"] == 1
    assert "torch-pruning" in str(lock.nodes[pruned]["components"])
    # The delivered file: fewer parameters in the graph's initializers, fewer bytes, same signature.
    import onnx

    files = {t: root / "artifacts" / t / "model.onnx" for t in ("dense", "pruned")}
    models = {t: onnx.load(str(p)) for t, p in files.items()}
    params = {t: sum(int(np.prod(i.dims)) for i in m.graph.initializer) for t, m in models.items()}
    assert params["pruned"] < 0.85 * params["dense"]
    assert files["pruned"].stat().st_size < 0.85 * files["dense"].stat().st_size
    assert [o.name for o in models["pruned"].graph.output] == [o.name for o in models["dense"].graph.output]
    # One measured latency, reported, not asserted (machine speed): ONNX Runtime, one thread, batch 32.
    batch = np.load(root / "examples/digits/data/validation.npz")["image"][:32]
    print(f"\nONNX Runtime p50, batch 32: dense {ort_p50_ms(files['dense'], batch):.3f} ms, "
          f"pruned 0.1 {ort_p50_ms(files['pruned'], batch):.3f} ms; params {params['dense']} → {params['pruned']}, "
          f"bytes {files['dense'].stat().st_size} → {files['pruned'].stat().st_size}")


def test_unpruned_keys_are_unchanged_and_bad_ratios_are_config_errors(tmp_path: Path) -> None:
    from buildsys.config.load import load
    from buildsys.formats import get_step
    from buildsys.planning.expand import expand

    options = get_step("onnx-from-pytorch").Options
    assert "structured_sparsity" not in options.model_validate({}).model_dump(mode="json")  # keys stay as they were
    assert options.model_validate({"structured_sparsity": 0.3}).model_dump(mode="json")["structured_sparsity"] == 0.3

    root = project(tmp_path, "targets:\n  t: {model: digits, format: tflite, structured_sparsity: 0.3}\n")
    dag = expand(load(root / "deploy.yaml"))
    loading = [n for n in dag.order() if n.step in ("onnx-from-pytorch", "pt2-from-pytorch", "torchscript-from-pytorch")]
    assert loading and all(n.options.get("structured_sparsity") == 0.3 for n in loading)  # where the route loads it
    assert all("structured_sparsity" not in n.options for n in dag.order() if n not in loading)

    (root / "deploy.yaml").write_text(MODELS + "targets:\n  t: {model: digits, format: onnx, structured_sparsity: 1.0}\n")
    bad = run(root, "plan")
    assert bad.returncode == 2 and "deploy.yaml:" in bad.stderr and "structured_sparsity" in bad.stderr
    assert "less than 1" in bad.stderr


def test_prune_channels_keeps_every_output_layer_whole() -> None:
    """Two heads fed by one trunk: both heads keep their widths, the trunk loses a third of its channels."""
    import torch
    from torch import nn

    from buildsys.config.schema import Model
    from buildsys.config.data import Batch
    from buildsys.formats.torch.pruned import prune_channels

    class TwoHeads(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.trunk = nn.Sequential(nn.Conv2d(3, 12, 3), nn.BatchNorm2d(12), nn.ReLU(), nn.Conv2d(12, 12, 3),
                                       nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
            self.scores = nn.Linear(12, 5)
            self.box = nn.Linear(12, 4)

        def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
            h = self.trunk(x)
            return {"box": self.box(h), "scores": self.scores(h)}

    torch.manual_seed(0)
    net = TwoHeads().eval()
    model = Model.model_validate({"source": {"factory": "x:y"}, "inputs": [{"name": "x", "shape": ["batch", 3, 8, 8]}],
                                  "outputs": [{"name": "scores", "kind": "scores"}, {"name": "box"}]})
    batch = Batch({"x": np.random.default_rng(0).standard_normal((2, 3, 8, 8)).astype("float32")}, None, "test")
    record = prune_channels(net, model, batch, 1 / 3)
    assert record["kept_whole"] == ["box", "scores"]
    assert net.trunk[0].out_channels == 8 and net.trunk[3].out_channels == 8 and net.scores.in_features == 8
    assert net.scores.out_features == 5 and net.box.out_features == 4
    assert record["params_pruned"] == sum(p.numel() for p in net.parameters()) < record["params_dense"]
