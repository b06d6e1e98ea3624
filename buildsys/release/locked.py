"""`plan --locked`: is deploy.lock stale? A node is stale in the lock when the key it would have now differs
from the lock's (its code, weights, data, options, acceptance or toolchain changed) or the lock lacks it.
Work that only brings outputs back (a deliverable missing from artifacts/, a blob missing from the cache, a
fresh checkout in CI) leaves the lock as it is, so it does not count: that is what `plan --check` is for."""

from __future__ import annotations

from typing import Any

from buildsys.planning.kinds import kind_of
from buildsys.status import State


def stale_in_lock(plan: Any, lock: Any) -> list[tuple[str, list[str]]]:
    """(node, reasons) for every node whose lock entry a build would rewrite; blocked nodes (this host
    cannot build them) only when the lock has no entry for them; never host-bound nodes (benchmarks),
    which live in the uncommitted build record."""
    out = []
    for p in plan.order():
        entry = lock.nodes.get(p.node.name)
        if kind_of(p.node).host_bound or (p.state in (State.BLOCKED, State.FAILED) and entry is not None):
            continue
        if entry is None:
            out.append((p.node.name, p.reasons or ["not in the lock"]))
        elif p.key is not None and p.key != entry.get("key"):
            out.append((p.node.name, p.reasons or ["key changed"]))
        elif p.key is None and not p.fresh:  # an upstream node is stale: its consumers follow
            out.append((p.node.name, p.reasons))
    return out
