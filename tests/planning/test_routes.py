"""Several routes per format: tried in order until one's artifact passes its check, failures remembered
under their key, `via:` pinning one route, and a target no route can make named with every route's reason."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from buildsys.storage.lock import Lock

GATE = '''\
import os
import torch


class Gate(torch.nn.Module):
    """A branch on the data, read through NumPy: torch.export's fake tensors have no data to read (a value read
    as a tensor it takes from the example instead: lowering/export.py); torch.jit.trace records the taken path."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.fc = torch.nn.Linear(4, 3)

    def forward(self, x):
        if x.abs().sum().numpy() >= 0:  # always true, but known only once the data is there
            return self.fc(x)
        return -self.fc(x)


def build():
    with open(os.path.join(os.path.dirname(__file__), "calls.txt"), "a") as f:
        f.write("x")
    return Gate()
'''

DEPLOY = """\
models:
  m:
    source: {factory: gate:build}
    inputs: [{name: x, shape: [batch, 4]}]
    outputs: [{name: y}]
    data: {validation: val.npz}
targets:
  t:
    model: m
    format: onnx
    ROUTING
"""

PT2_ROUTE, TS_ROUTE = ["pytorch", "pt2", "onnx"], ["pytorch", "torchscript", "onnx"]


class Project:
    def __init__(self, root: Path, routing: str):
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        (root / "gate.py").write_text(GATE)
        x = np.random.default_rng(0).standard_normal((16, 4)).astype("float32")
        np.savez(root / "val.npz", x=x)
        (root / "deploy.yaml").write_text(textwrap.dedent(DEPLOY).replace("ROUTING", routing))

    def run(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "buildsys", *args], cwd=self.root, capture_output=True, text=True,
                              timeout=600, env={**os.environ, "NO_COLOR": "1", "COLUMNS": "250"})

    def calls(self) -> int:
        path = self.root / "calls.txt"
        return len(path.read_text()) if path.exists() else 0

    def lock(self) -> Lock:
        return Lock.read(self.root / "deploy.lock")


def test_candidate_routes_fewest_steps_first(tmp_path: Path) -> None:
    project = Project(tmp_path, "description: default routes")
    plan = json.loads(project.run("plan", "--json").stdout)
    assert plan["candidate_routes"]["t"] == [["pytorch", "onnx"], PT2_ROUTE, TS_ROUTE]
    assert plan["routes"]["t"] == ["pytorch", "onnx"]  # the shortest leads: what a target built before


def test_first_route_fails_second_passes_and_a_noop_does_not_retry(tmp_path: Path) -> None:
    project = Project(tmp_path, "routes: [[pt2], [torchscript]]")
    proc = project.run("build")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "rerouted verify:t" in proc.stdout and "t: made by pytorch → torchscript → onnx" in proc.stdout
    assert "t: route pytorch → pt2 → onnx dropped at m/pt2: model 'm': torch.export failed" in proc.stdout
    lock = project.lock()
    assert lock.targets["t"]["route"] == TS_ROUTE and (tmp_path / "artifacts/t/model.onnx").is_file()
    [dropped] = lock.routes["t"]["dropped"]
    assert dropped["route"] == PT2_ROUTE and dropped["node"] == "m/pt2" and "numpy" in dropped["reason"]
    # The release bundle's manifest says the same: which route made the artifact, which was dropped and why.
    deploy = tmp_path / "deploy.yaml"
    deploy.write_text(deploy.read_text() + "bundles:\n  release: {targets: [t], version: 1.0.0}\n")
    assert project.run("bundle", "release").returncode == 0
    import tarfile

    with tarfile.open(tmp_path / "artifacts/bundles/release-1.0.0.tar.gz") as tar:
        [artifact] = json.load(tar.extractfile("manifest.json"))["artifacts"]
    assert artifact["route"] == TS_ROUTE
    assert artifact["dropped_routes"] == [{k: dropped[k] for k in ("route", "node", "reason")}]
    # And the build report.
    assert project.run("report").returncode == 0
    report = (tmp_path / "artifacts/report/report.md").read_text()
    assert "- route: pytorch → torchscript → onnx" in report and "- dropped route pytorch → pt2 → onnx at `m/pt2`" in report

    calls = project.calls()
    again = project.run("build")
    assert again.returncode == 0 and "Nothing to do" in again.stdout and project.calls() == calls
    plan = project.run("plan").stdout
    assert "route    t: pytorch → pt2 → onnx dropped at m/pt2" in plan and "taking pytorch → torchscript → onnx" in plan
    explained = json.loads(project.run("explain", "verify:t").stdout)
    assert explained["route"] == TS_ROUTE and explained["candidate_routes"] == [PT2_ROUTE, TS_ROUTE]
    assert [(d["route"], d["node"]) for d in explained["dropped_routes"]] == [(PT2_ROUTE, "m/pt2")]

    # What the failed route depends on changes (as a toolchain upgrade would): it is tried again.
    (tmp_path / "gate.py").write_text(GATE.replace("# always true", "# still always true"))
    retry = project.run("build")
    assert retry.returncode == 0 and "dropped at m/pt2" in retry.stdout and "rerouted" in retry.stdout
    assert project.lock().routes["t"]["dropped"][0]["key"] != dropped["key"]

    # A failure recorded by another modelbuild version (an upgrade may have fixed the converter) is retried.
    lock = project.lock()
    lock.routes["t"]["dropped"][0]["modelbuild"] = "0.0.1"
    lock.write()
    upgraded = project.run("build")
    assert upgraded.returncode == 0 and "rerouted" in upgraded.stdout
    assert project.lock().routes["t"]["dropped"][0]["modelbuild"] != "0.0.1"


def test_via_pins_one_route_with_no_fallback(tmp_path: Path) -> None:
    project = Project(tmp_path, "via: [pt2]")
    proc = project.run("build")
    assert proc.returncode == 1 and "torch.export failed" in proc.stdout
    assert "rerouted" not in proc.stdout and "m/torchscript" not in proc.stdout
    assert project.lock().routes == {}


def test_no_route_passes_names_every_route_and_is_not_retried(tmp_path: Path) -> None:
    project = Project(tmp_path, "routes: [[pt2], [torchscript]]\n    acceptance: {max_size_mb: 0.0001}")
    proc = project.run("build")
    assert proc.returncode == 1
    assert ("no route passes its check (pytorch → pt2 → onnx: model 'm': torch.export failed" in proc.stdout
            and "pytorch → torchscript → onnx: size 0.00028 MB > 0.0001 MB (max_size_mb))" in proc.stdout)
    calls = project.calls()
    again = project.run("build")
    assert again.returncode == 1 and "no route passes its check" in again.stdout and project.calls() == calls
    # failed, not blocked: it failed under the key it has now (blocked means: this host lacks what it needs)
    assert "failed   verify:t" in project.run("plan").stdout
    states = {n["node"]: (n["state"], n["action"]) for n in json.loads(project.run("plan", "--json").stdout)["nodes"]}
    assert states["verify:t"] == ("failed", "fail")  # the build fails it at once, unrun
    # Loosen the budget: the check's key changes, so the route that missed it is tried again and passes.
    text = (tmp_path / "deploy.yaml").read_text().replace("max_size_mb: 0.0001", "max_size_mb: 1")
    (tmp_path / "deploy.yaml").write_text(text)
    fixed = project.run("build")
    assert fixed.returncode == 0, fixed.stdout
    assert [r["route"] for r in project.lock().routes["t"]["dropped"]] == [PT2_ROUTE]


def test_a_target_that_falls_back_leaves_the_nodes_other_targets_share_alone(tmp_path: Path) -> None:
    # u misses its budget on every route; t shares u's first route's ONNX node and passes. u's fallback
    # routes add variants of that ONNX node: they must not rename t's (its key names its inputs), or t
    # is re-checked in each round and a failed route's key no longer matches, so it is taken again.
    project = Project(tmp_path, "description: passes on its first route\n"
                                "  u:\n    model: m\n    format: onnx\n    precision: fp16\n"
                                "    acceptance: {max_size_mb: 0.0001}")
    proc = project.run("build", "-j", "1")
    assert proc.returncode == 1 and "no route passes its check" in proc.stdout, proc.stdout + proc.stderr
    started = [line.split()[1] for line in proc.stdout.splitlines() if line.strip().startswith("started")]
    assert started.count("verify:t") == 1 and started.count("m/onnx") == 1
    artifacts = [n for n in started if not n.startswith("verify:")]  # u's one check node judges each route
    assert len(artifacts) == len(set(artifacts)), f"nodes built twice in one build: {started}"
    assert len(project.lock().routes["u"]["dropped"]) == len(json.loads(project.run("plan", "--json").stdout)
                                                              ["candidate_routes"]["u"])
    plan = project.run("plan").stdout
    assert "failed   verify:u" in plan and "stale" not in plan and "cached" not in plan, plan
    calls = project.calls()
    again = project.run("build")
    assert again.returncode == 1 and project.calls() == calls and "started" not in again.stdout


def test_via_and_routes_together_are_refused(tmp_path: Path) -> None:
    project = Project(tmp_path, "via: [pt2]\n    routes: [[torchscript]]")
    proc = project.run("plan")
    assert proc.returncode == 2 and "give either 'via'" in proc.stderr and "deploy.yaml:" in proc.stderr


@pytest.mark.parametrize("routing", ["routes: [[pt2], [torchscript]]"])
def test_the_api_reports_the_route(tmp_path: Path, routing: str) -> None:
    import modelbuild

    project = Project(tmp_path, routing)
    report = modelbuild.load(tmp_path / "deploy.yaml").build()
    assert report.ok and report.summary[0]["route"] == TS_ROUTE
    assert [d["route"] for d in report.summary[0]["dropped"]] == [PT2_ROUTE]
    assert project.lock().targets["t"]["route"] == TS_ROUTE


def _candidates(project: Project) -> list[list[str]]:
    proc = project.run("plan", "--json")
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)["candidate_routes"]["t"]


def test_a_steps_alternatives_are_routes_after_every_default_route(tmp_path: Path) -> None:
    project = Project(tmp_path, "precision: int8")
    deploy = project.root / "deploy.yaml"
    text = deploy.read_text().replace("{validation: val.npz}", "{validation: val.npz, calibration: val.npz}")
    deploy.write_text(text.replace("format: onnx", "format: executorch"))
    assert _candidates(project) == [["pytorch", "pt2", "executorch-int8"], ["pytorch", "pt2", "executorch-int8 (dynamic)"]]

    deploy.write_text(text.replace("format: onnx", "format: tflite"))
    full, dynamic = _candidates(project)[:4], _candidates(project)[4:]
    # litert-torch's route leads (route cost), onnx2tf's follows
    assert [r[-1] for r in full] == ["tflite-int8"] * 4 and full[:2] == [["pytorch", "pt2", "tflite-int8"],
                                                                      ["pytorch", "onnx", "saved_model", "tflite-int8"]]
    assert sorted(dynamic) == sorted([[*full[0][:-1], "tflite-int8 (dynamic)"], [*full[1][:-1], "tflite-int8 (dynamic)"]])

    # A target that sets the option an alternative changes, or one that contradicts it, gets no alternative.
    for options in ("{mode: full}", "{io: int8}"):
        deploy.write_text(text.replace("format: onnx", f"format: tflite\n    options: {{tflite-int8: {options}}}"))
        assert [r[-1] for r in _candidates(project)] == ["tflite-int8"] * 4, options
    # via: pins one route, with the step's default options.
    deploy.write_text(text.replace("format: onnx", "format: executorch\n    via: [pt2]"))
    assert _candidates(project) == [["pytorch", "pt2", "executorch-int8"]]


_LOCK_WRITES: list[list[str]] | None = None  # while a test listens: the call stack of each write to a deploy.lock


def _listen(event: str, args: tuple) -> None:
    """An audit hook (it sees every open and rename the interpreter makes, whoever makes it)."""
    if _LOCK_WRITES is None:
        return
    if event == "open" and isinstance(args[0], (str, Path)) and Path(args[0]).name.startswith((".deploy.lock", "deploy.lock")):
        mode, flags = args[1], args[2]
        writing = any(c in mode for c in "wax+") if isinstance(mode, str) else bool(flags & (os.O_WRONLY | os.O_RDWR))
    elif event == "os.rename" and isinstance(args[1], (str, Path)):
        writing = Path(args[1]).name == "deploy.lock"
    else:
        return
    if writing:
        import traceback

        _LOCK_WRITES.append([f"{Path(f.filename).as_posix()}:{f.name}" for f in traceback.extract_stack()])


sys.addaudithook(_listen)


def test_only_the_lock_module_writes_deploy_lock(tmp_path: Path) -> None:
    """Proof without grep: every write of deploy.lock in a build that reroutes (the API records the
    dropped route, the builder records nodes and targets) goes through buildsys/storage/lock.py's Lock.write."""
    global _LOCK_WRITES
    import modelbuild

    project = Project(tmp_path, "routes: [[pt2], [torchscript]]")
    _LOCK_WRITES = []
    try:
        report = modelbuild.load(project.root / "deploy.yaml").build(jobs=1)
        writes = _LOCK_WRITES
    finally:
        _LOCK_WRITES = None
    assert report.ok and project.lock().routes["t"]["dropped"][0]["route"] == PT2_ROUTE
    assert len(writes) >= 4  # each Lock.write is an open of the temporary file and a rename onto deploy.lock
    for stack in writes:
        assert any(frame.endswith("buildsys/storage/lock.py:write") for frame in stack), "\n".join(stack[-6:])


def test_litert_torch_leads_to_tflite_for_every_input_and_onnx2tf_follows(tmp_path: Path) -> None:
    """The default route to TFLite is litert-torch's (its step's route cost: in the model matrix onnx2tf converted 7
    of the 53 architectures whose route it led), for flat, image and sequence inputs alike; onnx2tf's route is the
    next candidate, never dropped."""
    project = Project(tmp_path, "description: tflite")
    deploy = project.root / "deploy.yaml"
    text = deploy.read_text().replace("format: onnx", "format: tflite")
    for shape, data in (("[batch, 4]", (4, 4)), ("[batch, 1, 1, 4]", (4, 1, 1, 4)), ("[batch, 1, 4], layout: NCL", (4, 1, 4))):
        deploy.write_text(text.replace("shape: [batch, 4]", f"shape: {shape}"))
        np.savez(project.root / "val.npz", x=np.zeros(data, "float32"))
        candidates = _candidates(project)
        assert candidates[:2] == [["pytorch", "pt2", "tflite"], ["pytorch", "onnx", "saved_model", "tflite"]], shape


def test_a_failure_of_what_the_target_asks_travels_to_the_planner_as_every_route() -> None:
    """A step failing for what its target asks, not for its route (errors.UnmetOnEveryRoute), says so in the
    worker's reply and the node's metrics, where planning/failures.py reads it and drops no route: no other route
    converts and fails the same way (end to end: `sparsity: auto` with no ratio that holds,
    tests/formats/coreml/test_sparsity_auto.py)."""
    from buildsys.errors import StepError, UnmetOnEveryRoute
    from buildsys.formats import StepContext, get_step
    from buildsys.running.builder import failure_metrics

    step = get_step("onnx-from-pytorch")()
    ctx = StepContext.__new__(StepContext)
    object.__setattr__(ctx, "model_name", "m")
    asked = step.fail(ctx, "sparsity auto: even the lowest ratio misses", every_route=True)
    assert isinstance(asked, UnmetOnEveryRoute) and str(asked) == \
        "model 'm': sparsity auto: even the lowest ratio misses (step onnx-from-pytorch)"
    assert type(step.fail(ctx, "a converter refused an op")) is StepError
    assert failure_metrics({"ok": False, "error": str(asked), "every_route": True}) == {"every_route": True}
    assert failure_metrics({"ok": False, "error": "a converter refused an op"}) == {}


def test_openvino_has_its_pytorch_frontend_route_after_the_onnx_one(tmp_path: Path) -> None:
    project = Project(tmp_path, "description: an IR")
    deploy = project.root / "deploy.yaml"
    deploy.write_text(deploy.read_text().replace("format: onnx", "format: openvino"))
    routes = _candidates(project)
    assert routes[0] == ["pytorch", "onnx", "openvino"]
    assert ["pytorch", "pt2", "openvino"] in routes[1:]
