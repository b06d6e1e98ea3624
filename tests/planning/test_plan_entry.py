"""One plan, whoever asks: `modelbuild plan`, `build --dry-run` and the Python API take the same routes for the
same project, with the routes a missed int8 check repairs and those op coverage reorders (planning.plan.plan is
the one entry point); and deploy.lock is written by the planning package's lock writer alone."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from tests.planning.test_repair import NARROW
from tests.planning.test_repair import Project as VitProject
from tests.rewrites.test_rewrite_routes import MODELS as REWRITE_MODELS
from tests.rewrites.test_rewrite_routes import Project as RewriteProject


def _three_ways(root: Path, env: dict[str, str]) -> list[dict[str, Any]]:
    """The routes and candidates `plan --json`, `build --dry-run --json` and the API's dry run give (the API's
    plain `plan` too, once the op analysis is cached)."""
    def cli(*args: str) -> dict[str, Any]:
        proc = subprocess.run([sys.executable, "-m", "buildsys", *args], cwd=root, capture_output=True, text=True,
                              timeout=900, env=env)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        data = json.loads(proc.stdout)
        return {"routes": data["routes"], "candidates": data["candidate_routes"]}

    code = textwrap.dedent("""\
        import json, sys
        import modelbuild
        project = modelbuild.load("deploy.yaml")
        dry = project.dry_run()
        plan = project.plan()
        print(json.dumps([{t: r.words() for t, r in dry.dag.routes.items()},
                          {t: [r.words() for r in rs] for t, rs in dry.dag.candidates.items()}, plan.routes]))""")
    proc = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=900, env=env)
    assert proc.returncode == 0, proc.stderr
    dry_routes, dry_candidates, api_routes = json.loads(proc.stdout)
    return [cli("build", "--dry-run", "--json"), cli("plan", "--json"),
            {"routes": dry_routes, "candidates": dry_candidates}, {"routes": api_routes, "candidates": dry_candidates}]


@pytest.mark.slow  # a real int8 build, its repair, and a dry run each way
def test_plan_dry_run_and_api_take_the_repair_route(tmp_path: Path) -> None:
    project = VitProject(tmp_path, NARROW)
    assert project.run("build").returncode == 1  # full int8 misses, and so does its one recipe
    assert [r["route"][-1] for r in project.lock().routes["narrow"]["dropped"]] == \
        ["onnx-int8", "onnx-int8 (repair per-channel)"]
    seen = _three_ways(project.root, {**os.environ, "NO_COLOR": "1"})
    assert all(s == seen[0] for s in seen), seen
    repaired = ["pytorch", "onnx", "onnx-int8 (repair per-channel)"]
    assert seen[0]["routes"]["narrow"] == repaired  # exhausted: the last route tried, as the lock says
    assert seen[0]["candidates"]["narrow"] == [["pytorch", "onnx", "onnx-int8"], repaired]


@pytest.mark.slow  # the op analysis: torch.export of the model and coremltools' registry
@pytest.mark.skipif(importlib.util.find_spec("coremltools") is None, reason="needs coremltools")
def test_plan_dry_run_and_api_order_routes_by_op_coverage(tmp_path: Path) -> None:
    project = RewriteProject(tmp_path, "rec-ios: {model: recsys, format: coreml}\n")
    env = {**os.environ, "NO_COLOR": "1", "MODELBUILD_OP_COVERAGE": "1"}
    proc = subprocess.run([sys.executable, "-m", "buildsys", "plan", "--ops"], cwd=project.root, capture_output=True,
                          text=True, timeout=900, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    seen = _three_ways(project.root, env)
    assert all(s == seen[0] for s in seen), seen
    # coremltools lacks embedding_bag: the route with the rewrite that removes it comes first
    assert seen[0]["routes"]["rec-ios"] == ["pytorch", "torchscript (rewrite scatter)", "coreml"]
    assert "recsys" in REWRITE_MODELS
