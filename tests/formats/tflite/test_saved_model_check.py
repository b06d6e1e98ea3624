"""`format: saved_model` targets are checked in TensorFlow: real metrics, wrong artifacts fail, signatures inspected.

The project build goes through the CLI (reference and ONNX in the torch worker, the SavedModel and its
check in the tf worker); the failure cases run the check step in-process on the conftest CNN.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import shutil
import textwrap
from pathlib import Path
from typing import Any

import pytest

from buildsys.config.schema import Model
from buildsys.storage.lock import Lock
from buildsys.nodes.verify import Acceptance, resolve_acceptance
from tests.conftest import TinyProject
from tests.helpers.models import Tiny, make_model

# A channels-first 1-D conv (NCL → NLC in the SavedModel), for a model that is not an image model.
SEQNET = '''\
"""A tiny 1-D conv over [N, 4, 16] sequences."""
import torch
from torch import nn


class SeqNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv1d(4, 8, 3, padding=1)
        self.fc = nn.Linear(8, 3)

    def forward(self, x):
        return self.fc(torch.relu(self.conv(x)).mean(2))


def build():
    return SeqNet()
'''

DEPLOY = """\
models:
  cnn:
    source: {factory: "tinymodels:cnn", weights: cnn.pt}
    inputs:
      - {name: image, shape: [batch, 1, 8, 8], layout: NCHW}
    outputs:
      - {name: logits, kind: scores}
    data: {validation: cnn_val.npz}
  two:
    source: {factory: "tinymodels:two_heads", weights: two.pt}
    inputs:
      - {name: x, shape: [batch, 4]}
    outputs:
      - {name: scores, kind: scores}
      - {name: box, kind: values}
    data: {validation: two_val.npz}
  seq:
    source: {factory: "seqnet:build", weights: seq.pt}
    inputs:
      - {name: x, shape: [batch, 4, 16], layout: NCL}
    outputs:
      - {name: y, kind: scores}
    data: {validation: seq_val.npz}
targets:
  cnn-tf:
    model: cnn
    format: saved_model
  two-tf:
    model: two
    format: saved_model
  seq-tf:
    model: seq
    format: saved_model
"""


def tf_available() -> None:
    pytest.importorskip("tensorflow")
    pytest.importorskip("onnx2tf")


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[TinyProject, dict[str, Any]]:
    """The three-model project above, built once through the CLI; returns it and its deploy.lock."""
    tf_available()
    import numpy as np
    import torch

    root = tmp_path_factory.mktemp("sm-project")
    for kind in ("cnn", "two"):  # tinymodels.py and <kind>.pt; each model's data renamed apart
        make_model(root, kind, calibration=False)
        (root / "val.npz").rename(root / f"{kind}_val.npz")
    (root / "seqnet.py").write_text(SEQNET)
    factory_only = Model.model_validate({"source": {"factory": "seqnet:build"},
                                         "inputs": [{"name": "x", "shape": ["batch", 4, 16]}],
                                         "outputs": [{"name": "y"}]})
    torch.manual_seed(0)
    torch.save(Tiny(root, "seq", factory_only, "seq").net().state_dict(), root / "seq.pt")  # the factory's own init
    np.savez(root / "seq_val.npz", x=np.random.default_rng(0).standard_normal((24, 4, 16)).astype("float32"))
    project = TinyProject(root, root / "calls.txt")
    project.write(textwrap.dedent(DEPLOY))
    project.run("build", timeout=900)
    return project, Lock.read(root / "deploy.lock").as_dict()  # deploy.lock merged with the build record


@pytest.mark.parametrize("target, outputs", [("cnn-tf", ["logits"]), ("two-tf", ["scores", "box"]),
                                             ("seq-tf", ["y"])])
@pytest.mark.slow
@pytest.mark.tflite
def test_saved_model_target_passes_its_check_in_tensorflow(built: tuple[TinyProject, dict[str, Any]], target: str,
                                                           outputs: list[str]) -> None:
    project, lock = built
    metrics = lock["nodes"][f"verify:{target}"]["metrics"]
    assert metrics["passed"] is True, metrics
    assert metrics["runtime"] == "tensorflow" and "not_run" not in metrics, metrics
    assert metrics["samples"] > 0 and sorted(metrics["outputs"]) == sorted(outputs)  # the lock sorts keys
    for name, result in metrics["outputs"].items():
        for metric in ("max_abs", "max_rel", "cosine"):
            assert metric in result, (name, metric, result)
        observed, allowed = result["max_rel"]["observed"], result["max_rel"]["allowed"]
        assert allowed == 1e-4, result  # the fp32 default: the same arithmetic in another runtime
        assert math.isfinite(observed) and 0 <= observed <= allowed, (name, result["max_rel"])
        assert math.isfinite(result["max_abs"]["observed"]), (name, result["max_abs"])
    assert metrics["structure"]["problems"] == [], metrics["structure"]
    assert metrics["structure"]["facts"]["signature"] == "serving_default"
    # The deliverable is the SavedModel with its layout record.
    files = {f[0] for f in lock["targets"][target]["files"]}
    assert "layout.json" in files and "saved_model/saved_model.pb" in files, files
    assert (project.root / "artifacts" / target / "saved_model" / "saved_model.pb").is_file()


@pytest.mark.slow
@pytest.mark.tflite
def test_saved_model_inputs_are_fed_in_the_artifact_layout(built: tuple[TinyProject, dict[str, Any]]) -> None:
    """The CNN and the 1-D conv are channels last in the SavedModel; two heads come back by name."""
    _, lock = built
    structure = {t: lock["nodes"][f"verify:{t}"]["metrics"]["structure"]["facts"]
                 for t in ("cnn-tf", "seq-tf", "two-tf")}
    assert structure["cnn-tf"]["layouts"] == {"image": "NHWC"}
    assert structure["cnn-tf"]["inputs"] == [{"key": "image", "dtype": "float32", "shape": [None, 8, 8, 1]}]
    assert structure["seq-tf"]["layouts"] == {"x": "NLC"}
    assert {o["key"] for o in structure["two-tf"]["outputs"]} == {"scores", "box"}


@pytest.mark.slow
@pytest.mark.tflite
def test_saved_model_check_runs_in_the_tf_worker(built: tuple[TinyProject, dict[str, Any]]) -> None:
    """A check runs in its artifact's step's worker (execute.Builder._toolchain): the SavedModel step's, tf."""
    from buildsys.config.load import load
    from buildsys.planning.expand import expand
    from buildsys.formats import get_step

    project, lock = built
    dag = expand(load(project.config))
    for target in ("cnn-tf", "two-tf", "seq-tf"):
        artifact = dag.nodes[dag.nodes[f"verify:{target}"].deps[0]]
        assert (artifact.format, get_step(artifact.step).toolchain) == ("saved_model", "tf"), target
    # TensorFlow's version is part of the check's key: upgrading it re-runs the check.
    assert "tensorflow" in lock["nodes"]["verify:cnn-tf"]["components"]["toolchain"]


