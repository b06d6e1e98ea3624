"""Accuracy repair of ExecuTorch int8 (docs/repair.md), end to end through the `modelbuild` CLI: the TinyViT of
tests/planning/test_repair.py, whose full static int8 by XNNPACKQuantizer zeroes every logit (its classifier reads a
cat whose one int8 range is the outlier's), misses top-1 0.9 in the ExecuTorch runtime; the planner's next
route searches per-node sensitivity on the calibration set, keeps the fewest nodes in float, and the lowered
.pte passes the same check in the ExecuTorch runtime. A no-op build neither checks nor searches again.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.planning.test_repair import Project, _top1

pytest.importorskip("executorch")

EDGE = "edge: {model: vit, format: executorch, precision: int8}\n"
#: Repair forbidden: the full int8 and the dynamic alternative, both missing.
STRICT = "strict: {model: vit, format: executorch, precision: int8, repair: false}\n"
#: The nodes pinned by module path: no search, the same program as the recipe's.
PINNED = ("pinned: {model: vit, format: executorch, precision: int8, "
          "options: {executorch-int8: {keep_float: [cat, head]}}}\n")
TYPO = "typo: {model: vit, format: executorch, precision: int8, options: {executorch-int8: {keep_float: [haed]}}}\n"


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Project:
    return Project(tmp_path_factory.mktemp("et-repair"), EDGE + STRICT + PINNED + TYPO)


@pytest.mark.slow
def test_executorch_full_int8_misses_and_keep_float_passes(project: Project) -> None:
    proc = project.run("build", "edge")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "edge: made by pytorch → pt2 → executorch-int8 (repair keep-float)" in proc.stdout
    lock = project.lock()
    assert lock.targets["edge"]["route"] == ["pytorch", "pt2", "executorch-int8 (repair keep-float)"]
    [dropped] = lock.routes["edge"]["dropped"]
    assert dropped["route"] == ["pytorch", "pt2", "executorch-int8"] and dropped["repair"] is True
    assert dropped["observed"]["logits"]["top1_agreement"] < 0.9  # full int8, in the ExecuTorch runtime
    assert _top1(lock, "edge") >= 0.9  # the repaired .pte, same check, same runtime
    node = lock.targets["edge"]["node"]
    repair = lock.nodes[node]["facts"]["repair"]
    assert repair["recipe"] == "keep-float" and repair["baseline"]["passed"] is False
    # The classifier and the cat it reads: the pair that only fails together, each ruinous alone.
    assert set(repair["kept_float"]) == {"cat", "linear_5"}
    assert {n for n, _ in repair["sensitivity"][:2]} == {"cat", "linear_5"}
    assert [t["passed"] for t in repair["trials"]] == [False, True]
    assert lock.nodes[node]["components"]["options"]["repair_goal"]["logits"]["min_top1_agreement"] == 0.9
    explained = json.loads(project.run("explain", node).stdout)
    assert any(n.startswith("accuracy repair keep-float: kept 2 layer(s) in float") for n in explained["notes"])

    # A no-op build: no factory call, no check, no search.
    calls = project.calls()
    again = project.run("build", "edge")
    assert again.returncode == 0 and "Nothing to do" in again.stdout and project.calls() == calls


@pytest.mark.slow
def test_executorch_without_repair_misses_and_pinned_modules_pass(project: Project) -> None:
    strict = project.run("build", "strict")
    assert strict.returncode == 1 and "logits: cosine 0 < 0.9" in strict.stdout
    assert "repair" not in strict.stdout
    # Localisation (docs/localisation.md) through the per-op XNNPACK stand-in: the classifier reading the int8 cat
    misses = json.loads(project.run("explain", "verify:strict").stdout)["misses"]
    assert misses and all(m["localisation"]["first"] == "head" for m in misses), misses
    assert all("per-op XNNPACK re-lowering" in m["localisation"]["headline"] for m in misses)
    pinned = project.run("build", "pinned")
    assert pinned.returncode == 0, pinned.stdout + pinned.stderr
    assert _top1(project.lock(), "pinned") >= 0.9
    typo = project.run("build", "typo")
    assert typo.returncode == 1 and "keep_float names 'haed', which is neither a node nor a module" in typo.stdout


def test_executorch_int8_declares_keep_float(tmp_path: Path) -> None:
    from buildsys.planning.repair import repair_routes
    from buildsys.planning.routes import Route

    full = Route.parse(["pytorch", "pt2", "executorch-int8"])
    assert repair_routes(full, {}, True) == [Route.parse(["pytorch", "pt2", "executorch-int8 (repair keep-float)"])]
    assert repair_routes(Route.parse(["pytorch", "pt2", "executorch-int8 (dynamic)"]), {}, True) == []  # an alternative
