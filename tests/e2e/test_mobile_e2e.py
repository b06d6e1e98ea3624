"""Every mobile precision, end to end through the CLI, on a real pretrained network and on examples/digits.

One temp project holds two models:

* `onet`: MTCNN's ONet (tests/models/mtcnn.py) with facenet-pytorch's pretrained `onet.pt`, fed
  deterministic synthetic 48x48 RGB crops (face-like and clutter; no face data set can be
  downloaded). The validation crops carry no labels: artifacts are judged by agreement with the
  float model (top-1 of `prob`, cosine and errors of every output).
* `digits`: the shipped example (examples/ copied in), through `platform: ios` / `platform: android`
  and the ios / android recipes.

Targets cover TFLite fp32 / fp16 / int8 dynamic / full int8 (float I/O) / full int8 (int8 I/O), Core ML
fp32 / fp16 / int8 linear / palettized, and PyTorch Mobile (.ptl). The project is built once
(`build -k -j 2`, once per test session) and every test reads deploy.lock. The TFLite targets pin the onnx2tf route. Core ML cannot execute off macOS:
those checks must say so, and the package's structure must still hold what the format promises.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from buildsys.storage.lock import Lock
from tests.conftest import REPO, TinyProject
from tests.helpers.shared import built_once

pytestmark = pytest.mark.slow

# --- the project -----------------------------------------------------------------------------------

ONET_SAMPLES = 64  # calibration and validation crops each

MODELS = """\
models:
  onet:
    description: MTCNN output network (facenet-pytorch 2.6.0 weights), 48x48 RGB crops.
    source:
      factory: "mtcnn:build"
      weights: onet.pt
    inputs:
      - {name: image, shape: [batch, 3, 48, 48], dtype: float32, layout: NCHW}
    outputs:                      # ONet's return order
      - {name: box, kind: values}
      - {name: landmarks, kind: values}
      - {name: prob, kind: scores}
    data:
      calibration: data/onet_calibration.npz
      validation: data/onet_validation.npz
  digits:
    source:
      factory: "examples.digits.model:build"
      weights: examples/digits/weights.pt
    inputs:
      - {name: image, shape: [batch, 1, 8, 8], dtype: float32, layout: NCHW}
    outputs:
      - {name: logits, kind: scores}
    data:
      calibration: examples/digits/data/calibration.npz
      validation: examples/digits/data/validation.npz
