"""The route history: each target's routes that failed, as deploy.lock's `routes` keeps them (records.DroppedRoute).

A record keeps the key of the node that failed the route, so the route is not tried again until something it
depends on (code, weights, options, a toolchain, modelbuild itself) changes, and what answers the failure (the
rewrites a refusal points at, or that repair recipes are next). The route pipeline and the plan read the
history; failures.py says what a build adds to it; `planning.record` writes it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Mapping

from buildsys.records import DroppedRoute, RouteEntry

if TYPE_CHECKING:
    from buildsys.planning.routes import Route

#: How a node that already failed in this build under the same key is failed again, unrun.
FAILED_EARLIER = "failed earlier in this build: "

#: target → its failed routes, oldest first.
History = dict[str, list[DroppedRoute]]


def read(routes: Mapping[str, RouteEntry]) -> History:
    """The history deploy.lock's `routes` section holds."""
    return {target: list(entry.get("dropped", [])) for target, entry in sorted(routes.items())}


def record_of(history: list[DroppedRoute], route: "Route") -> DroppedRoute | None:
    """The failure recorded for `route`, if any."""
    words = route.words()
    return next((r for r in history if r["route"] == words), None)
