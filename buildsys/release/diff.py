"""`modelbuild diff`: what changed, per target, between two builds: format, precision, check verdict, size,
accuracy, agreement, largest error, latency, route, step options and toolchain versions, each before and
after, and which changes are regressions beyond the given thresholds.

A side of the comparison is a deploy.lock (with its build record), a build record, a bundle, or a git
revision of the lock (`HEAD`, `main`, `HEAD~1:path/deploy.lock`). A lock's numbers come from its record
while keys match, else from the action cache under the check's key (buildsys.release.facts).
"""

from __future__ import annotations

import json
import subprocess
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from buildsys.errors import ModelbuildError
from buildsys.status import Verdict
from buildsys.release.facts import TargetFacts

#: Regression thresholds: size and latency in percent of the old value, accuracy, agreement and the share of weights
#: in the asked precision in percentage points, max_abs in percent (unset: an error change alone is no regression).
THRESHOLDS: dict[str, float | None] = {"size": 5.0, "accuracy": 0.5, "agreement": 0.5, "latency": 10.0, "max_abs": None,
                                       "weights": 1.0}
WORKING, HEAD = "working tree", "HEAD"


class DiffError(ModelbuildError):
    """A side of `diff` cannot be read: no such file or revision, or a file of another kind."""


@dataclass
class Side:
    label: str
    facts: dict[str, TargetFacts]


@dataclass
class Change:
    field: str
    before: Any
    after: Any
    delta: str = ""  # "+12.0%", "-0.50 pp"
    regressed: bool = False


@dataclass
class TargetDiff:
    target: str
    status: str  # added, removed, changed, unchanged
    changes: list[Change] = field(default_factory=list)

    @property
    def regressed(self) -> bool:
        return any(c.regressed for c in self.changes)


@dataclass
class Diff:
    before: str
    after: str
    targets: list[TargetDiff]
    thresholds: dict[str, float | None]

    @property
    def regressed(self) -> bool:
        return any(t.regressed for t in self.targets)

    def as_json(self) -> dict[str, Any]:
        return {"before": self.before, "after": self.after, "regressed": self.regressed, "thresholds": self.thresholds,
                "targets": [{**asdict(t), "regressed": t.regressed} for t in self.targets]}


# --- reading a side -----------------------------------------------------------------------------------

def load_side(spec: str | None, config: Path, default: str) -> Side:
    """`spec` (a file or a git revision; None: `default`, WORKING or HEAD) as the facts of its targets."""
    from buildsys.storage.lock import Lock, lock_path_for

    lock_path = lock_path_for(config)
    if spec is None and default == WORKING:
        return Side(WORKING, _facts(Lock.read(lock_path), config))
    spec = spec or HEAD
    path = Path(spec)
    if path.is_file():
        return _file_side(path, config)
    rev, _, inside = spec.partition(":")
    return _git_side(rev, Path(inside) if inside else None, lock_path, config)


def _facts(lock: Any, config: Path) -> dict[str, TargetFacts]:
    from buildsys.release.facts import from_lock

    return from_lock(lock, _store(config))


def _store(config: Path) -> Any:
    """The project's local store (for metrics of keys the record no longer holds), or None."""
    import os

    from buildsys.storage.hashing import StatCache
    from buildsys.storage.store import Store

    cache = Path(os.environ.get("MODELBUILD_CACHE") or config.resolve().parent / ".modelbuild")
    return Store(cache, StatCache(cache / "statcache.json")) if cache.is_dir() else None


def _file_side(path: Path, config: Path) -> Side:
    import tarfile
    import zipfile

    from buildsys.storage.lock import Lock

    if tarfile.is_tarfile(path) or zipfile.is_zipfile(path):
        from buildsys.release.facts import from_manifest

        return Side(path.name, from_manifest(_manifest(path)))
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise DiffError(f"{path} is neither a bundle nor JSON ({exc})", hint="give a deploy.lock, a build record "
                        "(.modelbuild/deploy.record.json), a bundle or a git revision") from None
    if isinstance(raw, dict) and "targets" in raw:
        return Side(str(path), _facts(Lock.read(path), path))
    if isinstance(raw, dict) and "nodes" in raw:  # a build record: with its lock when it sits beside one
        lock = path.parent.parent / f"{path.name.split('.record.json')[0]}.lock"
        if path.name.endswith(".record.json") and lock.is_file():
            return Side(str(path), _facts(Lock.read(lock, record_path=path), lock))
        from buildsys.release.facts import from_record

        return Side(str(path), from_record(raw))
    raise DiffError(f"{path} is JSON but neither a deploy.lock nor a build record")


