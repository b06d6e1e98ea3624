"""A green result means what it says: verdicts keyed by the CPU class they were measured on, strict
runs that fail on what did not run, tolerances that catch a shifted output, and every lesser path
visible in every output."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from buildsys import keys
from buildsys.lock import Lock
from tests.conftest import TinyProject


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
