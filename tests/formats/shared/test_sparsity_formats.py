"""`sparsity:` on TFLite and OpenVINO (docs/mobile.md), built through the CLI on examples/digits (a real trained
CNN): a pruned target passes its acceptance with the ratio and the measured sparsity recorded, a ratio too high
misses the same acceptance, `auto` takes the highest ratio that holds on the validation set and a no-op build
does not search again; TFLite stores the pruned weights sparse (smaller file, still run by the interpreter),
OpenVINO's IR stores them dense (same size, smaller only compressed); bad options fail in the planner."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zlib
from pathlib import Path

import pytest

from buildsys.storage.lock import Lock
from tests.conftest import REPO

pytest.importorskip("tensorflow")
pytest.importorskip("openvino")

MODEL = """\
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
#: What a pruned digits target accepts: decisions kept, elementwise error loose (pruning is not rounding).
LOOSE = "{max_rel: 0.5, min_cosine: 0.7, max_accuracy_drop: 0.02, min_top1_agreement: 0.97}"
DEPLOY = MODEL + f"""\
targets:
  tfl:        {{model: digits, format: tflite, precision: fp32, via: [onnx]}}
  tfl-half:   {{model: digits, format: tflite, precision: fp32, via: [onnx], acceptance: {LOOSE},
               options: {{tflite: {{sparsity: 0.5}}}}}}
  tfl-most:   {{model: digits, format: tflite, precision: fp32, via: [onnx], acceptance: {LOOSE},
               options: {{tflite: {{sparsity: 0.9}}}}}}
  tfl-auto:   {{model: digits, format: tflite, precision: fp16, via: [onnx], acceptance: {LOOSE},
               options: {{tflite-fp16: {{sparsity: auto}}}}}}
  ov:         {{model: digits, format: openvino, precision: fp32, via: [onnx]}}
  ov-half:    {{model: digits, format: openvino, precision: fp32, via: [onnx], acceptance: {LOOSE},
               options: {{openvino: {{sparsity: 0.5}}}}}}
  ov-most:    {{model: digits, format: openvino, precision: fp32, via: [onnx], acceptance: {LOOSE},
               options: {{openvino: {{sparsity: 0.9}}}}}}
  ov-auto:    {{model: digits, format: openvino, precision: fp16, via: [onnx], acceptance: {LOOSE},
               options: {{openvino-fp16: {{sparsity: auto}}}}}}
"""


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("sparsity-formats")
    shutil.copytree(REPO / "examples" / "digits", root / "examples" / "digits",
                    ignore=shutil.ignore_patterns("__pycache__"))
    (root / "examples" / "__init__.py").write_text("")
    (root / "deploy.yaml").write_text(DEPLOY)
    return root


def run(root: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "buildsys", *args], cwd=root, capture_output=True, text=True,
                          timeout=900, env={**os.environ, "NO_COLOR": "1", "COLUMNS": "250"})


def project_node(root: Path, target: str) -> str:
    return Lock.read(root / "deploy.lock").targets[target]["node"]


def node(root: Path, target: str) -> dict:
    return Lock.read(root / "deploy.lock").nodes[project_node(root, target)]


@pytest.mark.slow  # onnx2tf's SavedModel (~10 s), two TFLite and two OpenVINO conversions, four checks
def test_pruned_tflite_and_openvino_pass_their_tolerance_with_the_measured_sparsity_recorded(project: Path) -> None:
    proc = run(project, "build", "-j", "1", "tfl", "tfl-half", "ov", "ov-half")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    dense, half = node(project, "tfl")["metrics"], node(project, "tfl-half")["metrics"]
    assert half["sparsity"] == 0.5 and abs(half["measured_sparsity"] - 0.5) < 0.01
    # Default weight_threshold 2048: the two larger convolutions of digits (4,608 and 9,216 weights).
    assert half["pruned_tensors"] == 2 and half["sparse_tensors"] == 2
    # Stored sparse: the file shrinks, and the LiteRT interpreter runs it (the check above passed in it).
    assert half["bytes"] < 0.8 * dense["bytes"], (half["bytes"], dense["bytes"])
    assert (project / "artifacts/tfl-half/model.tflite").stat().st_size == half["bytes"]

    dense_ir, half_ir = node(project, "ov")["metrics"], node(project, "ov-half")["metrics"]
    assert half_ir["sparsity"] == 0.5 and abs(half_ir["measured_sparsity"] - 0.5) < 0.01
    assert half_ir["pruned_tensors"] == 2
    # The IR stores the zeros: model.bin is exactly as large; only its deflated copy is smaller.
    assert half_ir["weights_bytes"] == dense_ir["weights_bytes"]
    dense_deflated = len(zlib.compress((project / "artifacts/ov/model.bin").read_bytes(), 6))
    assert half_ir["weights_deflated_bytes"] < 0.7 * dense_deflated, (half_ir["weights_deflated_bytes"], dense_deflated)