# --- in-process: perturbed artifacts and signature mismatches ------------------------------------------


@pytest.fixture(scope="module")
def saved_model(cnn: Tiny, cnn_onnx: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The conftest CNN converted by the SavedModel step: <dir>/saved_model plus <dir>/layout.json."""
    tf_available()
    out = tmp_path_factory.mktemp("cnn-sm")
    with contextlib.redirect_stdout(io.StringIO()):  # onnx2tf chats on stdout
        cnn.run("saved-model-from-onnx", out, input_path=cnn_onnx)
    return out / "saved_model"


def check(tiny: Tiny, out: Path, artifact: Path, reference: Path) -> dict[str, Any]:
    options = resolve_acceptance(Acceptance(), "fp32", tiny.model.outputs)
    return tiny.run("check", out, input_path=artifact, extra={"format": "saved_model", "reference": str(reference)},
                    **options)


def perturbed(saved_model: Path, out: Path, factor: float) -> Path:
    """A SavedModel with the same serving signature whose outputs are the original's times `factor`.

    onnx2tf folds the weights into graph constants (the SavedModel has no variables to edit), so the
    perturbation wraps the original function instead: a deliberately wrong artifact in the same shape.
    """
    import tensorflow as tf

    inner = tf.saved_model.load(str(saved_model))
    serving = inner.signatures["serving_default"]
    _, specs = serving.structured_input_signature

    @tf.function(input_signature=[tf.TensorSpec(s.shape, s.dtype, key) for key, s in specs.items()])
    def serve(*inputs: Any) -> dict[str, Any]:
        result = serving(**dict(zip(specs, inputs)))
        return {key: value * factor for key, value in result.items()}

    module = tf.Module()
    module.inner = inner
    module.serve = serve
    out.mkdir(parents=True)
    tf.saved_model.save(module, str(out / "saved_model"), signatures={"serving_default": serve})
    shutil.copyfile(saved_model.parent / "layout.json", out / "layout.json")
    return out / "saved_model"


@pytest.mark.slow
@pytest.mark.tflite
def test_in_process_check_of_the_step_output_passes(cnn: Tiny, saved_model: Path, cnn_reference: Path,
                                                    tmp_path: Path) -> None:
    result = check(cnn, tmp_path, saved_model, cnn_reference)
    assert result["passed"] is True and result["runtime"] == "tensorflow", result
    logits = result["outputs"]["logits"]
    assert math.isfinite(logits["max_abs"]["observed"]) and logits["max_rel"]["observed"] <= 1e-4, logits
    assert json.loads((tmp_path / "report.json").read_text())["passed"] is True


@pytest.mark.slow
@pytest.mark.tflite
def test_perturbed_saved_model_fails_its_check_naming_the_metric(cnn: Tiny, saved_model: Path, cnn_reference: Path,
                                                                 tmp_path: Path) -> None:
    bad = perturbed(saved_model, tmp_path / "bad", 1.01)  # 1% off: far beyond fp32's 1e-4
    result = check(cnn, tmp_path / "check", bad, cnn_reference)
    assert result["passed"] is False, result
    assert result["outputs"]["logits"]["max_rel"]["ok"] is False
    assert any(f.startswith("logits: max_rel") for f in result["failures"]), result["failures"]
    assert result["structure"]["problems"] == []  # the signature is right; only the numbers are wrong


@pytest.mark.slow
@pytest.mark.tflite
def test_inspection_reports_a_signature_mismatch(cnn: Tiny, saved_model: Path) -> None:
    from buildsys.formats import get_runtime

    runtime = get_runtime("tensorflow")
    assert runtime.inspect(saved_model, cnn.model, "saved_model")["problems"] == []  # type: ignore[index]
    wrong = cnn.with_model(inputs=[{"name": "image", "shape": ["batch", 3, 8, 8], "layout": "NCHW"}],
                           outputs=[{"name": "probs", "kind": "scores"}])
    problems = runtime.inspect(saved_model, wrong.model, "saved_model")["problems"]  # type: ignore[index]
    assert "input 'image' is [?, 8, 8, 1] in the SavedModel, deploy.yaml declares [batch, 3, 8, 8] " \
           "(channels last: [batch, 8, 8, 3])" in problems, problems
    assert "output 'probs' is not in the serving signature (its outputs are [logits])" in problems, problems
    renamed = cnn.with_model(inputs=[{"name": "pixels", "shape": ["batch", 1, 8, 8], "layout": "NCHW"}])
    (problem,) = runtime.inspect(saved_model, renamed.model, "saved_model")["problems"]  # type: ignore[index]
    assert problem == "input 'pixels' is not in the serving signature (its inputs are [image])"


@pytest.mark.slow
@pytest.mark.tflite
def test_inspection_reports_an_unreadable_saved_model(cnn: Tiny, tmp_path: Path) -> None:
    from buildsys.formats import get_runtime

    tf_available()
    (tmp_path / "saved_model").mkdir()
    (tmp_path / "saved_model" / "saved_model.pb").write_bytes(b"not a protobuf")
    structure = get_runtime("tensorflow").inspect(tmp_path / "saved_model", cnn.model, "saved_model")
    (problem,) = structure["problems"]  # type: ignore[index]
    assert "cannot be read as a SavedModel" in problem and "rebuild the artifact" in problem, problem


@pytest.mark.slow
@pytest.mark.tflite
def test_signature_mismatch_fails_the_check(cnn: Tiny, saved_model: Path, cnn_reference: Path, tmp_path: Path) -> None:
    """A structural problem fails the check even where the numbers agree (float16 declared, float32 made)."""
    half = cnn.with_model(inputs=[{"name": "image", "shape": ["batch", 1, 8, 8], "layout": "NCHW",
                                   "dtype": "float16"}])
    result = check(half, tmp_path, saved_model, cnn_reference)
    assert result["passed"] is False, result
    assert "input 'image' is float32 in the SavedModel, deploy.yaml declares float16" in result["failures"]


@pytest.mark.slow
@pytest.mark.tflite
def test_fixed_batch_saved_model_runs_any_number_of_samples(cnn: Tiny, cnn_onnx: Path, tmp_path: Path) -> None:
    import numpy as np

    from buildsys.config.data import Batch
    from buildsys.formats import get_runtime
    from tests.helpers.models import torch_outputs, validation_feeds

    tf_available()
    with contextlib.redirect_stdout(io.StringIO()):
        cnn.run("saved-model-from-onnx", tmp_path, input_path=cnn_onnx, batch_size=4)
    feeds = {k: v[:10] for k, v in validation_feeds(cnn).items()}
    with get_runtime("tensorflow").load(tmp_path / "saved_model", cnn.model, cnn.root) as session:
        assert session.max_batch == 4
        (got,) = session.run_all(Batch(feeds, None, "validation"))  # chunks of 4, 4 and a padded 2
    (want,) = torch_outputs(cnn, feeds)
    assert got.shape == (10, 10) and float(np.abs(got - want).max() / np.abs(want).max()) < 1e-4


def test_missing_tensorflow_is_said_with_the_install_command(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    from buildsys.formats import get_runtime
    from buildsys.formats import get_format

    assert get_format("saved_model").runtime == "tensorflow"
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "tensorflow" else real(name, *a))
    runtime = get_runtime("tensorflow")
    assert runtime.unavailable() == "tensorflow is not installed (pip install -c constraints.txt 'modelbuild[tflite]')"
    model = Model.model_validate({"source": {"factory": "unused:build"}, "inputs": [{"name": "x", "shape": [1, 4]}],
                                  "outputs": [{"name": "y"}]})
    assert runtime.inspect(Path("nowhere/saved_model"), model, "saved_model") is None  # no structure without TF
