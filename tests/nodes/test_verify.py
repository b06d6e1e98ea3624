"""Acceptance resolution and output comparisons: numbers in, explained verdicts out."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from buildsys.config.schema import Acceptance, OutputSpec, Tolerance
from buildsys.errors import ConfigError
from buildsys.comparison import DEFAULTS, compare
from buildsys.nodes.verify import CheckOptions, resolve_acceptance

SCORES = OutputSpec(name="logits", kind="scores")
BOX = OutputSpec(name="box", kind="values")


def test_defaults_depend_on_precision() -> None:
    for precision in ("fp32", "fp16", "int8"):
        resolved = resolve_acceptance(Acceptance(), precision, [SCORES, BOX])
        # 'scores' outputs are judged by decisions, never by the range error (nor by token agreement)
        assert resolved["outputs"]["logits"] == {**DEFAULTS["fp32"], **DEFAULTS[precision], "max_range_error": None,
                                                 "min_token_agreement": None}
        assert resolved["outputs"]["box"]["max_range_error"] == DEFAULTS[precision].get("max_range_error")
        assert resolved["on_fail"] == "error"
    fp32, fp16, int8 = (DEFAULTS[p] for p in ("fp32", "fp16", "int8"))
    assert fp32["max_rel"] < fp16["max_rel"] and int8["max_rel"] is None
    assert fp32["min_cosine"] > fp16["min_cosine"] > int8["min_cosine"]
    assert int8["min_top1_agreement"] is not None and int8["max_accuracy_drop"] is not None


def test_target_fields_then_per_output_overrides() -> None:
    acceptance = Acceptance(max_abs=0.5, min_cosine=0.99, on_fail="warn",
                            outputs={"box": Tolerance(min_cosine=0.9, max_rel=0.2)})
    resolved = resolve_acceptance(acceptance, "int8", [SCORES, BOX])
    assert resolved["on_fail"] == "warn"
    assert resolved["outputs"]["logits"] == {**DEFAULTS["int8"], "max_abs": 0.5, "min_cosine": 0.99,
                                             "max_range_error": None, "min_token_agreement": None}
    # 'values' outputs have no argmax: score-only limits are dropped for them; the target judges this
    # one elementwise (max_abs, max_rel), so the int8 range-error default stays out of its way
    assert resolved["outputs"]["box"] == {"max_abs": 0.5, "max_rel": 0.2, "max_range_error": None, "min_cosine": 0.9,
                                          "min_top1_agreement": None, "max_accuracy_drop": None,
                                          "min_token_agreement": None}
    assert CheckOptions.model_validate(resolved).outputs["box"].max_rel == 0.2


def test_override_for_an_unknown_output_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"acceptance.outputs names 'logit', which is not an output of the model "
                                          r"— did you mean 'logits'\?"):
        resolve_acceptance(Acceptance(outputs={"logit": Tolerance(max_abs=1)}), "fp32", [SCORES])


def test_verify_imports_without_numpy() -> None:
    code = "import sys, buildsys.nodes.verify; print('numpy' in sys.modules, 'torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False False"


def scores(n: int = 50, classes: int = 5, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, classes)).astype(np.float32) * 3


def test_identical_outputs_pass() -> None:
    ref = scores()
    result = compare("logits", "scores", ref, ref.copy(), DEFAULTS["fp32"], labels=ref.argmax(1))
    assert result and result.passed
    rows = result.rows()
    assert rows[0] == "max_abs 0.0e+00 (not checked)"
    assert "max_rel 0.0e+00 <= 1.0e-04" in rows and "top1_agreement 1 >= 0.99" in rows
    assert str(result).startswith("logits: passed")


def test_small_error_fails_fp32_and_says_by_how_much() -> None:
    ref = scores()
    observed = ref.copy()
    observed[3, 1] += np.abs(ref).max() * 3.1e-3
    result = compare("logits", "scores", ref, observed, DEFAULTS["fp32"])
    assert not result
    assert "max_rel 3.1e-03 > 1.0e-04" in result.rows()
    assert result.failures() == ["max_rel 3.1e-03 > 1.0e-04"]
    assert str(result).startswith("logits: FAILED")
    metrics = result.as_dict()
    assert metrics["max_rel"] == {"observed": pytest.approx(3.1e-3, rel=1e-3), "allowed": 1e-4, "op": "<=", "ok": False}
    assert metrics["passed"] is False
    assert compare("logits", "scores", ref, observed, DEFAULTS["fp16"])  # within fp16 limits


def test_flipped_decisions_fail_agreement_and_accuracy() -> None:
    ref = scores(n=100)
    labels = ref.argmax(1)
    observed = ref.copy()
    observed[:5] = -observed[:5]  # five decisions change, and are now wrong
    result = compare("logits", "scores", ref, observed, DEFAULTS["int8"], labels=labels)
    assert not result
    agreement = next(m for m in result.metrics if m.name == "top1_agreement")
    accuracy = next(m for m in result.metrics if m.name == "accuracy")
    assert agreement.observed == pytest.approx(0.95) and agreement.ok  # 95 % >= 90 %
    assert accuracy.observed == pytest.approx(0.95) and accuracy.allowed == pytest.approx(0.97) and not accuracy.ok
    assert "accuracy 0.95 < 0.97 (reference 1, allowed drop 0.03)" in result.failures()
    assert any(f.startswith("cosine -1 < 0.9") for f in result.failures())  # a sign flip reverses the vector
    assert result.as_dict()["reference_accuracy"] == 1.0


def test_accuracy_drop_within_budget_passes() -> None:
    ref = scores(n=100)
    labels = ref.argmax(1)
    labels[:10] = (labels[:10] + 1) % 5  # reference accuracy 0.9
    observed = ref.copy()
    observed[10:12] = np.roll(observed[10:12], 1, axis=1)  # two correct samples become (likely) wrong
    result = compare("logits", "scores", ref, observed, {"max_accuracy_drop": 0.03, "min_top1_agreement": 0.9},
                     labels=labels)
    assert result, result.rows()


def test_shape_mismatch_fails_and_says_so() -> None:
    result = compare("box", "values", np.zeros((4, 2)), np.zeros((4, 3)), DEFAULTS["fp32"])
    assert not result
    assert result.rows() == ["shape [4, 3] != reference shape [4, 2]"]
    assert result.as_dict()["problem"] == "shape [4, 3] != reference shape [4, 2]"


def test_nan_fails() -> None:
    ref = np.ones((3, 2), np.float32)
    observed = ref.copy()
    observed[1, 1] = np.nan
    result = compare("box", "values", ref, observed, {})
    assert not result and "1 non-finite value(s)" in str(result)


def test_nan_where_the_reference_has_numbers_is_a_numeric_miss_that_repair_and_rewrites_answer() -> None:
    """An overflow (NaN / inf out, numbers in the reference) counts as a missed tolerance (planning/failures.py
    `_missed_tolerance`): the float route's `precise` rewrites and a quantizing route's repair answer it. A NaN the
    reference has too is the model's own, not a miss to repair."""
    from buildsys.planning.failures import _missed_tolerance

    ref = np.ones((3, 2), np.float32)
    observed = ref.copy()
    observed[1, 1] = np.inf
    overflow = compare("energy", "values", ref, observed, {})
    assert not overflow and overflow.extra["non_finite"] == 1
    assert _missed_tolerance({"outputs": {"energy": overflow.as_dict()}})
    ref[1, 1] = np.nan
    own = compare("energy", "values", ref, observed, {})
    assert not own and "non_finite" not in own.extra
    assert not _missed_tolerance({"outputs": {"energy": own.as_dict()}})