"""

# target name → (model, format, precision, variant) for the tests and the benchmark table, and the
# target's YAML body. ONet targets spell every field out; digits targets go through platform/recipes.
TARGETS: dict[str, tuple[str, str, str, str, str]] = {
    "onet-tflite": ("onet", "tflite", "fp32", "", "format: tflite"),
    "onet-tflite-fp16": ("onet", "tflite", "fp16", "fp16 weights", "format: tflite\n    precision: fp16"),
    "onet-tflite-dynamic": ("onet", "tflite", "int8", "dynamic range",
                            "format: tflite\n    precision: int8\n    options: {tflite-int8: {mode: dynamic}}"),
    "onet-tflite-int8": ("onet", "tflite", "int8", "full, float I/O",
                         "format: tflite\n    precision: int8\n    options: {tflite-int8: {mode: full, io: float}}"),
    "onet-tflite-int8-io": ("onet", "tflite", "int8", "full, int8 I/O",
                            "format: tflite\n    precision: int8\n    options: {tflite-int8: {mode: full, io: int8}}"),
    "onet-coreml": ("onet", "coreml", "fp32", "", "format: coreml"),
    "onet-coreml-fp16": ("onet", "coreml", "fp16", "", "format: coreml\n    precision: fp16"),
    "onet-coreml-int8": ("onet", "coreml", "int8", "linear int8 weights",
                         "format: coreml\n    precision: int8\n    options: {coreml-int8: {weight_compression: int8}}"),
    # 8 bits: a 4-bit palette loses ONet's box regression (per-sample cosine 0.74 against PyTorch, measured
    # by the MIL reference interpreter), which its check rightly refuses.
    "onet-coreml-palettized": ("onet", "coreml", "int8", "8-bit palette",
                               "format: coreml\n    precision: int8\n"
                               "    options: {coreml-int8: {weight_compression: palettize8}}"),
    "onet-ptl": ("onet", "ptl", "fp32", "", "format: ptl"),
    "digits-android-fp32": ("digits", "tflite", "fp32", "", "recipe: android-fp32"),
    "digits-android-fp16": ("digits", "tflite", "fp16", "fp16 weights", "recipe: android"),
    "digits-android-dynamic": ("digits", "tflite", "int8", "dynamic range",
                               "platform: android\n    options: {tflite-int8: {mode: dynamic}}"),
    "digits-android": ("digits", "tflite", "int8", "full, float I/O", "platform: android"),
    "digits-android-int8-io": ("digits", "tflite", "int8", "full, int8 I/O",
                               "platform: android\n    options: {tflite-int8: {io: int8}}"),
    "digits-ios-fp32": ("digits", "coreml", "fp32", "", "recipe: ios-fp32"),
    "digits-ios": ("digits", "coreml", "fp16", "", "platform: ios"),
    "digits-ios-int8": ("digits", "coreml", "int8", "linear int8 weights", "recipe: ios-int8"),
    "digits-ios-palettized": ("digits", "coreml", "int8", "8-bit palette",
                              "recipe: ios-palettized\n"
                              "    options: {coreml-int8: {weight_compression: palettize8}}"),
    "digits-ptl": ("digits", "ptl", "fp32", "", "recipe: android-pytorch-mobile"),
}
# The TFLite targets take the onnx2tf route, whose NHWC layout contract (layout.json) and shared SavedModel these
# tests read; litert-torch's route, the default, is tested in tests/formats/tflite/test_litert_torch.py.
TARGETS = {name: (*spec[:4], spec[4] + "\n    via: [saved_model]" if spec[1] == "tflite" else spec[4])
           for name, spec in TARGETS.items()}
# Shares onet/coreml-fp16 with onet-coreml-fp16; only its check differs, and it must fail off macOS.
STRICT = "onet-ios-strict"
STRICT_BODY = "format: coreml\n    precision: fp16\n    acceptance: {require_numeric: true}"


def onet_weights() -> Path:
    """facenet-pytorch's onet.pt, found without importing the package (its torchvision import fails)."""
    spec = importlib.util.find_spec("facenet_pytorch")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("facenet-pytorch is not installed (pip install --no-deps facenet-pytorch==2.6.0)")
    path = Path(list(spec.submodule_search_locations)[0]) / "data" / "onet.pt"
    if not path.is_file():
        pytest.skip(f"{path} is missing")
    return path


