"""The no-op fast path: answer an unchanged `plan` / `build` from a snapshot, before importing the CLI.

A no-op run spends nearly all its time importing click, pydantic and the step registry only to
find that nothing changed. So, as ninja and Bazel do, the last no-op run that found everything
fresh leaves a snapshot (`.modelbuild/noop.json`): the exact command line and environment it
answered, the text it printed, and the stat record (inode, size, mtime, ctime, mode) of every file
and directory its answer depended on:

- the deploy file, its includes and the built-in recipes; deploy.lock and the build record;
- every file the plan hashed (weights, data, factory code, shipped and step-named files, every
  delivered artifact) and every directory under a hashed tree;
- the directories where factory imports were looked for (a new module there changes discovery);
- the code of every loaded non-stdlib module (modelbuild itself, plugins, pydantic…) and the
  sys.path directories (installing or upgrading a package changes its site-packages directory,
  and package versions enter keys).

`answer()` runs first in the entry point with the standard library only. It prints the stored text
and exits 0 only when the command line, the environment and every stat record are identical;
anything else (a mismatch, a missing file, an unknown flag, `--json`, `--force`, a held build lock,
an unreadable snapshot) falls through to the normal path, which re-checks everything. Because
ctime is compared, an edit that keeps size and mtime (`touch -d`) still counts as a change.

A snapshot is only written by a run that printed a no-op answer, and only if no recorded file
changed since shortly before that run started (git's "racily clean" guard): its answer is then
known to hold for exactly the recorded state. It never contacts a remote cache: it reads local
files only. `MODELBUILD_NO_FASTPATH=1` turns it off; `MODELBUILD_TRACE_FASTPATH=1` says on stderr
whether it answered and why not.
"""

from __future__ import annotations

import io
import json
import os
import sys
import time
from contextlib import contextmanager

TYPE_CHECKING = False  # typing costs more to import than this whole fast path
if TYPE_CHECKING:
    from collections.abc import Iterator
    from typing import Any

SNAPSHOT = "noop.json"
FORMAT = 1
MAX_ENTRIES = 8  # one per command line (plan, build, build -j 2, per target selection…)
RACY_NS = 50_000_000  # file timestamps come from a coarse clock: treat 50 ms before the start as "during"
TRACE = "MODELBUILD_TRACE_FASTPATH"
OFF = "MODELBUILD_NO_FASTPATH"
DEFAULT_CONFIG = "deploy.yaml"  # as buildsys.planning.project.DEFAULT_CONFIG (not imported: it must stay cheap)

# Options that do not change a no-op's answer; anything else sends the command to the normal path.
_FLAGS = {"plan": {"--check"}, "build": {"-k", "--keep-going"}}
_VALUED = {"plan": set(), "build": {"-j", "--jobs", "--timeout", "--worker-memory"}}


def parse(argv: list[str]) -> tuple[str, str, tuple[str, ...]] | None:
    """(config path, command, targets) of a plain `plan` / `build` command line, else None."""
    config, i = DEFAULT_CONFIG, 0
    while i < len(argv) and argv[i].startswith("-"):
        if argv[i] in ("-f", "--file") and i + 1 < len(argv):
            config, i = argv[i + 1], i + 2
        elif argv[i].startswith("--file="):
            config, i = argv[i][len("--file="):], i + 1
        else:
            return None
    if i >= len(argv) or argv[i] not in _FLAGS:
        return None
    command, rest, targets = argv[i], argv[i + 1:], []
    j = 0
    while j < len(rest):
        arg = rest[j]
        if arg in _FLAGS[command]:
            j += 1
        elif arg in _VALUED[command] and j + 1 < len(rest):
            j += 2
        elif any(arg.startswith(f"{opt}=") for opt in _VALUED[command] if opt.startswith("--")):
            j += 1
        elif arg.startswith("-") or not arg:
            return None
        else:
            targets.append(arg)
            j += 1
    return config, command, tuple(targets)


def snapshot_path(config: str) -> str:
    """Where the snapshot of `config` lives: in the project's cache (as project.open_project puts it)."""
    cache = os.environ.get("MODELBUILD_CACHE") or os.path.join(os.path.dirname(os.path.abspath(config)), ".modelbuild")
    return os.path.join(cache, SNAPSHOT)


#: Variables outside MODELBUILD_* that change a no-op's answer: which GPU the plan sees (a TensorRT
#: node is blocked without one) and how the stored text is rendered.
_SHAPING = ("CUDA_VISIBLE_DEVICES", "NO_COLOR", "FORCE_COLOR", "COLUMNS", "TERM")


