"""The tfjs format: SavedModels converted by tensorflowjs and checked by TensorFlow.js in real headless Chromium.

Browser tests skip only when this host lacks Chromium, the pinned TensorFlow.js (python -m
buildsys.formats.web.install) or playwright; CI installs all three, and under --strict-runtimes the
missing runtime fails the run (tests/conftest.py).
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from buildsys.formats import get_format, get_runtime, get_step, runtimes
from buildsys.formats.tfjs import artifact
from buildsys.formats.web.install import pins
from buildsys.storage.keys import explain
from tests.conftest import missing_runtimes
from tests.helpers.models import Tiny
from tests.formats.onnx.test_steps_onnx import check

RUNTIME = "tfjs-chromium"
WHY = get_runtime(RUNTIME).unavailable()
browser = pytest.mark.skipif(WHY is not None, reason=f"tfjs-chromium cannot run here: {WHY}")


def test_format_step_and_runtime_declare_what_they_need() -> None:
    info = get_format("tfjs")
    assert (info.runtime, info.filename, info.precision) == (RUNTIME, "model.json", "fp32")
    step = get_step("tfjs-from-saved-model")
    assert step.consumes == ("saved_model",) and step.produces == "tfjs" and step.toolchain == "tf"
    assert artifact.LOADER_SOURCE in step.shipped_files and "tensorflowjs" in step.packages
    # One npm install serves both browser runtimes: the helper installs what every runtime pins.
    assert runtimes()[RUNTIME].npm_packages == artifact.NPM_PACKAGES
    assert pins() == {**artifact.NPM_PACKAGES, "onnxruntime-web": get_runtime("ort-web-chromium").npm_packages[
        "onnxruntime-web"]}


def test_not_run_without_chromium_or_tfjs(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("MODELBUILD_CHROMIUM", str(tmp_path / "no-such-chromium"))
    assert get_runtime(RUNTIME).unavailable() == ("no Chromium (MODELBUILD_CHROMIUM does not name an executable; "
                                                  "install chromium, e.g. apt-get install chromium)")
    monkeypatch.setenv("MODELBUILD_CHROMIUM", shutil.which("true") or "/bin/true")  # any executable will do here
    monkeypatch.setenv("MODELBUILD_WEB_NODE_MODULES", str(tmp_path / "node_modules"))
    assert get_runtime(RUNTIME).unavailable() == (f"@tensorflow/tfjs-core is not installed in {tmp_path / 'node_modules'} "
                                                  "(run python -m buildsys.formats.web.install)")
    for package in artifact.NPM_PACKAGES:
        (tmp_path / "node_modules" / package).mkdir(parents=True)
        (tmp_path / "node_modules" / package / "package.json").write_text(f'{{"version": "{artifact.TFJS_VERSION}"}}')
    assert get_runtime(RUNTIME).unavailable() == (f"{tmp_path / 'node_modules'} lacks @tensorflow/tfjs-core/dist/"
                                                  "tf-core.fesm.min.js, @tensorflow/tfjs-converter/dist/"
                                                  "tf-converter.fesm.min.js, @tensorflow/tfjs-backend-wasm/dist/"
                                                  "tf-backend-wasm.fesm.min.js, @tensorflow/tfjs-backend-wasm/dist/"
                                                  "tfjs-backend-wasm.wasm, @tensorflow/tfjs-backend-wasm/dist/"
                                                  "tfjs-backend-wasm-simd.wasm, @tensorflow/tfjs-backend-wasm/dist/"
                                                  "tfjs-backend-wasm-threaded-simd.wasm "
                                                  "(run python -m buildsys.formats.web.install)")
    # A strict test run fails on it rather than skipping the browser tests: npm can install it.
    assert any(line.startswith(f"{RUNTIME}: ") for line in missing_runtimes())


# --- the step and the check (TensorFlow, onnx2tf, tensorflowjs) ------------------------------------


@pytest.fixture(scope="module")
def saved_model(cnn: Tiny, cnn_onnx: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The conftest CNN through onnx2tf: <dir>/saved_model plus <dir>/layout.json."""
    pytest.importorskip("onnx2tf")
    if importlib.util.find_spec("tensorflowjs") is None:  # importing it needs the step's stand-ins
        pytest.skip("tensorflowjs is not installed (pip install -c constraints.txt --no-deps tensorflowjs)")
    sm = tmp_path_factory.mktemp("cnn-sm")
    with contextlib.redirect_stdout(io.StringIO()):  # onnx2tf chats on stdout
        cnn.run("saved-model-from-onnx", sm, input_path=cnn_onnx)
    return sm / "saved_model"


