"""A green result means what it says: verdicts keyed by the CPU class they were measured on, strict
runs that fail on what did not run, tolerances that catch a shifted output, and every lesser path
visible in every output."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from buildsys.storage import keys
from buildsys.storage.lock import Lock
from tests.conftest import TinyProject, out_of_reach

if TYPE_CHECKING:
    import numpy as np


def test_cpu_class_names_the_kernels_int8_depends_on() -> None:
    cls = keys.cpu_class()
    assert cls and cls != "unknown"
    known = {name for features in keys.CPU_FEATURES.values() for name, _ in features} | {"baseline"}
    assert set(cls.split("+")) <= known, cls
    assert keys.host_parts(keys.HostBinding.PORTABLE) == {}
    assert keys.host_parts(keys.HostBinding.PLATFORM) == {"platform": keys.host_platform()}
    assert keys.host_parts(keys.HostBinding.CPU_CLASS) == {"platform": keys.host_platform(), "cpu": cls}


def test_a_verdict_recorded_under_another_cpu_class_is_checked_again(tiny: TinyProject) -> None:
    """deploy.lock holds an int8 verdict measured on a CPU with VNNI (as another machine would commit
    it): this host's plan does not reuse it, says why, and the build measures it again."""
    tiny.run("build")
    lock_path = tiny.root / "deploy.lock"
    raw = json.loads(lock_path.read_text())
    entry = raw["nodes"]["verify:int8"]
    here = entry["components"]["cpu"]
    assert here == keys.cpu_class()
    other = "avx2+avx512+avx512-vnni" if here != "avx2+avx512+avx512-vnni" else "avx2"
    entry["components"]["cpu"] = other
    entry["key"] = keys.action_key(entry["components"])
    lock_path.write_text(json.dumps(raw, indent=2, sort_keys=True) + "\n")
    plan = json.loads(tiny.run("plan", "--json").stdout)
    stale = {n["node"]: n["reasons"] for n in plan["nodes"] if n["state"] == "stale"}
    assert stale == {"verify:int8": [f"cpu class {other}→{here}"]}, stale
    assert "verify:server" not in stale  # an fp32 verdict is shared across CPU classes
    explained = json.loads(tiny.run("explain", "verify:int8").stdout)
    assert explained["components"]["cpu"] == here
    build = json.loads(tiny.run("build", "--json").stdout.strip().splitlines()[-1])
    assert build["ok"] is True
    again = Lock.read(lock_path).nodes["verify:int8"]
    assert again["components"]["cpu"] == here and again["metrics"]["passed"] is True


# --- what a target asks for is what it gets, on whichever route ------------------------------------


def test_an_unsupported_opset_is_a_config_error_before_anything_is_replaced(tiny: TinyProject) -> None:
    tiny.run("build", "server")
    delivered = (tiny.root / "artifacts" / "server" / "model.onnx").read_bytes()
    lock = (tiny.root / "deploy.lock").read_bytes()
    tiny.edit("onnx: {opset: 18}", "onnx: {opset: 999}")
    proc = tiny.run("build", check=False)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "deploy.yaml:" in proc.stderr and "targets.server.options.onnx.opset" in proc.stderr
    assert "less than or equal to 23" in proc.stderr, proc.stderr
    assert (tiny.root / "artifacts" / "server" / "model.onnx").read_bytes() == delivered
    assert (tiny.root / "deploy.lock").read_bytes() == lock


def test_a_route_that_cannot_honour_an_option_is_not_tried(tiny: TinyProject) -> None:
    """Opset 21 is past the legacy exporter (the two routes that use it): only the pt2 route's dynamo
    exporter can write it, so that is the one route the target has."""
    tiny.edit("onnx: {opset: 18}", "onnx: {opset: 21}")
    plan = json.loads(tiny.run("plan", "--json", "server").stdout)
    assert plan["candidate_routes"]["server"] == [["pytorch", "pt2", "onnx"]]
    tiny.edit("onnx: {opset: 21}", "onnx: {opset: 21, do_constant_folding: false}")
    proc = tiny.run("plan", "server", check=False)  # no route takes both: the first one's refusal is the error
    assert proc.returncode == 2 and "opset 21 needs dynamo: true" in proc.stderr, proc.stderr