def context(argv: list[str]) -> dict[str, Any]:
    """Everything outside the files that shapes the answer: command line, interpreter, environment."""
    return {
        "format": FORMAT, "argv": list(argv), "cwd": os.getcwd(), "python": sys.executable, "version": sys.version,
        "path": [os.path.abspath(p) for p in sys.path],
        "env": {k: v for k, v in sorted(os.environ.items())
                if (k.startswith("MODELBUILD_") and k != TRACE) or k in _SHAPING},
        "host": os.uname().nodename if hasattr(os, "uname") else "",  # host-bound keys (benchmarks)
        "tty": _isatty(sys.stdout), "encoding": getattr(sys.stdout, "encoding", None),
    }


def fingerprint(path: str) -> list[int] | None:
    """The stat record compared for `path` (None: it does not exist)."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return [st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_mode]


def answer(argv: list[str] | None = None) -> None:
    """Print the stored answer and exit 0 if this exact command is a no-op on an unchanged project;
    otherwise return (the caller runs the normal CLI)."""
    argv = sys.argv[1:] if argv is None else argv
    if os.environ.get(OFF):
        return
    try:
        reason = _check(argv)
    except Exception as exc:  # noqa: BLE001  (any doubt, even a bug here, means the normal path answers)
        reason = f"{type(exc).__name__}: {exc}"
    if isinstance(reason, str):
        _trace(f"miss: {reason}")
        return
    sys.stdout.write(reason["output"])
    sys.stdout.flush()
    _trace("hit")
    raise SystemExit(reason.get("exit", 0))


def _check(argv: list[str]) -> str | dict[str, Any]:
    """The matching snapshot entry, or why there is none."""
    parsed = parse(argv)
    if parsed is None:
        return "not a plain plan/build command line"
    config, command, _targets = parsed
    path = snapshot_path(config)
    try:
        with open(path, encoding="utf-8") as f:
            entries = json.load(f)["entries"]
    except FileNotFoundError:
        return "no snapshot"
    except (OSError, ValueError, KeyError, TypeError):
        return "unreadable snapshot"
    ctx = context(argv)
    entry = next((e for e in entries if isinstance(e, dict) and e.get("context") == ctx), None)
    if entry is None:
        return "no snapshot for this command line and environment"
    for name, recorded in entry.get("stats", {}).items():
        if fingerprint(name) != recorded:
            return f"changed: {name}"
    if command == "build" and _build_lock_held(os.path.dirname(path)):
        return "another build holds the project"
    return entry


def _build_lock_held(cache: str) -> bool:
    """Whether a build holds .modelbuild/build.lock (filelock's flock): then the normal path waits for it."""
    try:
        import fcntl
    except ImportError:
        return True  # no flock here: let the normal path decide
    try:
        fd = os.open(os.path.join(cache, "build.lock"), os.O_RDONLY)
    except FileNotFoundError:
        return False
    except OSError:
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    except OSError:
        return True
    finally:
        os.close(fd)


def _trace(message: str) -> None:
    if os.environ.get(TRACE):
        print(f"modelbuild fast path: {message}", file=sys.stderr)


def _isatty(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


class Recorder:
    """Collects, during one plan/build run, what its answer depends on; saves the snapshot if the
    run was a no-op. Create it before the project is opened (its start time guards against files
    edited during the run) and only in the `plan` and `build` commands."""

    def __init__(self, command: str, config: str, targets: tuple[str, ...], eligible: bool = True):
        self.start_ns = time.time_ns()
        self.argv = sys.argv[1:]
        self.config = config
        self.context = context(self.argv)
        # Saved only when this process's command line is the plain command being run (not, say,
        # `bundle` calling the build, or a test runner calling the CLI in-process).
        self.eligible = eligible and not os.environ.get(OFF) and parse(self.argv) == (config, command, tuple(targets))
        self.paths: set[str] = set()  # files and directories whose stat the answer depends on
        self.trees: set[str] = set()  # hashed directories: every directory under them counts too
        self.output = io.StringIO()

    @contextmanager
    def watch(self, planner: Any) -> Iterator[None]:
        """Record every file the planner hashes and every place a factory import is looked for."""
        if not self.eligible:
            yield
            return
        from buildsys.config import inputs

        stat, module_file = planner.stat, inputs._module_file
        digest, tree = stat.digest, stat.tree

        def watched_digest(path: Any) -> str:
            self.paths.add(os.path.abspath(path))
            return digest(path)

        def watched_tree(root: Any) -> Any:
            self.paths.add(os.path.abspath(root))
            self.trees.add(os.path.abspath(root))
            return tree(root)

        def watched_module_file(root: Any, module: str) -> Any:
            base = root.joinpath(*module.split("."))
            self.paths.update(os.path.abspath(p) for p in (base.parent, base, base.with_suffix(".py")))
            return module_file(root, module)

        stat.digest, stat.tree, inputs._module_file = watched_digest, watched_tree, watched_module_file
        try:
            yield
        finally:
            del stat.digest, stat.tree  # back to the class's methods
            inputs._module_file = module_file

    @contextmanager
    def capture(self) -> Iterator[None]:
        """Print through a buffer so the exact text (styles included) can be stored and replayed."""
        if not self.eligible:
            yield
            return
        real = sys.stdout
        tty = _isatty(real)

        class Buffer(io.StringIO):
            def isatty(self) -> bool:  # click strips styles unless the real stream is a terminal
                return tty

        sys.stdout = buffer = Buffer()
        try:
            yield
        finally:
            sys.stdout = real
            real.write(buffer.getvalue())
            real.flush()
            self.output.write(buffer.getvalue())

    def save(self, project: Any, output: str | None = None) -> None:
        """Write the snapshot of this no-op answer (`output`, or what `capture` printed)."""
        if not self.eligible:
            return
        target = os.path.join(str(project.cache_dir), SNAPSHOT)
        path = snapshot_path(self.config)
        if os.path.realpath(path) != os.path.realpath(target) or self.context != context(self.argv):
            _trace("not saved: the cache is not where the fast path looks, or the environment changed")
            return
        stats = {p: fingerprint(p) for p in sorted(self._dependencies(project))}
        racy = [p for p, fp in stats.items() if fp is not None and max(fp[2], fp[3]) >= self.start_ns - RACY_NS]
        if racy:
            _trace(f"not saved: {racy[0]} changed while planning")
            return
        entry = {"context": self.context, "output": self.output.getvalue() if output is None else output,
                 "exit": 0, "stats": stats}
        try:
            with open(path, encoding="utf-8") as f:
                old = [e for e in json.load(f)["entries"] if e.get("context") != self.context]
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            old = []
        body = json.dumps({"entries": [entry, *old][:MAX_ENTRIES]}, separators=(",", ":"))
        tmp = f"{path}.{os.getpid()}.tmp"
        try:
            with open(tmp, "w", encoding="utf-8") as f:
                f.write(body)
            os.replace(tmp, path)
        except OSError as exc:  # a read-only cache only costs the fast path
            _trace(f"not saved: {exc}")
            return
        _trace(f"saved ({len(stats)} stat records)")

    def _dependencies(self, project: Any) -> set[str]:
        from buildsys.storage.lock import lock_path_for

        cfg = project.config
        lock = project.planner.lock
        paths = set(self.paths) | {os.path.abspath(p) for p in (*cfg.files, lock_path_for(cfg.path), lock.record_path)}
        ops = os.path.join(str(project.planner.store.dir), "ops")  # op coverage the plan shows (buildsys.planning.coverage)
        os.makedirs(ops, exist_ok=True)  # so that the first analysis, which adds a file there, is a change
        paths.add(os.path.abspath(ops))
        for tree in self.trees:
            for folder, dirs, _files in os.walk(tree):
                paths.update(os.path.join(folder, d) for d in dirs)
        for model in cfg.project.models.values():  # `source.code` globs: any new match counts
            for pattern in getattr(model.source, "code", None) or []:
                static = []
                for part in pattern.split("/"):
                    if any(c in part for c in "*?["):
                        break
                    static.append(part)
                base = os.path.join(str(cfg.root), *static)
                paths.add(os.path.abspath(base))
                for folder, dirs, _files in os.walk(base):
                    paths.update(os.path.join(folder, d) for d in dirs)
        paths.update(_recipe_files())
        paths.update(_module_files())
        paths.update(os.path.abspath(p) for p in sys.path)
        return paths


def _recipe_files() -> set[str]:
    """The built-in recipe folder and its files (config.load.builtin_recipes reads them)."""
    import buildsys

    package = os.path.dirname(os.path.abspath(buildsys.__file__))
    out = set()
    for folder in (os.path.join(package, "recipes"), os.path.join(os.path.dirname(package), "recipes")):
        out.add(folder)
        if os.path.isdir(folder):
            out.update(os.path.join(folder, n) for n in os.listdir(folder) if n.endswith(".yaml"))
    return out


def _module_files() -> set[str]:
    """Source files of the loaded modules outside the standard library (whose version is in the context)."""
    import sysconfig

    paths = sysconfig.get_paths()
    stdlib = tuple(os.path.join(paths[k], "") for k in ("stdlib", "platstdlib"))
    site = tuple(os.path.join(paths[k], "") for k in ("purelib", "platlib"))
    out = set()
    for module in list(sys.modules.values()):
        file = getattr(module, "__file__", None)
        if not file:
            continue
        file = os.path.abspath(file)
        if file.startswith(stdlib) and not file.startswith(site):
            continue
        out.add(file)
    return out