def synthetic_crops(n: int, seed: int) -> Any:
    """`n` deterministic 48x48 RGB crops, normalized like MTCNN: (pixel - 127.5) * 0.0078125, NCHW float32.

    Even indices are face-like (a skin-toned ellipse with brows, eyes, nose and mouth over a colour
    gradient), odd ones clutter (Gaussian colour blobs over a gradient); all get pixel noise. The
    pretrained ONet scores about half of the face-like crops above 0.5 and almost no clutter, so
    `prob`'s argmax takes both values and box / landmark outputs vary.
    """
    import numpy as np

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:48, 0:48].astype(np.float32)
    out = np.empty((n, 3, 48, 48), np.float32)
    for i in range(n):
        c0, c1 = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
        angle = rng.uniform(0, 2 * np.pi)
        t = np.cos(angle) * xx + np.sin(angle) * yy
        t = (t - t.min()) / (np.ptp(t) + 1e-6)
        img = c0[:, None, None] * (1 - t) + c1[:, None, None] * t
        if i % 2 == 0:
            cx, cy = 24 + rng.normal(0, 2), 24 + rng.normal(0, 2)
            ax, ay = rng.uniform(16, 21), rng.uniform(20, 25)
            skin = np.array([rng.uniform(150, 240), rng.uniform(100, 180), rng.uniform(80, 150)])
            face = ((xx - cx) / ax) ** 2 + ((yy - cy) / ay) ** 2 < 1
            img = np.where(face, skin[:, None, None] * (0.85 + 0.15 * (1 - yy / 47)), img)
            dark = rng.uniform(10, 50)
            brows = (np.abs(yy - (cy - ay * 0.42)) < 1.2) & (np.abs(np.abs(xx - cx) - ax * 0.4) < 4)
            img = np.where(brows, dark + 20, img)
            for ex in (cx - ax * 0.4, cx + ax * 0.4):
                eye = (xx - ex) ** 2 + (yy - (cy - ay * 0.25)) ** 2 < rng.uniform(4, 8)
                img = np.where(eye, dark, img)
            mouth = (np.abs(xx - cx) < ax * 0.35) & (np.abs(yy - (cy + ay * 0.45)) < 1.5)
            img = np.where(mouth, np.array([150.0, 60.0, 60.0])[:, None, None], img)
            nose = (np.abs(xx - cx) < 1.5) & (yy > cy - 2) & (yy < cy + ay * 0.2)
            img = np.where(nose, img * 0.8, img)
        else:
            for _ in range(rng.integers(2, 6)):
                bx, by, r = rng.uniform(0, 48), rng.uniform(0, 48), rng.uniform(3, 14)
                blob = np.exp(-((xx - bx) ** 2 + (yy - by) ** 2) / (2 * r * r))
                img = img * (1 - blob) + rng.uniform(0, 255, 3)[:, None, None] * blob
        out[i] = np.clip(img + rng.normal(0, 4, img.shape), 0, 255)
    return ((out - 127.5) * 0.0078125).astype(np.float32)


def make_mobile_project(root: Path, weights: Path | None = None) -> TinyProject:
    """Write the ONet + digits project under `root`: factory, weights, data, examples/, deploy.yaml."""
    import numpy as np

    root.mkdir(parents=True, exist_ok=True)
    shutil.copy(REPO / "tests/models/mtcnn.py", root / "mtcnn.py")
    shutil.copy(weights or onet_weights(), root / "onet.pt")
    if not (root / "examples").exists():
        shutil.copytree(REPO / "examples", root / "examples",
                        ignore=shutil.ignore_patterns("__pycache__", "train.py", "simulate.py"))
    (root / "data").mkdir(exist_ok=True)
    np.savez(root / "data/onet_calibration.npz", image=synthetic_crops(ONET_SAMPLES, seed=1))
    np.savez(root / "data/onet_validation.npz", image=synthetic_crops(ONET_SAMPLES, seed=2))
    targets = {**{name: t[4] for name, t in TARGETS.items()}, STRICT: STRICT_BODY}
    lines = ["targets:"]
    for name, body in targets.items():
        model = TARGETS[name][0] if name in TARGETS else "onet"
        lines.append(f"  {name}:\n    model: {model}\n    {body}")
    project = TinyProject(root, root / "calls.txt")
    project.config.write_text(MODELS + "\n".join(lines) + "\n")
    return project


def build_output(project: TinyProject) -> subprocess.CompletedProcess:
    return project.run("build", "-k", "-j", "2", check=False, timeout=900)


# --- fixtures --------------------------------------------------------------------------------------


