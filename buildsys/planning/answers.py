"""What answers a converter's refusal: the route that comes next after a refused one (docs/rewrites.md).

A refusal is data for the planner. When a route fails at a conversion, `history.failures` asks this module
what the refusal points at, and keeps the answer in the failed route's record in deploy.lock:
- **op rewrites** (`buildsys.rewrites`: an op some converters refuse, computed another way) applied where the
  PyTorch module is loaded: `onnx (rewrite stft)`. Only the stop made by a step that loads the module
  (options derived from `RewritableOptions`: the trace, torch.export, the ONNX exports) carries rewrites,
  since a rewrite changes the module, not a converted file.
The route pipeline (`pipeline.answered`) then places, after each route with such a record, the route with its
answer, so the answer costs nothing on a no-op and is found again from the lock alone. A target that sets
`rewrites:` (or its loading format's `rewrites` option) gets exactly those, and none added.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING, Any, Mapping, Sequence

from buildsys.rewrites import explain_refusal

if TYPE_CHECKING:
    from buildsys.planning.routes import Route


def with_rewrites(route: "Route", names: Sequence[str], options: Mapping[str, Any]) -> "Route | None":
    """`route` with `names` added to the rewrites of its loading stop; None when that adds nothing, the
    route loads no module, or the target's options for that format set `rewrites` themselves."""
    i = route.loading_stop()
    if i is None:
        return None
    stop = route.stops[i]
    if isinstance(options.get(stop.format), dict) and "rewrites" in options[stop.format]:
        return None  # the target chose this stop's rewrites
    new = [n for n in names if n not in stop.rewrites]
    if not new:
        return None
    return route.with_stop(i, replace(stop, rewrites=(*stop.rewrites, *new)), "answer")


def refusal_rewrites(error: str, ops: Sequence[str] = ()) -> list[str]:
    """The rewrites a converter's refusal points at, of its best tier only (buildsys.rewrites.explain_refusal):
    a refusal naming STFT gets `stft`, not also `complex` for the complex dtype it mentions."""

    matches = explain_refusal(error, ops)
    return [m.rewrite.name for m in matches if m.tier == matches[0].tier] if matches else []


def answer(route: "Route", rewrites: Sequence[str], options: Mapping[str, Any],
           pinned: Sequence[str] | None) -> tuple["Route | None", str]:
    """The route that answers a refusal pointing at `rewrites` on `route`, and, when it is not tried, the
    words a record's reason ends with to say which rewrites would have removed what was refused and why
    they are not tried. `pinned`: the target's own `rewrites:` (None: it lets rewrites be added)."""
    if not rewrites or route.loading_stop() is None:
        return None, ""
    i = route.loading_stop()
    assert i is not None
    stop = route.stops[i]
    answered = with_rewrites(route, rewrites, options) if pinned is None else None
    if answered is not None:
        return answered, ""
    if pinned is not None:
        not_tried = f"the target sets rewrites: [{', '.join(pinned)}]"
    elif isinstance(options.get(stop.format), dict) and "rewrites" in options[stop.format]:
        not_tried = f"its options for {stop.format} set rewrites"
    else:
        not_tried = f"this route applies {', '.join(stop.rewrites)} already"
    return None, f" (rewrite {', '.join(rewrites)} would remove what was refused; not tried: {not_tried})"
