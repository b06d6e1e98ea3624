"""`modelbuild diff` between two builds that differ in one target's precision, read from locks, build
records, bundles and git revisions; its exit code for CI; and `plan --locked`."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import TinyProject, make_tiny_project, tiny_deploy

DEPLOY = tiny_deploy("""\
  ts:
    model: tiny
    format: torchscript
  server:
    model: tiny
    format: onnx
    acceptance: {max_accuracy_drop: 0.05}
  int8:
    model: tiny
    format: onnx
    precision: int8
    options:
      onnx-int8: {method: dynamic}
bundles:
  release:
    targets: [ts, server, int8]
""")
#: What turning the server target from fp32 into fp16 changes, and nothing else.
FP16_CHANGES = {"format", "precision", "size", "route", "step onnx-fp16-from-onnx", "toolchain onnx-ir"}
NUMBERS = {"accuracy", "agreement", "max_abs"}  # observed: each may or may not move on a given CPU


@pytest.fixture(scope="module")
def builds(tmp_path_factory: pytest.TempPathFactory) -> tuple[TinyProject, Path]:
    """The project built, committed to git and bundled (kept in before/), then built again with the
    server target in fp16 and bundled again."""
    tiny = make_tiny_project(tmp_path_factory.mktemp("diff") / "proj", DEPLOY)
    git = ["git", "-C", str(tiny.root), "-c", "user.name=t", "-c", "user.email=t@example.com"]
    tiny.run("bundle", "release")
    subprocess.run([*git, "init", "-q"], check=True)
    subprocess.run([*git, "add", "deploy.yaml", "deploy.lock", "tinynet.py"], check=True)
    subprocess.run([*git, "commit", "-qm", "fp32"], check=True)
    before = tiny.root.parent / "before"
    (before / ".modelbuild").mkdir(parents=True)
    shutil.copy(tiny.root / "deploy.lock", before / "deploy.lock")
    shutil.copy(tiny.root / ".modelbuild/deploy.record.json", before / ".modelbuild/deploy.record.json")
    shutil.copy(tiny.root / "artifacts/bundles/release-0.1.0.tar.gz", before / "release.tar.gz")
    tiny.edit("    format: onnx\n    acceptance", "    format: onnx\n    precision: fp16\n    acceptance")
    locked = tiny.run("plan", "--locked", check=False)
    assert locked.returncode == 1 and "deploy.lock is stale" in locked.stderr and "verify:server" in locked.stderr
    tiny.run("bundle", "release")
    return tiny, before


def changed(result: dict) -> dict[str, dict[str, dict]]:
    return {t["target"]: {c["field"]: c for c in t["changes"]} for t in result["targets"] if t["status"] != "unchanged"}


@pytest.mark.parametrize("before, after", [
    ("before/deploy.lock", None),  # a lock (with its record beside it) against the working tree
    (None, None),  # default: HEAD's deploy.lock against the working tree
    ("before/.modelbuild/deploy.record.json", "proj/.modelbuild/deploy.record.json"),  # two build records
    ("before/release.tar.gz", "proj/artifacts/bundles/release-0.1.0.tar.gz"),  # two bundles
])
def test_diff_shows_exactly_the_precision_change(builds: tuple[TinyProject, Path], before: str | None,
                                                 after: str | None) -> None:
    tiny, _ = builds
    base = tiny.root.parent
    args = [str(base / p) for p in (before, after) if p]
    result = json.loads(tiny.run("diff", *args, "--json").stdout)
    changes = changed(result)
    assert set(changes) == {"server"}
    server = changes["server"]
    assert server["precision"]["before"] == "fp32" and server["precision"]["after"] == "fp16"
    assert server["format"]["before"] == "onnx" and server["format"]["after"] == "onnx-fp16"
    fields = set(server) - NUMBERS
    if before and before.endswith(".tar.gz"):  # a manifest has the artifact chain's toolchain, not the check's:
        assert fields == FP16_CHANGES | {"toolchain onnxruntime"}, fields  # the fp16 step brings the runtime in
    else:
        assert fields == FP16_CHANGES, fields
    assert "max_abs" in server and server["max_abs"]["after"] > server["max_abs"]["before"]
    assert {t["target"] for t in result["targets"] if t["status"] == "unchanged"} == {"ts", "int8"}


def test_diff_table_markdown_and_exit_code(builds: tuple[TinyProject, Path]) -> None:
    tiny, _ = builds
    table = tiny.run("diff").stdout
    assert "HEAD:deploy.lock → working tree: 3 target(s): 1 changed, 2 unchanged" in table
    assert "precision: fp32 → fp16" in table and "format: onnx → onnx-fp16" in table
    assert "route: [pytorch → onnx] → [pytorch → onnx → onnx-fp16]" in table
    markdown = tiny.run("diff", "--markdown").stdout
    assert markdown.startswith("### modelbuild diff") and "| server | changed" in markdown
    assert "  - precision: `fp32` → `fp16`" in markdown and "2 target(s) unchanged." in markdown
    # The fp16 file of this tiny model is larger than the fp32 one (cast nodes outweigh its 35 weights):
    # a size regression beyond the default 5%.
    size = changed(json.loads(tiny.run("diff", "--json").stdout))["server"]["size"]
    assert size["after"] > size["before"] * 1.05 and size["regressed"]
    regressed = tiny.run("diff", "--check", check=False)
    assert regressed.returncode == 1 and "regressed beyond the thresholds: server" in regressed.stdout
    relaxed = tiny.run("diff", "--check", "--threshold", "size=off", "--threshold", "accuracy=50",
                       "--threshold", "agreement=50%", check=False)
    assert relaxed.returncode == 0, relaxed.stdout
    assert "unchanged" in tiny.run("diff", "HEAD", "HEAD").stdout  # a revision against itself


def test_plan_locked_tells_a_stale_lock_from_missing_outputs(builds: tuple[TinyProject, Path]) -> None:
    tiny, _ = builds
    assert tiny.run("plan", "--locked").returncode == 0
    shutil.rmtree(tiny.root / "artifacts" / "server")  # a fresh checkout has no artifacts/ either
    assert tiny.run("plan", "--check", check=False).returncode == 1
    ok = tiny.run("plan", "--locked")
    assert "deploy.lock is up to date" in ok.stdout
    tiny.run("build", "server")  # restores it for the other tests


@pytest.mark.parametrize("args, message", [
    (["no-such-rev"], "'no-such-rev' is neither a file nor a git revision"),
    (["--threshold", "speed=3"], "--threshold 'speed=3': give NAME=VALUE with NAME one of size, accuracy"),
    (["--threshold", "size=big"], "--threshold 'size=big': 'big' is not a number (or 'off')"),
])
def test_diff_names_bad_input(builds: tuple[TinyProject, Path], args: list[str], message: str) -> None:
    tiny, _ = builds
    proc = tiny.run("diff", *args, check=False)
    assert proc.returncode == 2 and message in proc.stderr, proc.stderr


def test_diff_outside_git_asks_for_two_files(tmp_path: Path) -> None:
    tiny = make_tiny_project(tmp_path / "proj")
    proc = tiny.run("diff", check=False)
    assert proc.returncode == 2 and "give two files" in proc.stderr
