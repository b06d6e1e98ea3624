"""Accuracy repair of quantized targets as routes (docs/repair.md): after a route's quantized artifact misses
its check, the same route with the quantizing step's repair recipes (`Step.repairs`) is tried next, in order.

A repair is planning: `failures.failures` marks a missed check on a route whose quantizing stop has recipes
(`"repair": true` in deploy.lock's record of the dropped route), and the route pipeline (`pipeline.repaired`)
places after that route the same route with each recipe at that stop, written
`onnx-int8 (repair keep-float)`. A recipe is option values of the step, so it enters the node's key: the
node that found a recipe is cached and reused, and a no-op build neither repeats the failed check nor
searches again. A recipe that searches (keep_float 'sensitive': per-layer sensitivity, then the most
sensitive layers kept at higher precision) gets the target's resolved tolerance as its goal (`with_goal`):
the search never loosens what the user wrote, and the check still judges the result. A target forbids
repair with `repair: false`, or names the recipes it allows, in order.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING, Any, Mapping, Sequence

if TYPE_CHECKING:
    from buildsys.formats.base import Step
    from buildsys.planning.routes import Route

#: What a blocked target whose repair recipes all failed can do, said once after the routes and their reasons.
WHAT_TO_DO = ("repair tried {tried}; to go on: give more or more representative calibration data, loosen the "
              "acceptance you wrote (modelbuild never does), pin `options: {{{fmt}: {{keep_float: [...]}}}}` with "
              "the layers to keep in float, or deliver a float precision")


def repair_stop(route: "Route") -> int | None:
    """The index of the route's stop whose step has repair recipes and runs with its defaults (no alternative,
    recipe or switch yet); None when the route has none."""
    for i in range(1, len(route.stops)):
        if route.step_at(i).repairs:
            return None if route.stops[i].tuned else i
    return None


def allowed(step: type["Step"], repair: bool | Sequence[str]) -> list[str]:
    """The step's recipe names a target's `repair` field allows, in the order tried."""
    if repair is True:
        return list(step.repairs)
    if repair is False:
        return []
    return [name for name in repair if name in step.repairs]


def written_options(cfg: Any, target: str, options: Mapping[str, Any]) -> dict[str, set[str]]:
    """Format → the option names the user wrote for a target (in deploy.yaml, directly or through a
    recipe of their own); what a built-in preset (`platform:`) chose is left out, so a repair recipe may
    change it (the android preset's full int8 may become weight-only, and the route says so)."""
    config = cfg.project.targets[target]
    out: dict[str, set[str]] = {}
    for fmt, given in options.items():
        names = {fmt, config.format} if fmt == config.goal else {fmt}
        out[fmt] = {k for k in (given if isinstance(given, dict) else {})
                    if any(("targets", target, "options", n, k) in cfg.locations for n in names)}
    return out


def repair_routes(route: "Route", options: Mapping[str, Any], repair: bool | Sequence[str],
                  model: Any = None, root: Any = None,
                  written: Mapping[str, Any] | None = None) -> list["Route"]:
    """`route` with each allowed recipe at its repair stop, except a recipe that sets an option the user
    wrote for that format (`written`, format → option names; None: every option in `options`), that the
    route's own alternative already tries, that contradicts the target's other options, changes nothing,
    or needs what the model lacks (keep-float's search needs calibration data: the step's `check_config`
    with `model`, `root`)."""
    from pydantic import ValidationError

    i = repair_stop(route)
    if i is None:
        return []
    step, stop = route.step_at(i), route.stops[i]
    given = options.get(stop.format) if isinstance(options.get(stop.format), dict) else {}
    chosen = set(given or {}) if written is None else set(written.get(stop.format, ()))
    out = []
    for name in allowed(step, repair):
        values = step.repairs[name]
        if set(values) & chosen:
            continue  # the user chose that option
        if any(alt == values and not set(alt) & set(given or {}) for alt in step.alternatives.values()):
            continue  # the route's alternative (`tflite-int8 (dynamic)`) is among the candidates already
        try:
            before = step.Options.model_validate(given or {})
            after = step.Options.model_validate({**(given or {}), **values})
        except ValidationError:
            continue
        if model is not None and step.check_config(model, after, root) is not None:
            continue
        if after != before:
            out.append(route.with_stop(i, replace(stop, repair=name), "repair"))
    return out


def add_repair_routes(candidates: list["Route"], found: Sequence["Route"], options: Mapping[str, Any],
                      repair: bool | Sequence[str], model: Any = None, root: Any = None,
                      written: Mapping[str, Any] | None = None) -> list["Route"]:
    """The candidates with, right after each route whose check miss opened a repair, that route's recipes; those
    that give up the scheme asked for (`Step.scheme_repairs`: int8 activations) after the last candidate that
    still delivers it (no alternative, no recipe), as alternatives go after the defaults: a full-int8 file
    another converter makes is worth more than a weight-only one of this converter."""
    out = list(candidates)
    for route in found:
        if route in out:
            i = out.index(route)
            new = [r for r in repair_routes(route, options, repair, model, root, written) if r not in out]
            keeps = [r for r in new if not _gives_up_scheme(r)]
            out[i + 1:i + 1] = keeps
            full = [j for j, r in enumerate(out) if not any(s.alternative or s.repair for s in r.stops)]
            at = max([i + len(keeps), *full]) + 1
            out[at:at] = [r for r in new if _gives_up_scheme(r)]
    return out


def _gives_up_scheme(route: "Route") -> bool:
    """Whether the route's repair recipe is one its step lists in `scheme_repairs`."""
    i = repair_stop_of(route)
    return i is not None and route.stops[i].repair in route.step_at(i).scheme_repairs


def repair_stop_of(route: "Route") -> int | None:
    """The index of the stop that holds a repair recipe, or None."""
    return next((i for i in range(1, len(route.stops)) if route.stops[i].repair), None)


#: Option values that make a step search for what meets the target's tolerance (they get it as `repair_goal`):
#: keep-float's sensitivity search, and pruning's highest ratio that holds (`sparsity: auto`).
SEARCHING = {"keep_float": "sensitive", "sparsity": "auto"}


def with_goal(step: type["Step"], raw: dict[str, Any], outputs: Mapping[str, Any]) -> dict[str, Any]:
    """A stop's options with the target's resolved limits per output as the goal of a searching option
    (`SEARCHING`), whether a recipe or the user set it."""
    if any(raw.get(k) == v for k, v in SEARCHING.items()) and "repair_goal" in step.Options.model_fields \
            and raw.get("repair_goal") is None:
        return {**raw, "repair_goal": {name: dict(limits) for name, limits in outputs.items()}}
    return raw


def tried(routes: Sequence["Route"]) -> str:
    """The sentence a blocked target ends with when repair recipes were among its routes; "" otherwise."""
    recipes = [s.repair for r in routes for s in r.stops if s.repair]
    if not recipes:
        return ""
    fmt = next(s.format for r in routes for s in r.stops if s.repair)
    return WHAT_TO_DO.format(tried=", ".join(dict.fromkeys(recipes)), fmt=fmt)


def describe(record: Any, latency_ms: float | None = None) -> list[str]:
    """A quantizing node's committed `repair` record in words (explain, report): what was kept, then the trade-off
    (`latency_ms`: the delivered artifact's p50 from `bench`, where measured), then every trial."""
    if not isinstance(record, dict):
        return []
    kept = record.get("kept_float")
    lines = [f"accuracy repair {record.get('recipe', '')}: "
             + (f"kept {len(kept)} layer(s) in float: {', '.join(kept)}" if kept else "nothing kept in float")]
    full = record.get("baseline", record.get("full_int8"))  # full_int8: records before the one search
    chosen = next((t for t in record.get("trials", []) if t.get("passed") and t.get("keep_float") == kept), None)
    if isinstance(full, dict) and chosen:
        latency = f"; latency {latency_ms:.3g} ms (bench, p50)" if latency_ms is not None else ""
        lines.append(f"trade-off: {len(kept or [])} layer(s) at higher precision for {_measured(chosen['metrics'])} "
                     f"(all {record.get('reduced', 'int8')}: {_measured(full.get('metrics'))}) on the search's data; "
                     f"{_kb(chosen.get('bytes'))} (all {record.get('reduced', 'int8')}: {_kb(full.get('bytes'))}){latency}")
    if isinstance(full, dict):
        lines.append(f"all {record.get('reduced', 'int8')} on the search's data: {_measured(full.get('metrics'))}, "
                     f"{_kb(full.get('bytes'))}")
    for trial in record.get("trials", []):
        lines.append(f"tried {len(trial['keep_float'])} in float: {'passed' if trial['passed'] else 'missed'}, "
                     f"{_measured(trial['metrics'])}, {_kb(trial['bytes'])}")
    if record.get("measured"):
        lines.append(f"sensitivity measured on {record['measured']} (docs/repair.md)")
    return lines


def trade_off(record: Any) -> str:
    """What a quantized route that was dropped measured, for its line in the summary and the report:
    " (36.1 KB; logits: top-1 agreement 0.09, cosine 0)"; "" when nothing was measured."""
    seen = record.get("observed") if isinstance(record, dict) else None
    if not isinstance(seen, dict) or not seen:
        return ""
    parts = [_kb(seen["bytes"])] if isinstance(seen.get("bytes"), (int, float)) else []
    measured = _measured({k: v for k, v in seen.items() if k != "bytes"})
    return f" ({'; '.join([*parts, measured] if measured else parts)})" if parts or measured else ""


def _kb(size: Any) -> str:
    return f"{size / 1024:.1f} KB" if isinstance(size, (int, float)) else "size unknown"


def _measured(metrics: Any) -> str:
    """{output: {metric: value}} as "logits: cosine 0, top-1 agreement 0.09375"."""
    if not isinstance(metrics, dict):
        return ""
    return "; ".join(f"{name}: " + ", ".join(f"{k.replace('top1_agreement', 'top-1 agreement').replace('_', ' ')} "
                                             f"{v:.4g}" for k, v in sorted(values.items()))
                     for name, values in sorted(metrics.items()) if isinstance(values, dict) and values)