def build_mobile_project(root: Path) -> None:
    """The project built at `root` (`build -k -j 2`), with what the build printed and its exit code kept beside it."""
    proc = build_output(make_mobile_project(root))
    (root / "build-output.json").write_text(json.dumps({"returncode": proc.returncode, "stdout": proc.stdout,
                                                         "stderr": proc.stderr}))


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[TinyProject, subprocess.CompletedProcess, dict]:
    """The project, its build's output and its lock: one build per test session (tests/helpers/shared.py), read only."""
    pytest.importorskip("tensorflow")
    pytest.importorskip("coremltools")
    root = built_once(tmp_path_factory, "mobile-e2e", build_mobile_project)
    out = json.loads((root / "build-output.json").read_text())
    proc = subprocess.CompletedProcess(["modelbuild", "build", "-k", "-j", "2"], out["returncode"], out["stdout"],
                                       out["stderr"])
    return TinyProject(root, root / "calls.txt"), proc, Lock.read(root / "deploy.lock").as_dict()


def check(lock: dict, target: str) -> dict:
    assert f"verify:{target}" in lock["nodes"], f"verify:{target} is not in the lock"
    return lock["nodes"][f"verify:{target}"]["metrics"]


def artifact_node(lock: dict, target: str) -> dict:
    return lock["nodes"][lock["targets"][target]["node"]]


def artifact_bytes(lock: dict, target: str) -> int:
    """Bytes of the deliverable itself (model.tflite, the .mlpackage tree, model.ptl), side files excluded."""
    files = lock["targets"][target]["files"]
    return sum(f[2] for f in files if not f[0].endswith(".json"))


# --- the build -------------------------------------------------------------------------------------


def test_only_the_strict_core_ml_check_fails(built: tuple) -> None:
    """-k builds everything; the one failure is the Core ML check that requires a numeric run."""
    project, proc, lock = built
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert f"verify:{STRICT}" not in lock["nodes"]  # a failed node is not recorded
    assert set(TARGETS) <= set(lock["targets"])
    out = proc.stdout
    failed = [line.split()[1] for line in out.splitlines() if line.strip().startswith("failed ")]
    assert failed == [f"verify:{STRICT}"], out
    assert f"✗ verify:{STRICT}: acceptance not met" in out
    assert ("the target requires a full check (require_numeric), but MIL reference, not Apple's runtime: Core ML "
            "execution needs macOS" in out), out
    assert "build failed: 1 node(s) failed, 0 skipped" in proc.stdout + proc.stderr
    for target in TARGETS:
        assert f"verify:{target}" in lock["nodes"], (target, out)
        assert all((project.root / "artifacts" / target / f[0]).is_file() for f in lock["targets"][target]["files"])


@pytest.mark.parametrize("target", [t for t, spec in TARGETS.items() if spec[1] != "coreml"])
def test_runnable_targets_pass_their_checks(built: tuple, target: str) -> None:
    _, _, lock = built
    model, fmt, _, _, _ = TARGETS[target]
    metrics = check(lock, target)
    assert metrics["passed"] is True, metrics
    assert metrics["runtime"] == ("litert" if fmt == "tflite" else "lite-interpreter"), metrics["runtime"]
    outputs = metrics["outputs"]
    assert set(outputs) == ({"box", "landmarks", "prob"} if model == "onet" else {"logits"})
    for name, result in outputs.items():
        assert result["passed"] is True, (name, result)
        for metric in ("max_abs", "max_rel", "cosine", "top1_agreement", "accuracy"):
            entry = result.get(metric)
            if isinstance(entry, dict) and entry["allowed"] is not None:
                assert entry["ok"] is True, (name, metric, entry)
    if model == "onet":
        assert metrics["samples"] == ONET_SAMPLES
        assert "accuracy" not in outputs["prob"]  # unlabelled: judged by agreement only
        assert "top1_agreement" not in outputs["box"]  # values are never judged by argmax


