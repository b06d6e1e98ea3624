"""deploy.lock: what was built, from what, with which tools; and its uncommitted twin, the build record.

deploy.lock is committed by users like dvc.lock, so it holds only what two clean builds of the same
inputs agree on, on any host: per node its key components, key, output tree and files, and a check's
verdict. What one build on one host observed (when, where, how long, the measured errors and
latencies) goes to the *build record* `.modelbuild/<lock stem>.record.json` beside it, and nodes
whose key names the host (benchmarks) live in the record alone. Reading merges the two; a record
entry counts only while its key equals the lock's, so a stale record never lends its numbers to a
newer build. Both are JSON with sorted keys, rewritten atomically after every node that succeeds
(record first, then the lock, which is the commit point), so a killed build keeps what it finished
and nothing half-made is fresh.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from buildsys.errors import ConfigError
from buildsys.records import NodeEntry, RouteEntry, TargetEntry
from buildsys.storage.store import atomic_write

LOCK_VERSION = 1
#: Entry fields that describe one build on one host: they go to the record, never to the lock.
VOLATILE = ("built", "metrics")
#: An entry flag: the whole node is host-bound (its key includes the host) and lives in the record.
LOCAL = "local"


def lock_path_for(config: Path) -> Path:
    """deploy.yaml → deploy.lock; deploy.yaml.example → deploy.lock; x.yml → x.lock."""
    name = config.name
    for suffix in (".yaml", ".yml"):
        if suffix in name:
            return config.with_name(name[: name.index(suffix)] + ".lock")
    return config.with_name(name + ".lock")


def record_path_for(lock: Path) -> Path:
    """deploy.lock → .modelbuild/deploy.record.json (beside the project's cache, never committed)."""
    return lock.parent / ".modelbuild" / f"{lock.stem}.record.json"


@dataclass
class Lock:
    """deploy.lock merged with its build record: `nodes` by node name, `targets` by target name,
    and `routes`: per target, the routes that failed (`{"dropped": [{"route", "node", "key",
    "reason"}]}`), committed so that no machine retries a route under a key it already failed with."""

    path: Path
    nodes: dict[str, NodeEntry] = field(default_factory=dict)
    targets: dict[str, TargetEntry] = field(default_factory=dict)
    routes: dict[str, RouteEntry] = field(default_factory=dict)

    def entry(self, node: str) -> NodeEntry:
        """The lock's entry of `node`, empty when it has none."""
        return self.nodes.get(node) or NodeEntry()

    @property
    def record_path(self) -> Path:
        return record_path_for(self.path)

    @classmethod
    def read(cls, path: Path, record_path: Path | None = None) -> "Lock":
        """The lock at `path` merged with its build record (or the record at `record_path`)."""
        raw = _read_json(path, "restore it from version control or delete it to rebuild everything")
        if raw is None or raw.get("version") != LOCK_VERSION:
            return cls(path)  # none yet, or an older layout: treat everything as not built
        lock = cls(path, raw.get("nodes", {}), raw.get("targets", {}), raw.get("routes", {}))
        try:
            record = _read_json(record_path or lock.record_path, "") or {}
        except ConfigError:
            record = {}  # the record is only a cache of observations: a damaged one is dropped
        for name, volatile in record.get("nodes", {}).items():
            entry = lock.nodes.get(name)
            if volatile.get(LOCAL):
                lock.nodes.setdefault(name, volatile)
            elif entry is not None and volatile.get("key") == entry.get("key"):
                for k in VOLATILE:
                    if k in volatile:
                        entry[k] = volatile[k]  # type: ignore[literal-required]  # (VOLATILE names NodeEntry keys)
        return lock

    def write(self) -> None:
        """Write the record, then the lock: each holds its share of every entry (see the module doc)."""
        committed: dict[str, Any] = {}
        record: dict[str, Any] = {}
        for name, entry in self.nodes.items():
            if entry.get(LOCAL):
                record[name] = entry
                continue
            committed[name] = {k: v for k, v in entry.items() if k not in VOLATILE}
            volatile = {k: v for k, v in entry.items() if k in VOLATILE}
            if volatile:
                record[name] = {"key": entry.get("key"), **volatile}
        self.record_path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(self.record_path, json.dumps({"version": LOCK_VERSION, "nodes": record}, sort_keys=True, indent=2) + "\n")
        body = {"version": LOCK_VERSION, "nodes": committed, "targets": self.targets}
        if self.routes:  # only once a route has failed: other locks keep their bytes
            body["routes"] = self.routes
        atomic_write(self.path, json.dumps(body, sort_keys=True, indent=2) + "\n")

    def as_dict(self) -> dict[str, Any]:
        """The merged view as one JSON-able dict, shaped like deploy.lock (reports, scripts, tests)."""
        return {"version": LOCK_VERSION, "nodes": self.nodes, "targets": self.targets, "routes": self.routes}

    def referenced_blobs(self) -> set[str]:
        blobs = {f[1] for entry in self.nodes.values() for f in entry.get("files", [])}
        return blobs | {f[1] for entry in self.targets.values() for f in entry.get("files", [])}

    def referenced_keys(self) -> set[str]:
        return {entry["key"] for entry in self.nodes.values() if "key" in entry}


def _read_json(path: Path, hint: str) -> dict[str, Any] | None:
    """The JSON object in `path`, None when there is no file; ConfigError when it does not parse."""
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (ValueError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path.name} is not valid JSON ({exc})", hint=hint) from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path.name} does not hold a JSON object", hint=hint)
    return raw
