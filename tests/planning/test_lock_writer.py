"""deploy.lock has one writer: planning.record.LockWriter. `Lock.write` is patched to note which module calls it,
and a build that delivers, restores a deliverable, drops a failing route, withdraws a target whose check
now misses, and `modelbuild clean` all leave that module alone among its callers."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from buildsys.storage.lock import Lock
from tests.conftest import make_tiny_project, tiny_deploy

TARGETS = """\
  ts: {model: tiny, format: torchscript}
  server: {model: tiny, format: onnx, options: {onnx: {opset: 18}}}
  tiny-budget: {model: tiny, format: onnx, routes: [[torchscript], [pt2]], acceptance: {max_size_mb: 0.0001}}
"""


def test_only_the_planning_lock_writer_writes_deploy_lock(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import modelbuild
    from buildsys.cli.main import cli

    callers: list[str] = []
    write = Lock.write

    def spy(self: Lock) -> None:
        callers.append(sys._getframe(1).f_globals["__name__"])
        write(self)

    monkeypatch.setattr(Lock, "write", spy)
    tiny = make_tiny_project(tmp_path / "proj", tiny_deploy(TARGETS))
    monkeypatch.chdir(tiny.root)

    report = modelbuild.load(str(tiny.config)).build(jobs=1, check=False)  # delivers ts and server
    assert not report.ok and report.targets["server"].artifact is not None
    lock = Lock.read(tiny.root / "deploy.lock")
    assert [r["route"][1] for r in lock.routes["tiny-budget"]["dropped"]] == ["torchscript", "pt2"]  # both dropped

    (tiny.root / "artifacts" / "ts" / "model.pt").unlink()  # restored from the cache, the lock rewritten
    assert modelbuild.load(str(tiny.config)).build(["ts"], jobs=1).nodes["verify:ts"].outcome == "restored"

    tiny.edit("server: {model: tiny, format: onnx, options: {onnx: {opset: 18}}}",
              "server: {model: tiny, format: onnx, options: {onnx: {opset: 18}}, acceptance: {max_size_mb: 0.0001}}")
    missed = modelbuild.load(str(tiny.config)).build(["server"], jobs=1, check=False)
    assert not missed.ok and "server" not in Lock.read(tiny.root / "deploy.lock").targets  # withdrawn

    assert CliRunner().invoke(cli, ["-f", str(tiny.config), "clean"]).exit_code == 0
    assert Lock.read(tiny.root / "deploy.lock").targets == {}

    assert callers and set(callers) == {"buildsys.planning.record"}, sorted(set(callers))
