"""The only code that writes deploy.lock (and the build record beside it): what a build did, recorded.

The executor runs what the plan gives it and reports each finished node here; the decision loop
(settle.py) reports the routes that failed; `clean` reports that deliverables were removed. Each report
becomes the lock's entries — a node's key, components, output tree and committed facts (its kind decides
which: planning.kinds), a delivered target with the route that made it, a dropped route with why — and the
lock is rewritten at once (record first, then the lock: storage.lock), so a killed build keeps what it
finished and nothing half-made is ever fresh.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Mapping

from buildsys.planning.kinds import kind_of
from buildsys.records import ChosenRoute, DroppedRoute, FileRow, node_entry, target_entry

if TYPE_CHECKING:
    from buildsys.planning.node import Node
    from buildsys.planning.routes import Route
    from buildsys.storage.lock import Lock


class LockWriter:
    """Records into one project's deploy.lock; every method writes the lock before it returns."""

    def __init__(self, lock: "Lock"):
        self.lock = lock

    def published(self, node: "Node", key: str, components: dict[str, Any], tree: str, files: list[FileRow],
                  metrics: dict[str, Any], built: dict[str, Any], delivery: "Delivery | None" = None) -> None:
        """A node built or restored from a cache under `key`; with `delivery`, the target its check accepted
        was delivered too (artifacts/<target>/ holds the artifact's files)."""
        self.lock.nodes[node.name] = node_entry(key=key, components=components, tree=tree, files=files, built=built,
                                                metrics=metrics, fields=kind_of(node).lock_fields(node, metrics))
        if delivery is not None:
            self._deliver(delivery)
        self.lock.write()

    def delivered(self, delivery: "Delivery") -> None:
        """A target's deliverable restored under artifacts/ (its check's entry stands)."""
        self._deliver(delivery)
        self.lock.write()

    def withdrawn(self, target: str) -> None:
        """A target whose check failed has no deliverable any more."""
        if self.lock.targets.pop(target, None) is not None:
            self.lock.write()

    def dropped(self, records: Mapping[str, DroppedRoute]) -> None:
        """Routes that failed: each replaces an older failure of the same route in its target's history."""
        for target, record in records.items():
            entry = self.lock.routes.setdefault(target, {"dropped": []})
            entry["dropped"] = [r for r in entry["dropped"] if r["route"] != record["route"]] + [record]
        self.lock.write()

    def chose(self, target: str, record: ChosenRoute) -> None:
        """The route a target with `prefer:` ships, and the comparison that chose it (planning.prefer)."""
        self.lock.routes.setdefault(target, {"dropped": []})["chosen"] = record
        self.lock.write()

    def cleared(self) -> None:
        """Every deliverable under artifacts/ was removed (`modelbuild clean`)."""
        self.lock.targets.clear()
        if self.lock.path.exists():
            self.lock.write()

    def _deliver(self, delivery: "Delivery") -> None:
        self.lock.targets[delivery.target] = target_entry(node=delivery.node, path=delivery.path, files=delivery.files,
                                                          route=delivery.route.words(), rewrites=delivery.rewrites)
        history = self.lock.routes.get(delivery.target)
        if history is not None:  # this route passes now: forget its old failure
            history["dropped"] = [r for r in history["dropped"] if r["route"] != delivery.route.words()]
            if not history["dropped"] and "chosen" not in history:
                del self.lock.routes[delivery.target]


@dataclass(frozen=True)
class Delivery:
    """A target's artifact put under artifacts/<target>/: which node, where, its files, the route that made it."""

    target: str
    node: str
    path: str
    files: list[FileRow]
    route: "Route"
    rewrites: list[str]
