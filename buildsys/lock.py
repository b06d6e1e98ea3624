"""deploy.lock: what was built, from what, with which tools, and what its checks observed.

Committed by users like dvc.lock. JSON with sorted keys (stable diffs), rewritten atomically after
every node that succeeds, so a killed build keeps what it finished and nothing half-made is fresh.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from buildsys.errors import ConfigError
from buildsys.store import atomic_write

LOCK_VERSION = 1


def lock_path_for(config: Path) -> Path:
    """deploy.yaml → deploy.lock; deploy.yaml.example → deploy.lock; x.yml → x.lock."""
    name = config.name
    for suffix in (".yaml", ".yml"):
        if suffix in name:
            return config.with_name(name[: name.index(suffix)] + ".lock")
    return config.with_name(name + ".lock")


@dataclass
class Lock:
    """In-memory deploy.lock: `nodes` by node name, `targets` by target name."""

    path: Path
    nodes: dict[str, dict[str, Any]] = field(default_factory=dict)
    targets: dict[str, dict[str, Any]] = field(default_factory=dict)

    @classmethod
    def read(cls, path: Path) -> "Lock":
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return cls(path)
        except ValueError as exc:
            raise ConfigError(f"{path.name} is not valid JSON ({exc})",
                              hint="restore it from version control or delete it to rebuild everything") from None
        if raw.get("version") != LOCK_VERSION:
            return cls(path)  # an older layout: treat everything as not built
        return cls(path, raw.get("nodes", {}), raw.get("targets", {}))

    def write(self) -> None:
        body = {"version": LOCK_VERSION, "nodes": self.nodes, "targets": self.targets}
        atomic_write(self.path, json.dumps(body, sort_keys=True, indent=2) + "\n")

    def referenced_blobs(self) -> set[str]:
        blobs = {f[1] for entry in self.nodes.values() for f in entry.get("files", [])}
        return blobs | {f[1] for entry in self.targets.values() for f in entry.get("files", [])}

    def referenced_keys(self) -> set[str]:
        return {entry["key"] for entry in self.nodes.values() if "key" in entry}
