"""Plugins: a format from a module named in MODELBUILD_PLUGINS builds and is checked like a built-in one,
and bad plugin or registry names give errors that say what exists."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from buildsys.errors import ConfigError, PlanError
from buildsys.formats import registry
from buildsys.storage.lock import Lock
from tests.conftest import TESTS, TinyProject, make_tiny_project, tiny_deploy

PLUGINS = TESTS / "plugins"
TEXT_TARGET = "  text:\n    model: tiny\n    format: onnx-text\n"


def _with_plugin(project: TinyProject, plugins: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MODELBUILD_PLUGINS", plugins)
    # absolute: the CLI runs in the project's directory
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(PLUGINS.resolve()), os.environ.get("PYTHONPATH")])))


def test_a_plugin_format_is_built_and_checked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    project = make_tiny_project(tmp_path / "proj", tiny_deploy(TEXT_TARGET))
    _with_plugin(project, "onnx_text", monkeypatch)
    assert "onnx-text" in project.run("plan", "text").stdout
    out = project.run("build", "text").stdout
    assert "passed" in out, out
    assert "=>" in (project.root / "artifacts/text/model.onnxtxt").read_text()  # ONNX text: graph (inputs) => (outputs)
    check = Lock.read(project.root / "deploy.lock").as_dict()["nodes"]["verify:text"]["metrics"]
    assert check["runtime"] == "onnx-text-ort" and check["passed"] is True and check["samples"] == 48
    assert check["outputs"]["y"]["max_abs"]["observed"] < 1e-6  # the weights survived the round trip through text
    assert "Nothing to do" in project.run("build", "text").stdout


def test_without_the_plugin_the_format_is_unknown_by_name(tmp_path: Path) -> None:
    project = make_tiny_project(tmp_path / "proj", tiny_deploy(TEXT_TARGET))
    proc = project.run("plan", check=False)
    assert proc.returncode == 2, proc.stderr
    assert "onnx-text" in proc.stderr and "Traceback" not in proc.stderr


def test_a_failing_plugin_import_names_the_plugin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    project = make_tiny_project(tmp_path / "proj", tiny_deploy(TEXT_TARGET))
    _with_plugin(project, "onnx_text, no_such_plugin_module", monkeypatch)
    proc = project.run("plan", check=False)
    assert proc.returncode == 2, proc.stderr
    assert "plugin module 'no_such_plugin_module' failed to import" in proc.stderr
    assert "MODELBUILD_PLUGINS" in proc.stderr and "Traceback" not in proc.stderr


def test_unknown_registry_names_list_what_exists() -> None:
    with pytest.raises(PlanError, match=r"no runtime named 'onnxruntim' .*did you mean 'onnxruntime'"):
        registry.get_runtime("onnxruntim")
    with pytest.raises(PlanError, match=r"no step named 'zzz' is registered .*known steps: .*onnx-from-pytorch"):
        registry.get_step("zzz")
    with pytest.raises(PlanError, match="no format named 'onnx-int9'"):
        registry.get_format("onnx-int9")


def test_the_registry_is_not_marked_loaded_after_a_failed_plugin(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(registry, "_loaded", False)
    monkeypatch.setenv("MODELBUILD_PLUGINS", "no_such_plugin_module")
    with pytest.raises(ConfigError, match="no_such_plugin_module"):
        registry.steps()
    assert registry._loaded is False
    monkeypatch.setenv("MODELBUILD_PLUGINS", "")
    assert "onnx-from-pytorch" in registry.steps() and registry._loaded is True


def test_where_the_device_runtime_runs_its_stand_in_agreement_is_reported(tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """Core ML on macOS runs Apple's runtime and also the MIL reference interpreter, reporting their gap;
    the same mechanism, proven with a plugin runtime that runs everywhere and has a stand-in."""
    project = make_tiny_project(tmp_path / "proj", tiny_deploy("  raw:\n    model: tiny\n    format: onnx-unoptimized\n"))
    _with_plugin(project, "onnx_unoptimized", monkeypatch)
    project.run("build", "raw")
    check = Lock.read(project.root / "deploy.lock").as_dict()["nodes"]["verify:raw"]["metrics"]
    assert check["runtime"] == "ort-unoptimized" and check["passed"] is True and "caveats" not in check
    agreement = check["stand_in_agreement"]
    assert agreement["runtime"] == "onnxruntime" and set(agreement["outputs"]) == {"y"}
    assert 0 <= agreement["outputs"]["y"]["max_abs"] < 1e-5
