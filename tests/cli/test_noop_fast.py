"""The no-op fast path (buildsys.cli.noop): taken on an unchanged project, with the slow path's exact
output and exit code; never taken after a change that could alter the answer.

One tiny project (one TorchScript target) is built once per module; each test works on a copy.
Every command runs as a real subprocess with MODELBUILD_TRACE_FASTPATH=1, which makes the fast
path say on stderr whether it answered ("hit") or why not ("miss: …").
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from buildsys.cli import noop
from tests.conftest import make_tiny_project, tiny_deploy

DEPLOY = tiny_deploy("""\
  ts:
    model: tiny
    format: torchscript
    acceptance: {max_abs: 0.001}
""", calls=False, calibration=False)

HIT = "modelbuild fast path: hit"


def run(root: Path, *args: str, env: dict[str, str] | None = None, flags: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    """`python -m buildsys ARGS` in `root`, as a user runs it, with the fast path's trace on."""
    full_env = {k: v for k, v in os.environ.items() if k != noop.OFF}
    full_env.update({noop.TRACE: "1", **(env or {})})
    return subprocess.run([sys.executable, *flags, "-m", "buildsys", *args], cwd=root, capture_output=True, text=True,
                          env=full_env, timeout=600, check=False)


def prime(root: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run a no-op through the slow path so that it saves its snapshot; the next one is fast."""
    for _ in range(3):  # a file changed during the run (racy) means no snapshot: that run proves nothing
        time.sleep(0.1)  # files changed less than 50 ms before a run are racy too
        proc = run(root, *args, env=env)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert HIT not in proc.stderr, proc.stderr
        if "modelbuild fast path: saved" in proc.stderr:
            return proc
    raise AssertionError(f"no snapshot saved: {proc.stderr}")


def same_answer(slow: subprocess.CompletedProcess, fast: subprocess.CompletedProcess) -> None:
    assert HIT in fast.stderr, fast.stderr
    assert (fast.returncode, fast.stdout) == (slow.returncode, slow.stdout)


def missed(proc: subprocess.CompletedProcess, why: str = "") -> str:
    """Assert the normal path answered; returns the fast path's reason."""
    lines = [line for line in proc.stderr.splitlines() if line.startswith("modelbuild fast path: miss")]
    assert lines and HIT not in proc.stderr, proc.stderr
    assert why in lines[0], lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    project = make_tiny_project(tmp_path_factory.mktemp("noop") / "proj", DEPLOY)
    proc = run(project.root, "build")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return project.root


@pytest.fixture
def root(built: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "proj"
    shutil.copytree(built, copy, symlinks=True)
    (copy / ".modelbuild" / noop.SNAPSHOT).unlink(missing_ok=True)
    return copy


@pytest.mark.parametrize("args", [("build",), ("plan",), ("plan", "--check"), ("plan", "ts"), ("build", "-j", "2", "ts")])
def test_an_unchanged_project_is_answered_fast_with_the_same_output(root: Path, args: tuple[str, ...]) -> None:
    slow = prime(root, *args)
    assert "Nothing to do" in slow.stdout or "Everything is fresh" in slow.stdout
    same_answer(slow, run(root, *args))
    same_answer(slow, run(root, *args))


def test_the_fast_path_imports_neither_click_nor_pydantic(root: Path) -> None:
    prime(root, "plan")
    fast = run(root, "plan", flags=("-X", "importtime"))
    assert HIT in fast.stderr
    imported = {line.split("|")[-1].strip() for line in fast.stderr.splitlines() if line.startswith("import time:")}
    assert "json" in imported and "buildsys.cli.noop" in imported
    assert not imported & {"click", "pydantic", "rich", "networkx", "yaml", "blake3", "buildsys.cli.main"}


def test_without_trace_the_fast_path_is_silent_and_can_be_turned_off(root: Path) -> None:
    slow = prime(root, "build")
    quiet = run(root, "build", env={noop.TRACE: ""})
    assert (quiet.returncode, quiet.stdout, quiet.stderr) == (0, slow.stdout, "")
    off = run(root, "build", env={noop.OFF: "1"})
    assert off.stdout == slow.stdout and "fast path" not in off.stderr


def test_touching_deploy_yaml_takes_the_normal_path(root: Path) -> None:
    slow = prime(root, "build")
    os.utime(root / "deploy.yaml")  # same bytes, new mtime
    again = run(root, "build")
    missed(again, "deploy.yaml")
    assert again.stdout == slow.stdout  # still nothing to do, but said by the normal path


def test_a_same_size_edit_with_the_old_mtime_is_still_seen(root: Path) -> None:
    prime(root, "plan")
    config = root / "deploy.yaml"
    st = config.stat()
    text = config.read_text()
    config.write_text(text.replace("max_abs: 0.001", "max_abs: 0.002"))
    os.utime(config, ns=(st.st_atime_ns, st.st_mtime_ns))  # size and mtime as before: only ctime tells
    assert config.stat().st_size == st.st_size
    proc = run(root, "plan")
    missed(proc, "deploy.yaml")
    assert "stale" in proc.stdout and "tolerance changed" in proc.stdout


def test_editing_the_weights_or_data_takes_the_normal_path(root: Path) -> None:
    prime(root, "plan")
    with open(root / "tiny.pt", "ab") as f:
        f.write(b"\0")
    proc = run(root, "plan")
    missed(proc, "tiny.pt")
    assert "weights changed" in proc.stdout

    (root / "tiny.pt").write_bytes((root / "tiny.pt").read_bytes()[:-1])
    prime(root, "plan")
    os.utime(root / "val.npz")
    missed(run(root, "plan"), "val.npz")


def test_a_deleted_or_modified_artifact_takes_the_normal_path(root: Path) -> None:
    artifact = root / "artifacts" / "ts" / "model.pt"
    data = artifact.read_bytes()
    changed = data[:-1] + bytes([data[-1] ^ 1])
    prime(root, "build")
    artifact.write_bytes(changed)
    proc = run(root, "build")
    missed(proc, "artifacts/ts/model.pt")
    assert "restore" in proc.stdout and artifact.read_bytes() == data  # put back from the cache

    prime(root, "build")
    st = artifact.stat()
    artifact.write_bytes(changed)
    os.utime(artifact, ns=(st.st_atime_ns, st.st_mtime_ns))  # same size and mtime: only ctime tells
    missed(run(root, "build"), "artifacts/ts/model.pt")  # (the stat cache itself trusts size and mtime)

    artifact.unlink()  # whichever snapshot the last no-op left, it recorded this file
    proc = run(root, "build")
    missed(proc, "artifacts/ts/model.pt")
    assert "Nothing to do" not in proc.stdout and artifact.read_bytes() == data  # the verified bytes


def test_a_new_module_the_factory_would_import_takes_the_normal_path(root: Path) -> None:
    prime(root, "plan")
    (root / "signal.py").write_text("# shadows the stdlib module tinynet imports: now part of its code\n")
    proc = run(root, "plan")
    missed(proc)
    assert "code changed" in proc.stdout


def test_the_lock_being_rewritten_takes_the_normal_path(root: Path) -> None:
    prime(root, "build")
    lock = root / "deploy.lock"
    lock.write_text(lock.read_text())
    missed(run(root, "build"), "deploy.lock")


def test_other_targets_options_or_environment_take_the_normal_path(root: Path) -> None:
    prime(root, "build")
    missed(run(root, "build", "ts"), "no snapshot for this command line")
    missed(run(root, "build", "-j", "2"), "no snapshot for this command line")
    missed(run(root, "plan"), "no snapshot for this command line")
    missed(run(root, "build", env={"MODELBUILD_STEP_TIMEOUT": "60"}), "no snapshot for this command line")
    for args in (("build", "--force", "-n"), ("plan", "--json"), ("plan", "--force"), ("build", "-n"), ("--version",),
                 ("build", "--strict", "-n"), ("verify", "-h")):
        proc = run(root, *args)
        missed(proc, "not a plain plan/build command line")
    forced = run(root, "plan", "--force")
    assert "forced" in forced.stdout
    snapshot = json.loads((root / ".modelbuild" / noop.SNAPSHOT).read_text())
    saved = {tuple(e["context"]["argv"]) for e in snapshot["entries"]}
    assert ("build",) in saved and all(noop.parse(list(argv)) for argv in saved)  # only plain no-ops saved


def test_a_different_config_file_has_its_own_answer(root: Path) -> None:
    shutil.copy(root / "deploy.yaml", root / "other.yaml")
    prime(root, "plan")
    proc = run(root, "-f", "other.yaml", "plan")
    missed(proc, "no snapshot for this command line")
    assert "not built yet" in proc.stdout  # other.lock does not exist
    assert HIT in run(root, "plan").stderr


def test_parse_accepts_only_plain_plan_and_build() -> None:
    assert noop.parse(["build"]) == ("deploy.yaml", "build", ())
    assert noop.parse(["-f", "x.yaml", "plan", "--check", "a", "b"]) == ("x.yaml", "plan", ("a", "b"))
    assert noop.parse(["--file=x.yaml", "build", "-j", "4", "--timeout", "9", "-k", "t"]) == ("x.yaml", "build", ("t",))
    for argv in (["bundle", "x"], ["verify"], ["bench"], ["plan", "--json"], ["build", "--force"], ["build", "-n"],
                 ["build", "--serving"], ["build", "--strict"], ["--version"], ["-h"], ["plan", "-j", "2"], [],
                 ["build", "-j"], ["plan", "--", "t"], ["build", "-j2"]):
        assert noop.parse(argv) is None, argv


def test_a_held_build_lock_sends_build_to_the_normal_path(tmp_path: Path) -> None:
    from filelock import FileLock

    assert not noop._build_lock_held(str(tmp_path))
    guard = FileLock(str(tmp_path / "build.lock"))
    with guard:
        assert noop._build_lock_held(str(tmp_path))
    assert not noop._build_lock_held(str(tmp_path))


@pytest.mark.parametrize("body", ["{not json", '{"entries": 3}', '{"entries": [{"context": null, "stats": 1}]}'])
def test_a_damaged_snapshot_takes_the_normal_path(root: Path, body: str) -> None:
    slow = prime(root, "build")
    (root / ".modelbuild" / noop.SNAPSHOT).write_text(body)
    proc = run(root, "build")
    missed(proc)
    assert (proc.returncode, proc.stdout) == (0, slow.stdout)


def test_the_fast_path_reads_the_command_line_as_the_cli_defines_it() -> None:
    """The fast path's recogniser of plain plan/build lines may not import click, so it keeps its own
    table of options; this holds that table to the click CLI's definitions (one parser's truth): each
    option it skips exists on that command, takes a value exactly when the CLI's does, and -f's default
    is the CLI's."""
    import click

    from buildsys.cli import main as cli
    from buildsys.planning import project

    assert noop.DEFAULT_CONFIG == project.DEFAULT_CONFIG
    file_opt = next(p for p in cli.cli.params if "--file" in getattr(p, "opts", []))
    assert set(file_opt.opts) == {"-f", "--file"} and file_opt.default == project.DEFAULT_CONFIG
    for command in ("plan", "build"):
        params = {opt: p for p in cli.cli.commands[command].params if isinstance(p, click.Option) for opt in p.opts}
        for opt in noop._FLAGS[command]:
            assert opt in params and params[opt].is_flag, (command, opt)
        for opt in noop._VALUED[command]:
            assert opt in params and not params[opt].is_flag, (command, opt)