def _manifest(path: Path) -> Any:
    from buildsys.storage.archive import BundleError, read_members
    from buildsys.release.bundle import MANIFEST, Manifest

    for name, handle in read_members(path):
        if name == MANIFEST or name.endswith("/" + MANIFEST):
            try:
                return Manifest.model_validate(json.loads(handle.read()))
            except ValueError as exc:
                raise BundleError(f"{MANIFEST} in {path.name} is not a valid manifest: {str(exc).splitlines()[0]}") from None
    raise BundleError(f"{path.name} has no {MANIFEST}")


def _git_side(rev: str, inside: Path | None, lock_path: Path, config: Path) -> Side:
    from buildsys.storage.lock import Lock, record_path_for

    where = lock_path.resolve().parent
    top = _git(where, "rev-parse", "--show-toplevel")
    if top is None:
        raise DiffError(f"'{rev}' is not a file, and {where} is not in a git repository to read it from",
                        hint="give two files (deploy.lock, a build record or a bundle) to compare")
    if _git(where, "rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}") is None:
        raise DiffError(f"'{rev}' is neither a file nor a git revision")
    rel = (inside or lock_path.resolve().relative_to(Path(top.strip()).resolve())).as_posix()
    text = _git(where, "show", f"{rev}:{rel}")
    label = f"{rev}:{rel}"
    if text is None:
        return Side(f"{label} (absent)", {})
    with tempfile.TemporaryDirectory(prefix="modelbuild-diff-") as tmp:
        old = Path(tmp) / lock_path.name
        old.write_text(text, encoding="utf-8")
        # The working record lends its numbers to the entries whose keys did not change since `rev`.
        return Side(label, _facts(Lock.read(old, record_path=record_path_for(lock_path)), config))


