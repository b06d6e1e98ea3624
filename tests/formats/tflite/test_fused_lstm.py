"""Native kernels before rewrites: a Conv1d + LSTM sensor model reaches TFLite as one fused
UNIDIRECTIONAL_SEQUENCE_LSTM (onnx2tf's LSTM as a tf_keras layer: formats/tflite/recurrent.py) on the first
route tried, ahead of litert-torch, which writes the LSTM out step by step; where the fused kernel is not
available (a bidirectional LSTM) or a target turns it off, the unrolled route still answers. The fp16 target
reads the guide's window at a static batch ([1, frames, 9]). Real onnx2tf, TensorFlow's converter and LiteRT."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from buildsys.storage.lock import Lock

pytestmark = pytest.mark.slow
pytest.importorskip("onnx2tf")
pytest.importorskip("ai_edge_litert")

SENSOR = '''\
import torch
from torch import nn


class Sensor(nn.Module):
    """An IMU window of 9 channels (the deployment guide's 27 k-parameter model, which reads 90 frames): a Conv1d
    front end, an LSTM over the frames, the last state classified."""

    def __init__(self, bidirectional=False):
        super().__init__()
        self.conv = nn.Conv1d(9, 32, 5, padding=2)
        self.lstm = nn.LSTM(32, 64, batch_first=True, bidirectional=bidirectional)
        self.fc = nn.Linear(128 if bidirectional else 64, 4)

    def forward(self, window):
        x = torch.relu(self.conv(window.transpose(1, 2))).transpose(1, 2)
        out, _ = self.lstm(x)
        return self.fc(out[:, -1])


def build():
    torch.manual_seed(0)
    return Sensor().eval()


def build_bidirectional():
    torch.manual_seed(0)
    return Sensor(bidirectional=True).eval()
'''

DEPLOY = """\
models:
  sensor:
    source: {factory: "sensor:build"}
    inputs: [{name: window, shape: [batch, %(frames)d, 9]}]
    outputs: [{name: logits, kind: scores}]
    data: {validation: val.npz}
  window:
    source: {factory: "sensor:build"}
    inputs: [{name: window, shape: [1, %(frames)d, 9]}]
    outputs: [{name: logits, kind: scores}]
    data: {validation: val.npz}
  both-ways:
    source: {factory: "sensor:build_bidirectional"}
    inputs: [{name: window, shape: [batch, %(frames)d, 9]}]
    outputs: [{name: logits, kind: scores}]
    data: {validation: val.npz}
targets:
  fused: {model: sensor, format: tflite}
  fused-fp16: {model: window, format: tflite, precision: fp16}
  unrolled:
    model: sensor
    format: tflite
    routes: [[onnx, saved_model]]
    options: {saved_model: {enable_rnn_unroll: true}}
  bidirectional: {model: both-ways, format: tflite, routes: [[onnx, saved_model]]}
"""

FUSED_ROUTE = ["pytorch", "onnx", "saved_model", "tflite"]
#: Frames per window: fewer than the guide's 90, since the unrolled routes' graphs (and their conversion time) grow
#: with them and nothing fused does; enough that an unrolled graph is plainly not the fused one.
FRAMES = 24


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, subprocess.CompletedProcess]:
    root = tmp_path_factory.mktemp("fused-lstm")
    (root / "sensor.py").write_text(SENSOR)
    np.savez(root / "val.npz", window=np.random.default_rng(0).standard_normal((32, FRAMES, 9)).astype("float32"))
    (root / "deploy.yaml").write_text(textwrap.dedent(DEPLOY) % {"frames": FRAMES})
    proc = subprocess.run([sys.executable, "-m", "buildsys", "build", "-j", "2"], cwd=root, capture_output=True,
                          text=True, timeout=1200, env={**os.environ, "NO_COLOR": "1", "COLUMNS": "250",
                                                         "MODELBUILD_OP_COVERAGE": "1"})  # the order needs the ops
    return root, proc


def _ops(path: Path) -> Counter:
    from ai_edge_litert.interpreter import Interpreter

    return Counter(d["op_name"] for d in Interpreter(model_path=str(path))._get_ops_details())


def test_the_first_route_keeps_the_lstm_in_tflites_fused_kernel(built: tuple[Path, subprocess.CompletedProcess]) -> None:
    root, proc = built
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lock = Lock.read(root / "deploy.lock")
    plan = json.loads(subprocess.run([sys.executable, "-m", "buildsys", "plan", "--json"], cwd=root, capture_output=True,
                                     text=True, timeout=300, env={**os.environ, "MODELBUILD_OP_COVERAGE": "1"}).stdout)
    # litert-torch's route writes the LSTM out frame by frame: it goes after every onnx2tf route
    assert plan["candidate_routes"]["fused"][0] == FUSED_ROUTE
    assert plan["candidate_routes"]["fused"][-1] == ["pytorch", "pt2", "tflite"]
    parameters = 32 * 9 * 5 + 32 + 4 * 64 * (32 + 64) + 8 * 64 + 64 * 4 + 4  # 26,820: the guide's sensor model
    for target, width in (("fused", 4), ("fused-fp16", 2)):
        assert lock.targets[target]["route"][:3] == FUSED_ROUTE[:3] and target not in lock.routes, target
        ops = _ops(root / "artifacts" / target / "model.tflite")
        assert ops["UNIDIRECTIONAL_SEQUENCE_LSTM"] == 1 and sum(ops.values()) < 30, (target, ops)
        size = (root / "artifacts" / target / "model.tflite").stat().st_size
        assert size <= 1.3 * parameters * width, (target, size, parameters * width)
        assert lock.nodes[f"verify:{target}"]["verdict"] == "passed"
    saved_model = {}
    for target in ("fused", "fused-fp16"):
        [upstream] = lock.nodes[lock.targets[target]["node"]]["components"]["inputs"]
        saved_model[target] = lock.nodes[upstream.removeprefix("upstream ")]["metrics"]  # what the artifact came from
        assert saved_model[target]["fused_lstm"] and saved_model[target]["static_batch"] == 1
    # the guide's window, [1, frames, 9]: the exporter's zero initial state, expanded to a batch that is static,
    # is folded to constants before onnx2tf (which refused to compute it: "Output tensors of a Functional model")
    assert saved_model["fused-fp16"]["static_shape_nodes_folded"] > 0
    assert "static_shape_nodes_folded" not in saved_model["fused"]  # a dynamic batch: nothing to fold
    # the dynamic batch asked was fixed at 1 for the fused kernel: the row says so; the static window asked for 1
    caveats = {t: [c["what"] for c in lock.nodes[f"verify:{t}"]["components"].get("caveats") or []]
               for t in ("fused", "fused-fp16")}
    assert caveats == {"fused": ["batch fixed at 1"], "fused-fp16": []}, caveats
    weights = lock.nodes[lock.targets["fused-fp16"]["node"]]["metrics"]["quantized_weights"]
    assert weights["asked"] == "fp16" and weights["share"] == 1.0 and weights["size_ratio"] <= 1.0, weights


def test_the_unrolled_route_answers_where_the_fused_kernel_is_not_taken(
        built: tuple[Path, subprocess.CompletedProcess]) -> None:
    root, proc = built
    lock = Lock.read(root / "deploy.lock")
    # turned off by the target: onnx2tf's own cell, unrolled over the frames; verified all the same
    unrolled = _ops(root / "artifacts/unrolled/model.tflite")
    assert "UNIDIRECTIONAL_SEQUENCE_LSTM" not in unrolled and sum(unrolled.values()) > 8 * FRAMES, unrolled
    assert lock.nodes["verify:unrolled"]["verdict"] == "passed"
    # a bidirectional LSTM has no fused form here: onnx2tf refuses its plain route, and a route that writes the
    # recurrence out answers the refusal (the recurrent rewrite, or onnx2tf's unrolling)
    [dropped] = lock.routes["bidirectional"]["dropped"]
    assert dropped["route"] == FUSED_ROUTE, dropped
    route = " ".join(lock.targets["bidirectional"]["route"])
    assert "rewrite recurrent" in route or "rnn-unroll" in route, route
    assert "UNIDIRECTIONAL_SEQUENCE_LSTM" not in _ops(root / "artifacts/bidirectional/model.tflite")
    assert lock.nodes["verify:bidirectional"]["verdict"] == "passed"
