"""The Python API (`import modelbuild`): results as objects, typed errors, events, a notebook-style use."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import modelbuild
from tests.conftest import REPO, TinyProject


@pytest.fixture()
def cwd(tiny: TinyProject):  # the API resolves nothing against the working directory; prove it
    old = Path.cwd()
    os.chdir(tiny.root.parent)
    yield tiny
    os.chdir(old)


def test_plan_build_noop_and_results(cwd: TinyProject) -> None:
    tiny = cwd
    project = modelbuild.load(tiny.config)
    assert set(project.targets) == {"ts", "server", "int8"} and project.models == ["tiny"]
    plan = project.plan(["server"])
    assert not plan.fresh and plan.routes == {"server": ["pytorch", "onnx"]}
    assert {n.name: (n.state, n.action, n.reasons) for n in plan.nodes}["tiny/onnx"] == ("stale", "run", ["not built yet"])

    events: list[modelbuild.Event] = []
    report = project.build(["server"], on_event=events.append)
    assert report.ok and set(report.ran) == {"tiny/onnx", "tiny/reference", "verify:server"}
    target = report.targets["server"]
    assert target.status == "passed" and target.format == "onnx" and target.precision == "fp32"
    assert target.artifact == tiny.root / "artifacts/server" and (target.artifact / "model.onnx").is_file()
    assert target.size_bytes == (target.artifact / "model.onnx").stat().st_size
    assert target.metrics["outputs"]["y"]["max_rel"]["ok"] is True
    # Size against fp32 and speed against PyTorch eager, as the summary shows them, in `build --json` too.
    assert target.size_ratio and target.size_ratio >= 1 and target.ideal_ratio  # a tiny model: the graph outweighs it
    assert target.latency and target.latency["min_ms"] > 0 and target.eager_latency and target.eager_latency["min_ms"] > 0
    listed = report.as_json()["targets"]["server"]
    assert (listed["size_ratio"], listed["latency"], listed["eager_latency"]) == (
        target.size_ratio, target.latency, target.eager_latency)
    # One started and one ended event per node that ran, counted, with the plan's reasons.
    started = [e for e in events if e.event == "started"]
    assert {e.node for e in started} == set(report.ran) and started[0].reasons == ["not built yet"]
    ended = [e for e in events if e.event != "started"]
    assert [e.done for e in ended] == list(range(1, len(ended) + 1)) and ended[-1].total == 3
    assert ended[-1].as_json()["event"] == "built" and "metrics" in ended[-1].as_json()

    again = modelbuild.load(tiny.config).build(["server"])
    assert again.ok and again.ran == [] and modelbuild.load(tiny.config).plan(["server"]).fresh


def test_typed_errors(cwd: TinyProject) -> None:
    tiny = cwd
    tiny.edit("format: torchscript", "format: tflte")
    with pytest.raises(modelbuild.ConfigError, match=r"deploy\.yaml:\d+: targets\.ts\.format: unknown format 'tflte'"):
        modelbuild.load(tiny.config).plan()
    tiny.edit("format: tflte", "format: torchscript")
    with pytest.raises(modelbuild.PlanError, match="unknown target 'nope'"):
        modelbuild.load(tiny.config).plan(["nope"])
    with pytest.raises(modelbuild.ConfigError, match="no such file|does not exist|not found"):
        modelbuild.load(tiny.root / "missing.yaml")


def test_a_failed_build_raises_with_its_report(cwd: TinyProject) -> None:
    tiny = cwd
    tiny.edit("      onnx: {opset: 18}\n  int8", "      onnx: {opset: 18}\n    acceptance: {max_size_mb: 0.0001}\n  int8")
    with pytest.raises(modelbuild.BuildFailed) as caught:
        modelbuild.load(tiny.config).build(["server"])
    report = caught.value.report  # type: ignore[attr-defined]
    assert not report.ok and [r.name for r in report.failed] == ["verify:server"]
    assert report.targets["server"].status == "not delivered" and report.targets["server"].artifact is None


def test_a_target_that_fails_after_passing_is_not_delivered(cwd: TinyProject) -> None:
    """A target delivered once and then asked of a model that no route builds: the build says "not delivered", not
    the earlier build's "passed", and removes the earlier artifact (it is another model's)."""
    tiny = cwd
    assert modelbuild.load(tiny.config).build(["server"]).targets["server"].status == "passed"
    tiny.edit("kwargs: {calls: ", "kwargs: {fail: true, calls: ")
    with pytest.raises(modelbuild.BuildFailed) as caught:
        modelbuild.load(tiny.config).build(["server"], keep_going=True)
    target = caught.value.report.targets["server"]  # type: ignore[attr-defined]
    assert (target.status, target.artifact, target.size_bytes, target.metrics) == ("not delivered", None, 0, {})
    assert not (tiny.root / "artifacts" / "server").exists()
    assert "server" not in json.loads((tiny.root / "deploy.lock").read_text())["targets"]
    unchecked = modelbuild.load(tiny.config).build(["server"], check=False)  # the same, returned
    assert not unchecked.ok and [r.name for r in unchecked.failed] == ["verify:server"]  # a miss is re-judged


def test_notebook_use_in_a_fresh_interpreter(tiny: TinyProject) -> None:
    """The docs' snippet, run as a user would: a fresh process that imports only modelbuild."""
    script = f"""
import sys, modelbuild
project = modelbuild.load({str(tiny.config)!r})
stale = [n.name for n in project.plan(["ts"]).stale]
report = project.build(["ts"])
print(stale, report.ok, report.targets["ts"].status, report.targets["ts"].artifact.name)
print(sorted(m for m in ("torch", "tensorflow", "coremltools") if m in sys.modules))
"""
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO, timeout=600)
    assert proc.returncode == 0, proc.stderr
    first, heavy = proc.stdout.strip().splitlines()
    assert first == "['tiny/reference', 'tiny/torchscript', 'verify:ts'] True passed ts"
    assert heavy == "[]"  # the orchestrator never imports a toolchain: workers do