def test_unset_limits_are_reported_but_not_checked() -> None:
    ref = scores()
    result = compare("logits", "scores", ref, ref + 1.0, Tolerance())
    assert result
    assert all("(not checked)" in row for row in result.rows())


def test_cosine_is_the_worst_sample_and_zero_vectors_are_equal() -> None:
    ref = np.array([[1.0, 0.0], [0.0, 0.0], [1.0, 1.0]])
    observed = np.array([[1.0, 0.0], [0.0, 0.0], [1.0, 0.0]])
    result = compare("v", "values", ref, observed, {"min_cosine": 0.8})
    cosine = next(m for m in result.metrics if m.name == "cosine")
    assert cosine.observed == pytest.approx(np.sqrt(0.5)) and not result
    assert "cosine 0.7071 < 0.8" in result.failures()


def test_one_value_per_sample_is_compared_over_the_batch() -> None:
    """The cosine of two single numbers is only their sign: a [B, 1] probability 0.9 read as 0.1 would pass."""
    ref = np.array([[0.9], [0.1], [0.8], [0.2]])
    observed = np.array([[0.1], [0.9], [0.2], [0.8]])  # every decision flipped, every sign kept
    result = compare("prob", "values", ref, observed, {"min_cosine": 0.9})
    cosine = next(m for m in result.metrics if m.name == "cosine")
    assert cosine.observed == pytest.approx(0.5 / 1.5) and not result
    assert "(over the batch: one value per sample)" in result.failures()[0]
