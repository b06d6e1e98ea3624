"""Builds that several tests read, made once per test session and shared by every pytest-xdist worker.

A module-scoped fixture builds once per worker that runs one of its tests, and `--dist worksteal` spreads a
module's tests over both workers: an end-to-end project was built twice, sometimes three times, per session.
`built_once` builds it once per session: the first worker to ask builds it under a file lock in the
directory the workers share, the others wait for it and read the same build. A test that runs modelbuild in
the project or changes it takes `copy_of` it: a copy with the same contents and mtimes is a fresh project to
modelbuild (every node is keyed by content), so a build there is a no-op, not a rebuild.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
from filelock import FileLock

DONE = ".built-once"  # written last: a build that raised leaves none, and the next test to ask builds again


def session_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The temp directory every worker of this session shares (under xdist each worker's base is a child of it)."""
    base = tmp_path_factory.getbasetemp()
    return base.parent if base.name.startswith("popen-gw") else base


def built_once(tmp_path_factory: pytest.TempPathFactory, name: str, build: Callable[[Path], None]) -> Path:
    """The directory `build(root)` filled, run once per test session across workers for this `name`.

    Readers must not change it (take `copy_of` it for that): other tests read the same directory.
    """
    shared = session_dir(tmp_path_factory) / "built-once"
    shared.mkdir(exist_ok=True)
    root = shared / name
    with FileLock(str(root) + ".lock"):
        if not (root / DONE).exists():
            shutil.rmtree(root, ignore_errors=True)
            root.mkdir()
            build(root)
            (root / DONE).touch()
    return root


def copy_of(built: Path, dest: Path) -> Path:
    """A private copy of a `built_once` directory at `dest` (contents and mtimes kept), for a test that writes."""
    shutil.copytree(built, dest, symlinks=True, ignore=shutil.ignore_patterns(DONE))
    return dest
