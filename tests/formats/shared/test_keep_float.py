"""The one keep-float search (buildsys/formats/keep_float.py) on candidates whose error is known: which layers it
keeps, and that it wants a margin on its own data before it stops (the check judges other data)."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import pytest

from buildsys.config.schema import Model
from buildsys.formats.keep_float import MARGIN, Candidates, Judge, NoRecipe, search, with_margin

MODEL = Model.model_validate({"source": {"factory": "m:build"}, "inputs": [{"name": "x", "shape": ["batch", 4]}],
                              "outputs": [{"name": "y", "kind": "values"}]})
REFERENCE = {"y": np.random.default_rng(0).standard_normal((8, 4096)).astype(np.float32)}  # cosines as computed
GOAL = {"y": {"min_cosine": 0.9}}


class Layers(Candidates[frozenset]):
    """Each unit, reduced, adds noise of its own size to the float outputs; an artifact is the set reduced."""

    what = "layers"

    def __init__(self, noise: dict[str, float]) -> None:
        super().__init__(MODEL, None, Path("."))  # type: ignore[arg-type]
        self.noise = noise

    def make(self, keep: Sequence[str], only: Sequence[str] | None, slot: str) -> frozenset:
        return frozenset(only if only is not None else [u for u in self.noise if u not in keep])

    def units(self, baseline: frozenset) -> list[str]:
        return list(self.noise)

    def run(self, artifact: frozenset) -> tuple[dict[str, np.ndarray], float | None]:
        rng = np.random.default_rng(1)
        y = REFERENCE["y"].copy()
        for unit in sorted(artifact):
            y += self.noise[unit] * rng.standard_normal(y.shape).astype(np.float32)
        return {"y": y}, None

    def size(self, artifact: frozenset) -> int | None:
        return len(artifact)


def test_a_limit_with_its_margin_leaves_that_share_of_the_allowance() -> None:
    tight = with_margin({"min_cosine": 0.9, "max_range_error": 0.1, "max_rel": 1e-2, "outputs": None})
    assert tight == pytest.approx({"min_cosine": 1 - 0.1 * (1 - MARGIN), "max_range_error": 0.1 * (1 - MARGIN),
                                   "max_rel": 1e-2 * (1 - MARGIN), "outputs": None})


def test_the_search_keeps_the_most_sensitive_layers_until_the_goal_holds_with_its_margin() -> None:
    # cosine of y + n·noise against y ≈ 1 / sqrt(1 + Σn²): 'big' alone reduced misses, 'mid' alone just meets 0.9
    # without the margin (0.91 > 0.9, < 0.925), the small ones clear it
    candidates = Layers({"a": 0.05, "big": 0.8, "b": 0.05, "mid": 0.45, "c": 0.05})
    artifact, record = search(candidates, Judge(MODEL.outputs, GOAL, REFERENCE), "int8")
    assert record.baseline is not None and not record.baseline.passed
    first, second = record.trials[:2]
    assert first.kept == ["big"] and first.measured.passed and not first.measured.clear  # met, but only just
    assert second.kept == ["big", "mid"] and second.measured.clear
    assert record.kept_float == ["big", "mid"] and artifact == frozenset({"a", "b", "c"})
    assert record.as_fact()["trials"][0]["with_margin"] is False


def test_without_a_trial_that_clears_the_margin_the_first_that_meets_the_goal_is_taken() -> None:
    # every unit adds as much: keeping any set of 8 leaves too many reduced to clear the margin
    candidates = Layers({f"l{i}": 0.4 if i < 2 else 0.13 for i in range(20)})
    artifact, record = search(candidates, Judge(MODEL.outputs, GOAL, REFERENCE), "int8")
    met = [t for t in record.trials if t.measured.passed]
    assert met and not any(t.measured.clear for t in record.trials)
    assert record.kept_float == met[0].kept and artifact == candidates.make(met[0].kept, None, "again")


def test_a_search_that_never_meets_the_goal_is_no_recipe() -> None:
    with pytest.raises(NoRecipe, match=r"keeping the 8 most sensitive of 12 layers"):
        search(Layers({f"l{i}": 0.5 for i in range(12)}), Judge(MODEL.outputs, GOAL, REFERENCE), "int8")


class Slow(Layers):
    """Layers whose every trial takes `seconds` (a conversion and a run), against a step deadline."""

    def __init__(self, noise: dict[str, float], seconds: float) -> None:
        super().__init__(noise)
        self.seconds, self.runs = seconds, 0

    def run(self, artifact: frozenset) -> tuple[dict[str, np.ndarray], float | None]:
        import time

        time.sleep(self.seconds)
        self.runs += 1
        return super().run(artifact)


def test_a_step_deadline_coarsens_the_sensitivity_and_ends_the_search_before_the_budget() -> None:
    """Twenty layers, each trial 0.05 s, 0.6 s of step left: the sensitivity is measured in fewer, larger groups
    (not twenty trials), and the search ends by itself, with a result or a NoRecipe, before the deadline."""
    import time

    noise = {f"l{i}": 0.05 for i in range(20)} | {"big": 0.8}
    candidates = Slow(noise, 0.05)
    began = time.monotonic()
    try:
        _, record = search(candidates, Judge(MODEL.outputs, GOAL, REFERENCE), "int8", deadline=began + 0.6)
    except NoRecipe as exc:
        assert "stopped before the step's time budget ran out" in str(exc)
    else:
        assert "big" in record.kept_float and len(record.kept_float) < len(noise)  # its group, kept whole
    assert time.monotonic() - began < 0.6
    assert candidates.runs < 1 + len(noise)  # the baseline, then fewer sensitivity trials than layers
    # without a deadline, every layer is measured alone
    unbounded = Slow(noise, 0.0)
    _, record = search(unbounded, Judge(MODEL.outputs, GOAL, REFERENCE), "int8")
    assert unbounded.runs >= 1 + len(noise) and record.kept_float == ["big"]


class Overflowing(Layers):
    """Layers whose outputs stay close, but where 'square' reduced makes the runtime see an overflow (a fault: the
    MIL reference's fp16 overflow, which the Neural Engine would turn into inf)."""

    def run(self, artifact: frozenset) -> tuple[dict[str, np.ndarray], float | None]:
        self.faults = ["fp16 overflow at mul 'square'"] if "square" in artifact else []
        return super().run(artifact)


def test_a_fault_fails_a_trial_whatever_its_outputs_and_its_unit_is_kept() -> None:
    candidates = Overflowing({"a": 0.01, "square": 0.01, "b": 0.01})
    artifact, record = search(candidates, Judge(MODEL.outputs, GOAL, REFERENCE), "fp16")
    assert record.baseline is not None and not record.baseline.passed  # its cosine alone would pass
    assert record.sensitivity[0][0] == "square" and record.kept_float == ["square"]
    assert "square" not in artifact


def test_a_check_failed_by_a_fault_opens_repair() -> None:
    from buildsys.planning.failures import _missed_tolerance

    fault = {"findings": [{"text": "fp16 overflow at add 'out1'", "fails": True}], "outputs": {"y": {"cosine": {"ok": True}}}}
    assert _missed_tolerance(fault)
    assert not _missed_tolerance({"findings": [{"text": "fp16 underflow", "fails": False}], "outputs": {}})