@pytest.mark.parametrize("target", [t for t, spec in TARGETS.items() if spec[2] == "int8" and spec[1] == "tflite"])
def test_int8_judged_by_agreement_and_cosine(built: tuple, target: str) -> None:
    _, _, lock = built
    outputs = check(lock, target)["outputs"]
    scores = outputs["prob" if TARGETS[target][0] == "onet" else "logits"]
    assert scores["top1_agreement"]["allowed"] == 0.9 and scores["top1_agreement"]["observed"] >= 0.9
    assert scores["cosine"]["allowed"] == 0.9 and scores["cosine"]["observed"] >= 0.9
    assert scores["max_rel"]["allowed"] is None  # int8 is not judged elementwise
    if TARGETS[target][0] == "onet":
        for name in ("box", "landmarks"):
            assert outputs[name]["cosine"]["observed"] >= 0.9, (name, outputs[name])


@pytest.mark.parametrize("target", [t for t, spec in TARGETS.items() if spec[1] == "tflite" and spec[2] != "int8"])
def test_float_tflite_is_numerically_close(built: tuple, target: str) -> None:
    _, _, lock = built
    for name, result in check(lock, target)["outputs"].items():
        limit = 1e-4 if TARGETS[target][2] == "fp32" else 1e-2
        assert result["max_rel"]["allowed"] == limit
        assert 0 <= result["max_rel"]["observed"] <= limit, (name, result["max_rel"])


def test_int8_tflite_graphs_are_really_quantized(built: tuple) -> None:
    _, _, lock = built
    for model, names in [("onet", ("onet-tflite-dynamic", "onet-tflite-int8", "onet-tflite-int8-io")),
                         ("digits", ("digits-android-dynamic", "digits-android", "digits-android-int8-io"))]:
        dynamic, full, full_io = (artifact_node(lock, t)["metrics"] for t in names)
        assert dynamic["mode"] == "dynamic" and full["mode"] == "full" and full_io["io"] == "int8", model
        assert full["calibration_samples"] == (ONET_SAMPLES if model == "onet" else 128)
        for m in (dynamic, full, full_io):
            assert m["tensor_dtypes"].get("int8", 0) > 0, m
        # int8 I/O removes the float32 edges entirely: no float32 tensor is left
        assert full_io["tensor_dtypes"].get("float32", 0) == 0, full_io
        assert full["tensor_dtypes"].get("float32", 0) > 0, full


@pytest.mark.parametrize("target", [t for t, spec in TARGETS.items() if spec[1] == "tflite"])
def test_tflite_records_its_nhwc_layout(built: tuple, target: str) -> None:
    project, _, lock = built
    files = {f[0] for f in lock["targets"][target]["files"]}
    assert files == {"model.tflite", "layout.json"}
    layout = json.loads((project.root / "artifacts" / target / "layout.json").read_text())
    (entry,) = layout["inputs"]
    assert entry["name"] == "image"
    assert entry["perm"] == [0, 2, 3, 1], entry  # NCHW → NHWC
    channels = 3 if TARGETS[target][0] == "onet" else 1
    side = 48 if TARGETS[target][0] == "onet" else 8
    assert entry["shape"][1:] == [side, side, channels], entry
    saved = lock["nodes"][f"{TARGETS[target][0]}/saved_model"]["metrics"]
    assert saved["layouts"] == {"image": "NHWC"}