def test_opset_ranges_are_the_installed_exporters() -> None:
    from torch.onnx import _constants

    from buildsys.formats.onnx import export

    assert export.MIN_OPSET == _constants.ONNX_MIN_OPSET
    assert export.LEGACY_MAX_OPSET == _constants.ONNX_TORCHSCRIPT_EXPORTER_MAX_OPSET
    assert export.DYNAMO_MAX_OPSET == _constants.ONNX_MAX_OPSET


TOKENS = """\
models:
  tokens:
    source: {factory: tinymodels:tokens, weights: tokens.pt}
    inputs: [{name: ids, shape: [batch, 8], dtype: int64}]
    outputs: [{name: y}]
    data: {validation: val.npz}
targets:
  old-device:
    model: tokens
    format: onnx
    options:
      onnx: {opset: 7}
"""


@pytest.mark.slow
def test_a_fallback_route_never_delivers_another_opset(tmp_path: Path) -> None:
    """Opset 7 cannot express the model's `arange` (the legacy exporter says so, on both routes that
    use it); the dynamo exporter of the pt2 route writes opset 18 instead of 7 without a word. That
    route now fails for it, and the target is delivered by no route rather than with the wrong opset."""
    from tests.helpers.models import make_model

    make_model(tmp_path / "p", "tokens")
    project = TinyProject(tmp_path / "p", tmp_path / "p" / "calls")
    project.write(TOKENS)
    proc = project.run("build", check=False)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    lock = Lock.read(tmp_path / "p" / "deploy.lock")
    reasons = {" → ".join(r["route"]): r["reason"] for r in lock.routes["old-device"]["dropped"]}
    assert any("arange" in why and "opset 7" in why for why in reasons.values()), reasons
    assert reasons["pytorch → pt2 → onnx"].startswith("model 'tokens': the exporter wrote opset 18, not the opset 7"), reasons
    assert "old-device" not in lock.targets and not (tmp_path / "p" / "artifacts" / "old-device").exists()


# --- 'values' outputs: a shifted output fails the int8 default ------------------------------------


def _judge(ref: "np.ndarray", obs: "np.ndarray", **acceptance: object) -> dict:
    from buildsys.config.schema import Acceptance, OutputSpec
    from buildsys.comparison import compare
    from buildsys.nodes.verify import resolve_acceptance

    tol = resolve_acceptance(Acceptance(**acceptance), "int8", [OutputSpec(name="p", kind="values")])["outputs"]["p"]
    return compare("p", "values", ref, obs, tol).as_dict()


def test_a_probability_shifted_by_0_3_fails_the_int8_default() -> None:
    import numpy as np

    rng = np.random.default_rng(0)
    prob = rng.uniform(0.05, 0.95, (64, 1)).astype("float32")  # one value per sample, as a VAD's speech probability
    shifted = _judge(prob, np.clip(prob + 0.3, 0, 1))
    assert shifted["cosine"]["ok"] is True  # the batch's cosine does not see a shift of positive values...
    assert shifted["range_error"]["ok"] is False and shifted["passed"] is False  # ...the range error does
    assert shifted["range_error"]["observed"] > 0.3
    noisy = _judge(prob, prob + rng.normal(0, 0.01, prob.shape).astype("float32"))  # int8-like rounding noise
    assert noisy["passed"] is True and noisy["range_error"]["observed"] < 0.05


def test_int8_noise_on_an_embedding_passes_and_a_user_s_own_limit_replaces_the_default() -> None:
    import numpy as np

    rng = np.random.default_rng(1)
    emb = rng.normal(0, 1, (32, 64)).astype("float32")
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    noisy = emb + rng.normal(0, 0.35 / 8, emb.shape).astype("float32")  # cosine about 0.94
    judged = _judge(emb, noisy)
    assert 0.9 < judged["cosine"]["observed"] < 0.97 and judged["passed"] is True, judged
    own = _judge(emb, emb + 0.05, max_abs=0.1)  # the target judges it elementwise: no range error limit
    assert own["range_error"]["allowed"] is None and own["max_abs"]["ok"] is True