def _git(cwd: Path, *args: str) -> str | None:
    try:
        proc = subprocess.run(["git", "-C", str(cwd), *args], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return proc.stdout if proc.returncode == 0 else None


# --- comparing -------------------------------------------------------------------------------------

def compare(before: Side, after: Side, thresholds: dict[str, float | None] | None = None) -> Diff:
    limits = {**THRESHOLDS, **(thresholds or {})}
    out = []
    for target in sorted(set(before.facts) | set(after.facts)):
        old, new = before.facts.get(target), after.facts.get(target)
        if old is None and new is not None:
            out.append(TargetDiff(target, "added", [Change("check", None, new.verdict, regressed=not _passed(new.verdict))]))
        elif new is None and old is not None:
            out.append(TargetDiff(target, "removed", [Change("check", old.verdict, None)]))
        elif old is not None and new is not None:
            changes = _changes(old, new, limits)
            out.append(TargetDiff(target, "changed" if changes else "unchanged", changes))
    return Diff(before.label, after.label, out, limits)


def _changes(old: TargetFacts, new: TargetFacts, limits: dict[str, float | None]) -> list[Change]:
    changes = [Change(name, a, b) for name, a, b in (("format", old.format, new.format),
                                                       ("precision", old.precision, new.precision)) if a != b]
    if old.verdict != new.verdict:
        changes.append(Change("check", old.verdict, new.verdict, regressed=_passed(old.verdict) and not _passed(new.verdict)))
    if old.size != new.size and old.size is not None and new.size is not None:
        grow = 100.0 * (new.size - old.size) / old.size if old.size else 0.0
        changes.append(Change("size", old.size, new.size, f"{grow:+.1f}%", _over(grow, limits["size"])))
    a, b = old.headline, new.headline
    for name, key in (("accuracy", "accuracy"), ("agreement", "agreement")):
        if key in a and key in b and abs(b[key] - a[key]) > 1e-12:
            drop = 100.0 * (a[key] - b[key])
            changes.append(Change(name, a[key], b[key], f"{-drop:+.2f} pp", _over(drop, limits[name])))
    if "weights" in a and "weights" in b and abs(b["weights"] - a["weights"]) > 1e-9:  # share in the asked precision
        drop = 100.0 * (a["weights"] - b["weights"])
        changes.append(Change("weights", a["weights"], b["weights"], f"{-drop:+.1f} pp", _over(drop, limits["weights"])))
    if "max_abs" in a and "max_abs" in b and a["max_abs"] != b["max_abs"]:
        grow = 100.0 * (b["max_abs"] - a["max_abs"]) / a["max_abs"] if a["max_abs"] else float("inf")
        changes.append(Change("max_abs", a["max_abs"], b["max_abs"], _pct(grow), _over(grow, limits["max_abs"])))
    if "p50_ms" in a and "p50_ms" in b and a["p50_ms"] != b["p50_ms"]:
        grow = 100.0 * (b["p50_ms"] - a["p50_ms"]) / a["p50_ms"] if a["p50_ms"] else 0.0
        changes.append(Change("latency_p50_ms", a["p50_ms"], b["p50_ms"], _pct(grow), _over(grow, limits["latency"])))
    if old.route != new.route and old.route and new.route:
        changes.append(Change("route", " → ".join(old.route), " → ".join(new.route)))
    changes += _options(old.steps, new.steps)
    for name in sorted(set(old.toolchain) | set(new.toolchain)):
        if old.toolchain.get(name) != new.toolchain.get(name):
            changes.append(Change(f"toolchain {name}", old.toolchain.get(name), new.toolchain.get(name)))
    return changes


def _options(old: list[dict[str, Any]], new: list[dict[str, Any]]) -> list[Change]:
    """Step options by step name: each option that changed, and steps that came or went."""
    a = {s["step"]: s for s in old}
    b = {s["step"]: s for s in new}
    out = []
    for step in [s["step"] for s in old] + [s["step"] for s in new if s["step"] not in a]:
        if step not in b:
            out.append(Change(f"step {step}", "present", None))
        elif step not in a:
            out.append(Change(f"step {step}", None, _describe(b[step]["options"])))
        else:
            before, after = a[step]["options"], b[step]["options"]
            out += [Change(f"option {step}.{k}", before.get(k), after.get(k))
                    for k in sorted(set(before) | set(after)) if before.get(k) != after.get(k)]
            if a[step].get("step_version") != b[step].get("step_version"):
                out.append(Change(f"step {step} version", a[step].get("step_version"), b[step].get("step_version")))
    return out


def _describe(options: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in sorted(options.items()) if v is not None) or "defaults"


def _passed(verdict: str | None) -> bool:
    return bool(verdict) and str(verdict).startswith(Verdict.PASSED.value)


def _over(value: float, limit: float | None) -> bool:
    return limit is not None and value > limit


def _pct(value: float) -> str:
    return "new" if value == float("inf") else f"{value:+.1f}%"


def parse_thresholds(items: tuple[str, ...]) -> dict[str, float | None]:
    """`size=5`, `latency=10%`, `accuracy=0.5`, `max_abs=off` → thresholds (DiffError names a bad one)."""
    out: dict[str, float | None] = {}
    for item in items:
        name, sep, value = item.partition("=")
        name = name.strip().replace("-", "_")
        if not sep or name not in THRESHOLDS:
            raise DiffError(f"--threshold '{item}': give NAME=VALUE with NAME one of {', '.join(THRESHOLDS)}")
        text = value.strip().rstrip("%").removesuffix("pp").strip()
        if text in ("off", "none"):
            out[name] = None
            continue
        try:
            out[name] = float(text)
        except ValueError:
            raise DiffError(f"--threshold '{item}': '{value}' is not a number (or 'off')") from None
    return out
