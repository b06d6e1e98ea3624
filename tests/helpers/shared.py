"""Builds that several tests read, made once per test session and shared by every pytest-xdist worker.

Two ways, both through modelbuild's own content-addressed store:
- `shared_remote`: the end-to-end tiers (`slow`, `zoo`) build with one file:// remote cache per test session
  (storage/remote.py, the same cache a team shares), so a node that another test already built with the same key
  (the same model, data, options and upstream artifacts) is pulled and checked, not built again.
- `once` / `built_once`, for a project (and what its build returned) that many tests read as it is:

A module-scoped fixture builds once per worker that runs one of its tests, and `--dist worksteal` spreads a
module's tests over both workers: an end-to-end project was built twice, sometimes three times, per session.
`built_once` builds it once per session: the first worker to ask builds it under a file lock in the
directory the workers share, the others wait for it and read the same build. A test that runs modelbuild in
the project or changes it takes `copy_of` it: a copy with the same contents and mtimes is a fresh project to
modelbuild (every node is keyed by content), so a build there is a no-op, not a rebuild.
"""

from __future__ import annotations

import os
import pickle
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

import pytest
from filelock import FileLock

DONE = ".built-once"  # written last: a build that raised leaves none, and the next test to ask builds again
VALUE = ".built-once.pickle"  # what the build returned
T = TypeVar("T")


def session_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The temp directory every worker of this session shares (under xdist each worker's base is a child of it)."""
    base = tmp_path_factory.getbasetemp()
    return base.parent if base.name.startswith("popen-gw") else base


#: The markers of the tests that build through the session's shared remote cache: the end-to-end tiers, whose
#: tests build the same small models through the same steps many times over. The fast tier tests the build's own
#: mechanics (what ran, what was cached, what a build printed) and builds without it.
SHARED_REMOTE_MARKERS = ("slow", "zoo")
REMOTE_ENV = "MODELBUILD_REMOTE"


@contextmanager
def shared_remote(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Build with the session's shared file:// remote cache while inside, unless a remote is configured
    already (`MODELBUILD_REMOTE`, 'off' included). A test that sets or clears it itself (the remote cache's
    and Dask's tests) overrides this for its own duration, as monkeypatch does."""
    if REMOTE_ENV in os.environ:
        yield
        return
    remote = session_dir(tmp_path_factory) / "remote-cache"
    remote.mkdir(exist_ok=True)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(REMOTE_ENV, remote.as_uri())
        yield


def once(tmp_path_factory: pytest.TempPathFactory, name: str, make: Callable[[Path], T]) -> tuple[Path, T]:
    """`make(root)` run once per test session across workers for this `name`: the directory it filled and the
    value it returned (pickled beside its files, so a worker that did not build it gets an equal copy).

    Readers must not change the directory (take `copy_of` it for that): other tests read the same one.
    """
    shared = session_dir(tmp_path_factory) / "built-once"
    shared.mkdir(exist_ok=True)
    root = shared / name
    with FileLock(str(root) + ".lock"):
        if not (root / DONE).exists():
            shutil.rmtree(root, ignore_errors=True)
            root.mkdir()
            value = make(root)
            (root / VALUE).write_bytes(pickle.dumps(value))
            (root / DONE).touch()
            return root, value
    return root, pickle.loads((root / VALUE).read_bytes())


def built_once(tmp_path_factory: pytest.TempPathFactory, name: str, build: Callable[[Path], None]) -> Path:
    """The directory `build(root)` filled, run once per test session across workers for this `name` (`once`)."""
    return once(tmp_path_factory, name, build)[0]


def copy_of(built: Path, dest: Path) -> Path:
    """A private copy of a `built_once` directory at `dest` (contents and mtimes kept), for a test that writes."""
    shutil.copytree(built, dest, symlinks=True, ignore=shutil.ignore_patterns(DONE, VALUE))
    return dest