# --- strict runs -----------------------------------------------------------------------------------


def _path_without(tmp_path: Path, program: str) -> str:
    """A PATH with every program of this one but `program`: one directory of links."""
    import os

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for directory in reversed(os.environ["PATH"].split(os.pathsep)):
        if Path(directory).is_dir():
            for entry in Path(directory).iterdir():
                if entry.name != program and not (bin_dir / entry.name).exists():
                    (bin_dir / entry.name).symlink_to(entry)
    return str(bin_dir)


def test_a_strict_run_fails_naming_a_runtime_that_is_missing(tmp_path: Path) -> None:
    """The README's test command runs with --strict-runtimes: with Chromium hidden, the run stops at
    once, naming the runtimes and what they lack, instead of skipping the browser checks."""
    import os
    import shutil
    import subprocess
    import sys

    from tests.conftest import REPO

    if shutil.which("chromium") is None:
        pytest.fail("Chromium is not installed: the README's test command installs it (apt-get install chromium)")
    env = {**os.environ, "PATH": _path_without(tmp_path, "chromium")}
    proc = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "--strict-runtimes", "-q",
                           "tests/nodes/test_verify.py"],
                          cwd=REPO, capture_output=True, text=True, env=env, timeout=300)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out
    # Both browser runtimes (ONNX Runtime Web and TensorFlow.js) need Chromium.
    assert "--strict-runtimes: 2 runtime(s) the README's test command installs are missing" in out, out
    assert "ort-web-chromium: no Chromium" in out and "tfjs-chromium: no Chromium" in out, out
    assert "apt-get install chromium" in out, out
    plain = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q",
                            "tests/report/test_report_browser.py"],
                           cwd=REPO, capture_output=True, text=True, env=env, timeout=300)
    assert plain.returncode == 0 and "skipped" in plain.stdout, plain.stdout  # without the flag: skipped, and said
    strict = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "--strict-runtimes",
                             "tests/report/test_report_browser.py"],
                            cwd=REPO, capture_output=True, text=True, timeout=600)
    assert strict.returncode == 0, strict.stdout[-2000:]  # with Chromium present, the same tests run and pass


# --- every lesser path is visible in every output -------------------------------------------------


def test_a_docker_build_that_did_not_run_shows_in_every_output(tiny: TinyProject) -> None:
    """The service target asks for `docker build`; this host has no Docker engine. The target still
    passes its check, and every output says what was not done; --strict fails it."""
    import shutil

    if shutil.which("docker") and Path("/var/run/docker.sock").exists():
        pytest.skip(out_of_reach("a Docker engine answers here: the build would run"))
    tiny.write(tiny.config.read_text() + "  svc:\n    model: tiny\n    format: service\n"
               "    options:\n      service: {docker_build: true}\n")
    proc = tiny.run("build", "svc")
    assert "passed; docker build not run" in proc.stdout, proc.stdout
    assert "svc: docker build not run: no docker CLI on PATH" in proc.stdout \
        or "svc: docker build not run: no Docker daemon" in proc.stdout, proc.stdout
    lock = json.loads((tiny.root / "deploy.lock").read_text())
    entry = lock["nodes"]["verify:svc"]
    assert entry["verdict"] == "passed" and [c["what"] for c in entry["caveats"]] == ["docker build not run"]
    assert lock["nodes"]["tiny/service"]["caveats"][0]["kind"] == "not run"
    summary = json.loads(tiny.run("build", "--json", "svc").stdout.strip().splitlines()[-1])
    assert summary["targets"]["svc"]["status"] == "passed; docker build not run"
    tiny.run("report")
    markdown = (tiny.root / "artifacts" / "report" / "report.md").read_text()
    html = (tiny.root / "artifacts" / "report" / "report.html").read_text()
    assert "passed; docker build not run" in markdown and "caveat: docker build not run" in markdown
    assert "passed, with caveats" in html and "docker build not run" in html
    strict = tiny.run("build", "--strict", "svc", check=False)
    assert strict.returncode == 1 and "the target requires a full check (require_numeric), but docker build not run" \
        in strict.stdout, strict.stdout


