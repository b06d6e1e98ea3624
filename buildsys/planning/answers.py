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
    from buildsys.lowering import Answer
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
    a refusal naming STFT gets `stft`, not also `complex` for the complex dtype it mentions. A step the build
    stopped at its time budget or memory ceiling refused nothing: its text names no op, and the program's ops
    ("in-program") would send it down a rewrite's route that is no faster (ExecuTorch's int8 lowering of a
    DenseNet stopped at 5 minutes; the pooling rewrite then failed in the quantizer)."""
    from buildsys.lowering.answers import STOPPED

    if STOPPED.search(error):
        return []
    matches = explain_refusal(error, ops)
    return [m.rewrite.name for m in matches if m.tier == matches[0].tier] if matches else []


def answers_first(route: "Route", failed: int, error: str, ops: Sequence[str] = ()) -> bool:
    """Whether the answers of the step making stop `failed` of `route` go before the rewrites the refusal points
    at: those rewrites are a guess (its text names no op and matches no sign, only the program holds an op they
    remove: explain_refusal's `in-program` tier) and the step reads the text as one of its symptoms. The window
    partition's rank-6 reshape refused by Core ML named no op; the attention rewrite the program's attention
    suggested failed the same way before the static-shapes switch the text called for passed. A step's generic
    answer (its whole program decomposed) is no reading of the text and stays after the rewrites."""
    from buildsys.lowering import symptom_answers

    matches = explain_refusal(error, ops)
    return bool(matches) and matches[0].tier == "in-program" and \
        bool(symptom_answers(error, route.step_at(failed).symptoms))


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


# --- lowering answers: decompositions, static exports, converter switches, other routes (docs/lowering.md) ---

#: At most this many answered routes are kept for one refusal (a step's answers come best first).
MAX_ANSWERS = 3


def lowering_routes(route: "Route", failed: int, error: str, ops: Sequence[str], decomposable: Sequence[str] | None,
                    options: Mapping[str, Any], candidates: Sequence["Route"], pinned: bool) -> list["Route"]:
    """The routes that answer the refusal `error` of the step making stop `failed` of `route`, best first: each of
    the step's answers (`Step.answers`: its symptoms, then the decomposition of the ATen ops the refusal names)
    placed on the route (`answer_route`). `pinned`: the target pins its route (`via:`, `routes:`), so an answer
    that is another route is not taken."""
    step = route.step_at(failed)
    out: list["Route"] = []
    for found in step.answers(error, ops, decomposable):
        answered = answer_route(route, failed, found, options, candidates, pinned)
        if answered is not None and answered != route and answered not in out:
            out.append(answered)
    return out[:MAX_ANSWERS]


def answer_route(route: "Route", failed: int, found: "Answer", options: Mapping[str, Any],
                 candidates: Sequence["Route"], pinned: bool) -> "Route | None":
    """`route` with `found` applied: its options on the stop it names (the refusing one, the one that loads the
    module, or an earlier format), a decomposition merged with the stop's own; or, for a route answer, the route
    through its `via` formats. None where it changes nothing, the target set those options itself, a static
    export has no fixed-shape step after it, or the options do not validate."""
    from pydantic import ValidationError

    from buildsys.lowering import LOADING, STEP
    from buildsys.planning.routes import honours, switch_values

    if found.via:
        other = None if pinned else _route_via(route, found.via, candidates)
        return other if other is not None and honours(other, options) else None
    at = route.loading_stop() if found.at == LOADING else failed if found.at == STEP else \
        next((j for j in range(failed - 1, 0, -1) if route.stops[j].format == found.at), None)
    if at is None:
        return None
    stop, step = route.stops[at], route.step_at(at)
    given = _given(options, stop.format)
    values = found.values
    if set(values) & set(given):
        return None  # the target chose these options itself
    if found.static_only and not any(_makes_static(route, k, options) for k in range(at + 1, len(route.stops))):
        return None  # a .pt2 delivered with its dynamic axes must keep failing, naming the constraint
    if "decompose" in values:
        ops = ("core",) if values["decompose"] == "core" else tuple(dict.fromkeys([*stop.decompose, *values["decompose"]]))
        if stop.decompose in (("core",), ops):
            return None
        new = replace(stop, decompose=ops)
    else:
        current = {**given, **stop.options(step)}
        if found.label in stop.switches or all(current.get(k) == v for k, v in values.items()):
            return None
        if any(set(switch_values(step, s)) & set(values) for s in stop.switches):
            return None  # it would undo a switch this route took (the other exporter, and back again)
        new = replace(stop, switches=(*stop.switches, found.label))
    try:
        step.Options.model_validate({**given, **new.options(step)})
    except ValidationError:
        return None
    return route.with_stop(at, new, "answer")


def _makes_static(route: "Route", i: int, options: Mapping[str, Any]) -> bool:
    step, stop = route.step_at(i), route.stops[i]
    return step.makes_static({**_given(options, stop.format), **stop.options(step)})


def _given(options: Mapping[str, Any], fmt: str) -> dict[str, Any]:
    """The options the target sets for format `fmt` ({} where none, or not a mapping: expansion reports that)."""
    found = options.get(fmt)
    return dict(found) if isinstance(found, dict) else {}


def _route_via(route: "Route", via: Sequence[str], candidates: Sequence["Route"]) -> "Route | None":
    """The target's candidate that passes `via` in order to the same format, else the cheapest such path."""
    from buildsys.planning.routes import Route, through

    def passes(formats: list[str]) -> bool:
        rest = iter(formats)
        return all(f in rest for f in via)  # in order

    found = next((c for c in candidates if c != route and c.formats[-1] == route.formats[-1] and passes(c.formats)), None)
    if found is not None:
        return Route(found.stops, "answer")
    formats = through([route.formats[0], *via, route.formats[-1]])
    return Route.of_formats(formats, "answer") if formats else None
