"""An ill-conditioned model (buildsys/nodes/intrinsic.py): its own float32 is further from its float64 than the fp32
ceiling, so an fp32 check that misses its float32 reference is judged against the float64 outputs the reference
kept, at twice PyTorch float32's own distance from them. A wrong artifact still fails; a model float32 does not
determine at all is said to be unverifiable. Real ONNX Runtime numbers on a chaotic model no rewrite names."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.formats.onnx.test_steps_onnx import check
from tests.helpers.models import Tiny, make_model


def _reference(tiny: Tiny, out: Path) -> dict:
    return tiny.run("reference", out, extra={"source_format": "pytorch"})


@pytest.fixture(scope="module")
def chaotic(tmp_path_factory: pytest.TempPathFactory) -> tuple[Tiny, Path]:
    root = tmp_path_factory.mktemp("chaotic")
    tiny = make_model(root / "p", "chaotic")
    metrics = _reference(tiny, root / "ref")
    own = metrics["intrinsic"]["fp32"]["outputs"]["y"]
    assert own["cosine"] < 0.999  # past the fp32 ceiling: ill-conditioned
    with np.load(root / "ref/reference.npz") as ref:
        assert "float64:y" in ref.files and ref["float64:y"].dtype == np.float64
    return tiny, root


def test_a_correct_export_is_judged_against_float64_and_passes(chaotic: tuple[Tiny, Path], tmp_path: Path) -> None:
    tiny, root = chaotic
    tiny.run("onnx-from-pytorch", tmp_path / "onnx")
    result = check(tiny, tmp_path / "check", "onnx", tmp_path / "onnx/model.onnx", root / "ref/reference.npz")
    assert result["passed"] is True, result
    y = result["outputs"]["y"]
    assert y["judged_against"].startswith("float64: the model is ill-conditioned") and "missed against float32" in y["judged_against"]
    assert "against the float64 outputs" in y["cosine"]["note"]


def test_a_wrong_artifact_still_fails(chaotic: tuple[Tiny, Path], tmp_path: Path) -> None:
    tiny, root = chaotic
    other = make_model(tmp_path / "other", "chaotic", seed=1)  # the same architecture with other weights
    other.run("onnx-from-pytorch", tmp_path / "onnx")
    result = check(tiny, tmp_path / "check", "onnx", tmp_path / "onnx/model.onnx", root / "ref/reference.npz")
    assert result["passed"] is False
    assert result["outputs"]["y"]["missed_against_float64"]


def test_a_model_float32_does_not_determine_is_not_verifiable(tmp_path: Path) -> None:
    wild = make_model(tmp_path / "p", "chaotic-wild")
    _reference(wild, tmp_path / "ref")
    wild.run("onnx-from-pytorch", tmp_path / "onnx")
    result = check(wild, tmp_path / "check", "onnx", tmp_path / "onnx/model.onnx", tmp_path / "ref/reference.npz")
    assert result["passed"] is False
    assert "float32 does not determine them" in result["outputs"]["y"]["not_verifiable"]


def test_a_limit_the_user_wrote_is_never_judged_against_float64(chaotic: tuple[Tiny, Path], tmp_path: Path) -> None:
    tiny, root = chaotic
    tiny.run("onnx-from-pytorch", tmp_path / "onnx")
    result = check(tiny, tmp_path / "check", "onnx", tmp_path / "onnx/model.onnx", root / "ref/reference.npz",
                   outputs={"y": {"min_cosine": 0.9999}})
    assert result["passed"] is False and "judged_against" not in result["outputs"]["y"]


def test_a_localisation_past_its_budget_still_reports_the_miss(chaotic: tuple[Tiny, Path], tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    from buildsys.nodes import check as check_module

    tiny, root = chaotic
    other = make_model(tmp_path / "other", "chaotic", seed=1)
    other.run("onnx-from-pytorch", tmp_path / "onnx")
    monkeypatch.setattr(check_module, "LOCALISE_BUDGET_S", 1e-4)
    result = check(tiny, tmp_path / "check", "onnx", tmp_path / "onnx/model.onnx", root / "ref/reference.npz")
    assert result["passed"] is False and result["outputs"]["y"]["missed_against_float64"]
    assert result["localisation"]["not_available"].startswith("localisation stopped after 0.0001 s")
