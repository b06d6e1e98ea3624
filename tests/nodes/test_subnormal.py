"""Outputs in float32's subnormal range (buildsys/nodes/verify.py `_flushed`): most runtimes flush values below
float32's smallest normal number to zero (and float16 cannot hold them), so the check compares with them flushed on
both sides. Where every value of the reference is subnormal (a deep model whose seeded weights shrink its signal to
nothing, as Hugging Face's MobileViT's do), the check passes a faithful artifact with a caveat saying it compared
zeros, and still fails an artifact whose outputs are not. Real runtimes on a model no rewrite names."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from buildsys.comparison import FLOAT32_TINY, compare
from tests.helpers.models import make_model

LIMITS = {"max_range_error": 0.1, "min_cosine": 0.9}


def test_an_all_subnormal_reference_is_compared_flushed_and_says_so() -> None:
    rng = np.random.default_rng(0)
    reference = (rng.standard_normal((4, 6)) * 1e-40).astype(np.float32)
    assert 0 < np.abs(reference).max() < FLOAT32_TINY
    flushed = compare("y", "values", reference, np.zeros_like(reference), LIMITS)
    assert flushed.passed and "every value of the reference is subnormal" in flushed.extra["subnormal"]
    wrong = compare("y", "values", reference, np.full_like(reference, 1e-30), LIMITS)
    assert not wrong.passed  # a normal number where the reference has none is still an error


def test_subnormal_values_beside_normal_ones_change_nothing_and_need_no_caveat() -> None:
    reference = np.array([[1.0, -2.0, 1e-40, 3.0]], np.float32)
    observed = np.array([[1.0, -2.0, 0.0, 3.0]], np.float32)
    result = compare("y", "values", reference, observed, {**LIMITS, "max_abs": 0.0})
    assert result.passed and "subnormal" not in result.extra


DEPLOY = """\
models:
  vanishing:
    source: {factory: "tinymodels:vanishing", weights: vanishing.pt}
    inputs: [{name: x, shape: [batch, 8]}]
    outputs: [{name: y, kind: values}]
    data: {validation: val.npz}
targets:
  server: {model: vanishing, format: onnx}
  ios: {model: vanishing, format: coreml, precision: fp16}
  edge: {model: vanishing, format: executorch}
"""


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Any]:
    import modelbuild

    root = tmp_path_factory.mktemp("subnormal")
    make_model(root, "vanishing", calibration=False)
    (root / "deploy.yaml").write_text(DEPLOY)
    return root, modelbuild.load(root / "deploy.yaml").build(jobs=1, keep_going=True, check=False)


@pytest.mark.slow
@pytest.mark.parametrize("target", ["server", "ios", "edge"])
def test_a_model_whose_outputs_are_subnormal_is_verified_with_a_caveat(built: tuple[Path, Any], target: str) -> None:
    """Core ML at float16 computes zeros; the others flush or keep the subnormals: each passes, saying what it
    compared; without the flush the float16 artifact missed by max_rel 1 (all of it)."""
    root, _ = built
    lock = json.loads((root / "deploy.lock").read_text())
    check = lock["nodes"][f"verify:{target}"]
    assert check["verdict"].startswith("passed"), check
    caveats = [c for c in check.get("caveats", []) if c["what"] == "y checked at zero"]
    assert caveats and "every value of the reference is subnormal" in caveats[0]["why"], check.get("caveats")