@pytest.mark.slow
def test_a_ratio_too_high_misses_the_same_tolerance_on_both_formats(project: Path) -> None:
    proc = run(project, "build", "-j", "1", "--keep-going", "tfl-most", "ov-most")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    for target in ("tfl-most", "ov-most"):
        assert f"verify:{target}" in proc.stdout and "top1_agreement" in proc.stdout, proc.stdout
        assert target not in Lock.read(project / "deploy.lock").targets


@pytest.mark.slow  # four conversions' worth of trials per format, each through its runtime on 360 samples
def test_sparsity_auto_takes_the_highest_ratio_that_holds_and_a_noop_does_not_search_again(project: Path) -> None:
    proc = run(project, "build", "-j", "1", "tfl-auto", "ov-auto")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for target in ("tfl-auto", "ov-auto"):
        entry = node(project, target)
        search = entry["facts"]["sparsity_search"]
        trials = {t["sparsity"]: t for t in search["trials"]}
        chosen = search["chosen"]
        assert 1 <= len(trials) <= 4 and trials[chosen]["passed"] is True
        assert all(not t["passed"] for r, t in trials.items() if r > chosen)
        assert all(t["passed"] for r, t in trials.items() if r < chosen)
        assert 0.2 <= chosen <= 0.8  # digits holds half and loses its decisions at 0.9
        assert search["goal"]["logits"]["min_cosine"] == 0.7  # the target's own acceptance
        assert entry["metrics"]["sparsity"] == chosen
        explained = json.loads(run(project, "explain", project_node(project, target)).stdout)
        assert any(n.startswith("sparsity auto: tried") for n in explained["notes"]), explained["notes"]
    # TFLite stores the chosen ratio sparse; the IR does not shrink with any ratio.
    tfl = {t["sparsity"]: t["bytes"] for t in node(project, "tfl-auto")["facts"]["sparsity_search"]["trials"]}
    assert tfl[node(project, "tfl-auto")["facts"]["sparsity_search"]["chosen"]] < \
        node(project, "tfl-auto")["facts"]["sparsity_search"]["dense_bytes"]
    ov = node(project, "ov-auto")["facts"]["sparsity_search"]
    assert all(t["bytes"] == ov["trials"][0]["bytes"] for t in ov["trials"])

    again = run(project, "build", "tfl-auto", "ov-auto")
    assert again.returncode == 0 and "Nothing to do" in again.stdout, again.stdout



def test_options_are_validated_in_the_planner(tmp_path: Path) -> None:
    shutil.copytree(REPO / "examples" / "digits", tmp_path / "examples" / "digits",
                    ignore=shutil.ignore_patterns("__pycache__"))
    (tmp_path / "examples" / "__init__.py").write_text("")
    (tmp_path / "deploy.yaml").write_text(MODEL + "targets:\n  t: {model: digits, format: tflite, precision: fp32, "
                                          "options: {tflite: {sparsity: 1.5}}}\n")
    proc = run(tmp_path, "plan")
    assert proc.returncode != 0 and "deploy.yaml:" in proc.stdout + proc.stderr
    assert "sparsity" in proc.stdout + proc.stderr and "less than 1" in proc.stdout + proc.stderr
    no_validation = MODEL.replace("      validation: examples/digits/data/validation.npz\n", "")
    (tmp_path / "deploy.yaml").write_text(no_validation + "targets:\n  t: {model: digits, format: openvino, "
                                          "precision: fp32, options: {openvino: {sparsity: auto}}}\n")
    proc = run(tmp_path, "plan")
    assert proc.returncode != 0 and "sparsity: auto measures each ratio on the validation set" in proc.stdout + proc.stderr


def test_unset_sparsity_leaves_the_keys_of_existing_nodes_as_they_were() -> None:
    from buildsys.formats import get_step

    tflite, ov = get_step("tflite-from-saved-model"), get_step("openvino-from-onnx")
    assert tflite.Options().model_dump() == {"select_tf_ops": False}
    assert ov.Options().model_dump() == {}
    assert ov.Options(sparsity=0.5).model_dump() == {"sparsity": 0.5, "weight_threshold": 2048}
