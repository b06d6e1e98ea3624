"""Action keys: a digest over everything that can change a step's output, and the reasons it changed.

The key is computed from *components*, a JSON-able dict kept in deploy.lock; diffing the old and
new components is how `plan` explains why a node is stale.
"""

from __future__ import annotations

from functools import lru_cache
from importlib import metadata
from typing import Any

from buildsys.hashing import digest_json

#: Bump when the meaning of a key changes (component layout, digest algorithm): every key changes.
KEY_SCHEMA = 1

NOT_INSTALLED = "not installed"


@lru_cache(maxsize=None)
def package_version(name: str) -> str:
    """Installed version of a distribution, read from its metadata (never by importing it)."""
    try:
        return metadata.version(name).split("+")[0]
    except metadata.PackageNotFoundError:
        return NOT_INSTALLED


def toolchain(packages: tuple[str, ...] | list[str]) -> dict[str, str]:
    return {p: package_version(p) for p in sorted(set(packages))}


def action_key(components: dict[str, Any]) -> str:
    """The digest of the canonical JSON of `components` plus the key schema version."""
    return digest_json({"schema": KEY_SCHEMA, **components})


def explain(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """Human reasons for the difference between two component dicts (empty if they are equal).

    Component conventions: `step`/`step_version`, `options` (flat dict), `inputs` (role → digest,
    e.g. 'weights', 'code', 'data calibration', 'upstream digits/onnx'), `signature`, `toolchain`
    (package → version), `acceptance` (checks only).
    """
    reasons: list[str] = []
    if old.get("step") != new.get("step"):  # a different step: its other differences follow from that
        return [f"step {old.get('step')}→{new.get('step')}"]
    if old.get("step_version") != new.get("step_version"):
        reasons.append(f"step {new.get('step')} version {old.get('step_version')}→{new.get('step_version')}")
    old_opts, new_opts = old.get("options") or {}, new.get("options") or {}
    for name in sorted(set(old_opts) | set(new_opts)):
        if old_opts.get(name) != new_opts.get(name):
            reasons.append(f"option {name} {_fmt(old_opts.get(name))}→{_fmt(new_opts.get(name))}")
    old_in, new_in = old.get("inputs") or {}, new.get("inputs") or {}
    for role in sorted(set(old_in) | set(new_in)):
        if role not in old_in:
            reasons.append(f"new input {role}")
        elif role not in new_in:
            reasons.append(f"input {role} removed")
        elif old_in[role] != new_in[role]:
            reasons.append(f"{role} changed")
    if old.get("signature") != new.get("signature"):
        reasons.append("model signature changed")
    old_tc, new_tc = old.get("toolchain") or {}, new.get("toolchain") or {}
    for pkg in sorted(set(old_tc) | set(new_tc)):
        if old_tc.get(pkg) != new_tc.get(pkg):
            reasons.append(f"toolchain {pkg} {old_tc.get(pkg, 'none')}→{new_tc.get(pkg, 'none')}")
    if old.get("acceptance") != new.get("acceptance"):
        reasons.append("tolerance changed")
    known = {"step", "step_version", "options", "inputs", "signature", "toolchain", "acceptance"}
    for extra in sorted((set(old) | set(new)) - known):
        if old.get(extra) != new.get(extra):
            reasons.append(f"{extra} changed")
    return reasons


def _fmt(value: Any) -> str:
    return "unset" if value is None else str(value)