XNNPACK_REFUSAL = """\
models:
  m:
    source: {factory: tinymodels:xnnpack_refusal, weights: xnnpack-refusal.pt}
    inputs: [{name: x, shape: [batch, 8]}]
    outputs: [{name: y}]
    data: {calibration: calib.npz, validation: val.npz}
targets:
  # onnx2tf's full-int8 file is the one XNNPACK refuses: listed first (for a flat input litert-torch leads by default)
  phone: {model: m, platform: android, routes: [[onnx, saved_model], [pt2]],
          acceptance: {max_range_error: 0.25}}  # the cancelling layer costs int8 13 %
"""


@pytest.mark.slow
def test_an_xnnpack_fallback_shows_in_the_summary_and_the_report(tmp_path: Path) -> None:
    """XNNPACK (what Android runs) refuses the full-int8 file at runtime creation; the check runs it on
    LiteRT's builtin kernels, passes, and says so wherever the target shows; --strict fails it."""
    from tests.helpers.models import make_model

    make_model(tmp_path / "p", "xnnpack-refusal")
    project = TinyProject(tmp_path / "p", tmp_path / "p" / "calls")
    project.write(XNNPACK_REFUSAL)
    proc = project.run("build")
    assert "passed; XNNPACK fallback" in proc.stdout, proc.stdout
    assert "phone: XNNPACK fallback: XNNPACK (what Android runs) could not prepare the graph (failed to create " \
           "XNNPACK runtime" in proc.stdout, proc.stdout
    entry = json.loads((tmp_path / "p" / "deploy.lock").read_text())["nodes"]["verify:phone"]
    assert entry["verdict"] == "passed" and [c["kind"] for c in entry["caveats"]] == ["degraded"]
    project.run("report")
    assert "passed; XNNPACK fallback" in (tmp_path / "p" / "artifacts/report/report.md").read_text()
    assert "XNNPACK fallback" in (tmp_path / "p" / "artifacts/report/report.html").read_text()
    # --strict refuses the fallback, so the route is dropped: litert-torch's file runs under XNNPACK
    strict = project.run("build", "--strict").stdout
    assert "passed; route fallback" in strict and "made by pytorch → pt2 → tflite-int8" in strict, strict
    # its cancelling layer's output scale at float32's epsilon asks XNNPACK for a requantization it refuses: the
    # step quantized again at XNNPACK's own 2^-12 floor, and says so
    nodes = json.loads((tmp_path / "p" / "deploy.lock").read_text())["nodes"]
    [litert] = [e for n, e in nodes.items() if n.startswith("m/tflite-int8~")]
    assert litert["facts"]["scale_floor"].startswith("2^-12"), litert
    assert "dropped at verify:phone: the target requires a full check (require_numeric), but XNNPACK fallback" in strict


def test_a_node_failed_again_names_its_first_failure_once() -> None:
    """A node failed in one round of a build and planned again under the same key is failed again,
    unrun, with its first failure: never 'failed earlier in this build: failed earlier …'."""
    from types import SimpleNamespace

    from buildsys.planning.history import FAILED_EARLIER
    from buildsys.planning.plan import _fail_again
    from buildsys.planning.settle import _why
    from buildsys.records import FAILED, NodeResult
    from buildsys.status import Action

    first = NodeResult("m/onnx", FAILED, error="Unsupported onnx_opset_version: 999")
    again = NodeResult("m/onnx", FAILED, metrics={"failures": [FAILED_EARLIER + first.error]})
    for result in (first, again):
        nplan = SimpleNamespace(runs=True, action=Action.RUN, key="k1", reasons=["not built yet"])
        _fail_again({"m/onnx": nplan}, {"m/onnx": ("k1", _why(result))})  # type: ignore[dict-item]
        assert (nplan.action, nplan.reasons) == (Action.FAIL, [FAILED_EARLIER + first.error])
    other_key = SimpleNamespace(runs=True, action=Action.RUN, key="k2", reasons=["option opset 999→17"])
    _fail_again({"m/onnx": other_key}, {"m/onnx": ("k1", _why(first))})  # type: ignore[dict-item]
    assert other_key.action == Action.RUN  # under another key it is a new attempt