@pytest.mark.parametrize("target", [t for t, spec in TARGETS.items() if spec[1] == "coreml"])
def test_core_ml_is_checked_by_the_mil_reference_and_says_so(built: tuple, target: str) -> None:
    """Off macOS the numbers come from the MIL reference interpreter, and every output says so."""
    _, _, lock = built
    model, _, precision, variant, _ = TARGETS[target]
    metrics = check(lock, target)
    assert metrics["passed"] is True and metrics["runtime"] == "coreml-mil", metrics.get("failures")
    (caveat,) = [c for c in metrics["caveats"] if c["kind"] == "stand-in"]
    assert caveat["what"] == "MIL reference, not Apple's runtime" and "needs macOS" in caveat["why"]
    assert lock["nodes"][f"verify:{target}"]["verdict"] == "passed"
    structure = metrics["structure"]
    assert structure["problems"] == []
    facts = structure["facts"]
    outputs = ["box", "landmarks", "prob"] if model == "onet" else ["logits"]
    assert sorted(o["name"] for o in facts["outputs"]) == sorted(outputs)
    assert [i["name"] for i in facts["inputs"]] == ["image"]
    assert facts["inputs"][0]["ranges"][0] == [1, 64]  # the dynamic batch axis, bounded
    assert facts["minimum_deployment_target"] == "iOS16" and facts["spec_version"] == 7
    dtypes = facts["weight_dtypes"]
    if precision == "fp32":
        assert facts["compute_precision"] == "float32" and "float16" not in dtypes
        assert facts["weights_compressed"] is False
    elif precision == "fp16":
        assert facts["compute_precision"] == "float16" and "float32" not in dtypes
        assert facts["weights_compressed"] is False
    else:
        assert facts["weights_compressed"] is True
        assert "float32" not in dtypes  # compute stays fp16: scales, palettes and biases are fp16
        op = "constexpr_affine_dequantize" if "int8" in variant else "constexpr_lut_to_dense"
        assert set(facts["compressed_weight_ops"]) == {op}, facts["compressed_weight_ops"]
        if op == "constexpr_affine_dequantize":
            assert dtypes["int8"]["elements"] > 0
        else:
            assert dtypes["uint8"]["elements"] > 0  # palette indices, packed


def test_sizes_shrink_with_precision(built: tuple) -> None:
    _, _, lock = built
    sizes = {t: artifact_bytes(lock, t) for t in TARGETS}
    for fp32, fp16, int8s in [
        ("onet-tflite", "onet-tflite-fp16", ["onet-tflite-dynamic", "onet-tflite-int8", "onet-tflite-int8-io"]),
        ("onet-coreml", "onet-coreml-fp16", ["onet-coreml-int8", "onet-coreml-palettized"]),
        ("digits-android-fp32", "digits-android-fp16",
         ["digits-android-dynamic", "digits-android", "digits-android-int8-io"]),
        ("digits-ios-fp32", "digits-ios", ["digits-ios-int8", "digits-ios-palettized"]),
    ]:
        assert sizes[fp16] < sizes[fp32], (fp16, sizes[fp16], fp32, sizes[fp32])
        for int8 in int8s:
            assert sizes[int8] < sizes[fp16], (int8, sizes[int8], fp16, sizes[fp16])
    # ONet's 1.5 MB of fp32 weights dominate its files: the ratios are close to the bit widths
    assert sizes["onet-tflite-fp16"] < 0.6 * sizes["onet-tflite"]
    assert sizes["onet-tflite-int8"] < 0.35 * sizes["onet-tflite"]
    assert sizes["onet-coreml-fp16"] < 0.6 * sizes["onet-coreml"]
    assert sizes["onet-coreml-int8"] < 0.35 * sizes["onet-coreml"]
    assert sizes["onet-coreml-palettized"] < 0.35 * sizes["onet-coreml"]  # 8-bit indices and a 256-entry palette


def test_targets_share_upstream_nodes(built: tuple) -> None:
    """Ten TFLite / Core ML / ptl targets per model come from one export each, one SavedModel each."""
    _, _, lock = built
    for model in ("onet", "digits"):
        nodes = [n for n in lock["nodes"] if n.startswith(f"{model}/")]
        assert nodes.count(f"{model}/onnx") == 1 and nodes.count(f"{model}/saved_model") == 1
        assert nodes.count(f"{model}/torchscript") == 1 and nodes.count(f"{model}/reference") == 1
        assert len([n for n in nodes if n.startswith(f"{model}/tflite-int8")]) == 3
        assert len([n for n in nodes if n.startswith(f"{model}/coreml-int8")]) == 2


# --- the model definition and the shipped example's plan --------------------------------------------