@pytest.fixture(scope="module")
def tfjs_model(cnn: Tiny, saved_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tfjs step on that SavedModel: <dir>/model.json and the rest of the artifact."""
    out = tmp_path_factory.mktemp("cnn-tfjs")
    cnn.run("tfjs-from-saved-model", out, input_path=saved_model)
    return out / artifact.MODEL_FILE


@pytest.mark.slow
def test_artifact_is_graph_model_shards_loader_signature_and_layout(cnn: Tiny, saved_model: Path, tfjs_model: Path,
                                                                   tmp_path: Path) -> None:
    folder = tfjs_model.parent
    assert sorted(p.name for p in folder.iterdir()) == ["group1-shard1of1.bin", "layout.json", "model.js", "model.json",
                                                      "signature.json"]
    assert (folder / "model.js").read_bytes() == artifact.loader()
    sig = json.loads((folder / "signature.json").read_text())
    # Channels last as onnx2tf made the SavedModel; perm says how the PyTorch axes map onto it.
    assert sig["inputs"] == [{"name": "image", "node": "image", "type": "float32", "shape": ["batch", 8, 8, 1],
                              "perm": [0, 2, 3, 1]}]
    assert [(o["name"], o["type"], o["shape"]) for o in sig["outputs"]] == [("logits", "float32", [None, 10])]
    # Byte-reproducible in a reused worker: a second conversion in this process writes the same files.
    again = tmp_path / "again"
    cnn.run("tfjs-from-saved-model", again, input_path=saved_model)
    assert {p.name: p.read_bytes() for p in again.iterdir()} == {p.name: p.read_bytes() for p in folder.iterdir()}


@pytest.mark.slow
def test_check_says_not_run_without_chromium(cnn: Tiny, tfjs_model: Path, cnn_reference: Path, tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MODELBUILD_CHROMIUM", str(tmp_path / "no-such-chromium"))
    result = check(cnn, tmp_path / "check", "tfjs", tfjs_model, cnn_reference)
    assert result["passed"] is None and result["not_run"].startswith("no Chromium"), result


@browser
@pytest.mark.slow
def test_check_passes_in_chromium_and_a_perturbed_shard_fails(cnn: Tiny, tfjs_model: Path, cnn_reference: Path,
                                                              tmp_path: Path) -> None:
    result = check(cnn, tmp_path / "check", "tfjs", tfjs_model, cnn_reference)
    assert result["passed"] is True, result
    assert result["runtime"] == RUNTIME and result["samples"] == 48 and result["structure"]["problems"] == []
    assert result["outputs"]["logits"]["max_abs"]["observed"] < 1e-4
    bad = tmp_path / "bad"
    shutil.copytree(tfjs_model.parent, bad)
    # Scale the largest float32 weight by 5% (the shard also holds int32 shape constants: leave them be).
    manifest = json.loads((bad / artifact.MODEL_FILE).read_text())["weightsManifest"][0]
    shard = bad / manifest["paths"][0]
    data, offset, spans = bytearray(shard.read_bytes()), 0, []
    for weight in manifest["weights"]:
        size = 4 * int(np.prod(weight["shape"]))
        spans.append((size if weight["dtype"] == "float32" else 0, offset))
        offset += size
    size, start = max(spans)
    data[start:start + size] = (np.frombuffer(bytes(data[start:start + size]), "float32") * 1.05).tobytes()
    shard.write_bytes(bytes(data))
    result = check(cnn, tmp_path / "check-bad", "tfjs", bad / artifact.MODEL_FILE, cnn_reference)
    assert result["passed"] is False and any("max_rel" in f for f in result["failures"]), result


def test_a_new_npm_pin_reruns_the_browser_checks(monkeypatch: pytest.MonkeyPatch) -> None:
    """The pinned TensorFlow.js is part of a tfjs check's key (beside playwright's version), so bumping
    the pin re-runs every check made with the old one, and plan says why."""
    from buildsys.planning.kinds import CheckKind

    node = type("N", (), {"format": "tfjs"})()
    assert CheckKind.pinned(node) == {f"npm {name}": v for name, v in artifact.NPM_PACKAGES.items()}
    before = {"step": "check", "toolchain": {"playwright": "1", **CheckKind.pinned(node)}}
    monkeypatch.setitem(runtimes()[RUNTIME].npm_packages, "@tensorflow/tfjs-core", "9.9.9")
    after = {"step": "check", "toolchain": {"playwright": "1", **CheckKind.pinned(node)}}
    assert explain(before, after) == [f"toolchain npm @tensorflow/tfjs-core {artifact.TFJS_VERSION}→9.9.9"]
