"""Accuracy repair of TFLite int8 (docs/repair.md), end to end through the `modelbuild` CLI: the attention
classifier of tests/planning/test_repair.py with `platform: android` (the android preset: full int8 TFLite, calibrated)
misses top-1 agreement 0.9 on litert-torch's full int8; the next route keeps the most sensitive ops in float
(ai-edge-quantizer, measured per op on the calibration set in the LiteRT interpreter) and passes the same
check; a recipe may change the scheme the preset chose (weight-only), and says so; a no-op build neither
repeats the failed check nor searches again. Real LiteRT numbers, no stubs.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.planning.test_repair import Project, _top1

pytest.importorskip("litert_torch")
pytest.importorskip("ai_edge_quantizer")

#: The android preset with calibration data: full int8 TFLite, float I/O (recipes/android.yaml).
ANDROID = "android: {model: vit, platform: android}\n"
#: The same preset, allowed only the weight-only scheme (the preset chose `mode: full`; the recipe changes it).
WEIGHTS = "weights: {model: vit, platform: android, repair: [weight-only]}\n"
#: The onnx2tf route (pt2 → onnx → saved_model: the legacy exporter's ONNX is what onnx2tf refuses), whose
#: TFLiteConverter full int8 misses too.
CONVERTER = "converter: {model: vit, platform: android, routes: [[pt2, onnx, saved_model]], repair: [keep-float]}\n"
#: A user who wrote `mode: full` themselves: no recipe may change the scheme.
PINNED = "pinned: {model: vit, platform: android, repair: [weight-only], options: {tflite-int8: {mode: full}}}\n"


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Project:
    return Project(tmp_path_factory.mktemp("repair-tflite"), ANDROID + WEIGHTS + CONVERTER)


@pytest.mark.slow
def test_android_full_int8_misses_and_keep_float_passes(project: Project) -> None:
    proc = project.run("build", "android")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lock = project.lock()
    route = lock.targets["android"]["route"]
    assert route[-1] == "tflite-int8 (repair keep-float)", route
    dropped = lock.routes["android"]["dropped"]
    full = [r for r in dropped if r.get("repair")]
    assert len(full) == 1 and full[0]["route"][-1] == "tflite-int8"
    assert full[0]["observed"]["logits"]["top1_agreement"] < 0.9  # full int8 misses what the preset asks
    assert _top1(lock, "android") >= 0.9  # ...and the repaired artifact meets the same check in LiteRT
    node = lock.targets["android"]["node"]
    facts = lock.nodes[node]["facts"]
    repair = facts["repair"]
    assert repair["recipe"] == "keep-float" and repair["kept_float"]
    assert repair["baseline"]["passed"] is False and repair["trials"][-1]["passed"] is True
    assert len(repair["trials"]) <= 8 and all("ms" not in t for t in repair["trials"])  # latency: build record
    assert facts["scheme"].startswith("full int8 except the ops kept in float")
    assert lock.nodes[node]["components"]["options"]["repair_goal"]["logits"]["min_top1_agreement"] == 0.9
    assert "android: accuracy repair keep-float: kept" in proc.stdout

    # A no-op build: no factory call, no search, nothing to do.
    calls = project.calls()
    again = project.run("build", "android")
    assert again.returncode == 0 and "Nothing to do" in again.stdout and project.calls() == calls
    assert "tflite-int8~" not in again.stdout


@pytest.mark.slow
def test_a_recipe_changes_the_scheme_the_preset_chose(project: Project) -> None:
    proc = project.run("build", "weights")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lock = project.lock()
    assert lock.targets["weights"]["route"][-1] == "tflite-int8 (repair weight-only)"
    node = lock.targets["weights"]["node"]
    assert lock.nodes[node]["facts"]["scheme"].startswith("weight-only: int8 weights")
    assert _top1(lock, "weights") >= 0.9



@pytest.mark.slow
def test_the_converter_route_is_repaired_too(project: Project) -> None:
    proc = project.run("build", "converter")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lock = project.lock()
    assert lock.targets["converter"]["route"] == ["pytorch", "pt2", "onnx", "saved_model",
                                                  "tflite-int8 (repair keep-float)"]
    [dropped] = lock.routes["converter"]["dropped"]
    assert dropped["repair"] is True and dropped["observed"]["logits"]["top1_agreement"] < 0.9
    repair = lock.nodes[lock.targets["converter"]["node"]]["facts"]["repair"]
    assert "FULLY_CONNECTED" in repair["kept_ops"] and len(repair["kept_float"]) == len(repair["kept_ops"])
    assert _top1(lock, "converter") >= 0.9


def test_tflite_repair_routes_follow_who_chose_the_options() -> None:
    from buildsys.planning.repair import repair_routes
    from buildsys.planning.routes import Route

    full = Route.parse(["pytorch", "pt2", "tflite-int8"])
    recipe = lambda name: Route.parse(["pytorch", "pt2", f"tflite-int8 (repair {name})"])  # noqa: E731
    preset = {"tflite-int8": {"mode": "full", "io": "float"}}
    # The preset chose the mode: every recipe, dynamic too (its alternative is not a candidate then).
    assert repair_routes(full, preset, True, written={"tflite-int8": set()}) == \
        [recipe("keep-float"), recipe("dynamic"), recipe("weight-only")]
    # The user wrote the mode: no recipe may change the scheme.
    assert repair_routes(full, preset, True, written={"tflite-int8": {"mode"}}) == [recipe("keep-float")]
    # Nothing chosen: `tflite-int8 (dynamic)` is a candidate already, so the dynamic recipe is not repeated.
    assert repair_routes(full, {}, True) == [recipe("keep-float"), recipe("weight-only")]
    # int8 I/O needs full int8: only keep-float fits.
    assert repair_routes(full, {"tflite-int8": {"io": "int8"}}, True, written={}) == [recipe("keep-float")]


def test_written_options_leave_out_what_a_preset_chose(tmp_path: Path) -> None:
    from buildsys.config.load import load
    from buildsys.planning.repair import written_options

    project = Project(tmp_path, ANDROID + PINNED)
    cfg = load(project.root / "deploy.yaml")
    assert written_options(cfg, "android", cfg.project.targets["android"].options) == {"tflite-int8": set()}
    assert written_options(cfg, "pinned", cfg.project.targets["pinned"].options) == {"tflite-int8": {"mode"}}


@pytest.mark.slow
def test_pinned_kept_ops_stay_float_and_weight_only_keeps_float_compute(tmp_path: Path) -> None:
    """The step on a tiny CNN (tests/helpers/models.py), no planner: ops pinned in `keep_float` come out float
    in ai-edge-quantizer's int8 file, the rest int8, float I/O as `io` says; weight-only stores int8 weights
    and computes in float, close to PyTorch."""
    import numpy as np
    from ai_edge_litert.interpreter import Interpreter

    from buildsys.formats import get_runtime
    from buildsys.formats.tflite.aeq import op_scopes
    from tests.helpers.models import make_model, torch_outputs, validation_feeds

    tiny = make_model(tmp_path / "proj", "cnn")
    pt2 = tmp_path / "pt2" / "model.pt2"
    tiny.run("pt2-from-pytorch", pt2.parent)
    tiny.run("tflite-from-pt2", tmp_path / "fp32", input_path=pt2)
    scopes = op_scopes((tmp_path / "fp32" / "model.tflite").read_bytes())
    last = list(scopes)[-1]  # the classifier's output op

    kept = tmp_path / "kept"
    metrics = tiny.run("tflite-int8-from-pt2", kept, input_path=pt2, precision="int8", keep_float=[last])
    assert metrics["quantizer"] == "ai-edge-quantizer" and metrics["repair"]["kept_float"] == [last]
    assert metrics["io"] == "float32" and metrics["scheme"].startswith("full int8 except")
    details = {d["name"]: d["dtype"] for d in Interpreter(model_path=str(kept / "model.tflite")).get_tensor_details()}
    assert details[last.rstrip(";")] == np.float32  # the kept op's output
    assert sum(dt == np.int8 for dt in details.values()) > len(scopes) // 2  # the others are int8

    weights = tmp_path / "weights"
    metrics = tiny.run("tflite-int8-from-pt2", weights, input_path=pt2, precision="int8", mode="weight-only")
    assert metrics["scheme"].startswith("weight-only") and metrics["tensor_dtypes"].get("int8", 0) > 0
    assert metrics["bytes"] < (tmp_path / "fp32" / "model.tflite").stat().st_size
    feeds = validation_feeds(tiny)
    session = get_runtime("litert").load(weights / "model.tflite", tiny.model, tiny.root)
    got = np.concatenate([session.run({"image": feeds["image"][i:i + 1]})[0] for i in range(len(feeds["image"]))])
    want = torch_outputs(tiny, feeds)[0]
    assert np.abs(got - want).max() < 0.05 * max(1.0, float(np.abs(want).max()))