def _upstream_classes() -> dict[str, Any]:
    """facenet-pytorch's RNet / ONet classes, compiled from its source file alone.

    Importing facenet_pytorch fails here (it imports torchvision), so the two class statements are
    taken from the file's syntax tree and executed with just torch, nn and os in scope.
    """
    import ast

    import torch
    from torch import nn

    spec = importlib.util.find_spec("facenet_pytorch")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("facenet-pytorch is not installed")
    source = Path(list(spec.submodule_search_locations)[0]) / "models" / "mtcnn.py"
    tree = ast.parse(source.read_text())
    classes = [n for n in tree.body if isinstance(n, ast.ClassDef) and n.name in ("RNet", "ONet")]
    namespace: dict[str, Any] = {"torch": torch, "nn": nn, "os": os}
    exec(compile(ast.Module(body=classes, type_ignores=[]), str(source), "exec"), namespace)
    return namespace


@pytest.mark.parametrize("name", ["ONet", "RNet"])
def test_mtcnn_definitions_match_facenet_pytorch(name: str) -> None:
    import torch

    from tests.models import mtcnn

    upstream = _upstream_classes()[name](pretrained=False).eval()
    ours = (mtcnn.build() if name == "ONet" else mtcnn.build_rnet()).eval()
    state = torch.load(onet_weights().parent / f"{name.lower()}.pt", map_location="cpu", weights_only=True)
    upstream.load_state_dict(state)
    ours.load_state_dict(state, strict=True)
    side = 48 if name == "ONet" else 24
    x = mtcnn.normalize(torch.rand(8, 3, side, side, generator=torch.Generator().manual_seed(0)) * 255)
    with torch.no_grad():
        expected, got = upstream(x), ours(x)
    assert len(got) == len(mtcnn.ONET_OUTPUTS if name == "ONet" else mtcnn.RNET_OUTPUTS) == len(expected)
    for a, b in zip(expected, got):
        assert torch.equal(a, b)
    assert [tuple(t.shape) for t in got] == ([(8, 4), (8, 10), (8, 2)] if name == "ONet" else [(8, 4), (8, 2)])


def test_plan_ios_android_on_the_example_lists_shared_reference_once(tmp_path: Path) -> None:
    for name in ("deploy.yaml.example", "recipes", "examples"):
        src = REPO / name
        (shutil.copytree if src.is_dir() else shutil.copy)(src, tmp_path / name)
    proc = subprocess.run([sys.executable, "-m", "buildsys", "-f", "deploy.yaml.example", "plan", "ios", "android"],
                          cwd=tmp_path, capture_output=True, text=True,
                          env={**os.environ, "NO_COLOR": "1", "COLUMNS": "200"})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rows = [line.split() for line in proc.stdout.splitlines() if line.startswith("  ") and line.split()[0] != "ops"]
    names = [re.sub(r"~[0-9a-f]{6}$", "", row[1]) for row in rows if len(row) > 1]  # ios-pruned: a coreml-fp16 twin
    assert names.count("digits/reference") == 1, proc.stdout
    assert names.count("verify:ios") == 1 and names.count("verify:android") == 1, proc.stdout
    assert sorted(names) == sorted(["digits/torchscript", "digits/coreml-fp16", "digits/pt2",
                                    "digits/tflite-int8", "digits/reference", "verify:ios", "verify:android"])
    assert "2 target(s), 7 node(s)" in proc.stdout
    plan = json.loads(subprocess.run(
        [sys.executable, "-m", "buildsys", "-f", "deploy.yaml.example", "plan", "--json", "ios", "android"],
        cwd=tmp_path, capture_output=True, text=True, check=True).stdout)
    assert plan["routes"]["ios"] == ["pytorch", "torchscript", "coreml-fp16"]
    assert plan["routes"]["android"] == ["pytorch", "pt2", "tflite-int8"]

