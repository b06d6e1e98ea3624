"""The route pipeline: each target's candidate routes, in the order they are tried.

One function per stage, each over typed candidates (`planning.routes.Route`):

    generate → answer → order → repair        (then `plan.make_plan` excludes what failed under its key)

- **generate**: the paths of the format graph from the model's source to the target's format (`via:` pins
  one, `routes:` lists them), then the same paths with a step's `alternatives` (at most `MAX_ROUTES`), less
  those that cannot honour an option the target sets.
- **answer**: after each route whose failure is answered (deploy.lock's record of it names the rewrites its
  refusal points at: answers.py), the same route with that answer.
- **order**: routes whose converters lack an op of the model (op coverage, `coverage.order_routes`) after
  those that can work, or replaced by the same route with the
  rewrites that remove it; a QAT model's routes that keep its learned quantization first (qat.py).
- **repair**: after each route whose quantized artifact missed its check, its repair recipes (repair.py).

Everything a stage reads of a target is in its `TargetContext`, gathered once (`context_for`), so the stages are
pure functions: the same context give the same candidates, which is what lets `plan`, `build`, `build
--dry-run`, `bundle` and the Python API agree, and the expansion be cached.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from buildsys.errors import ConfigError, did_you_mean
from buildsys.formats import formats
from buildsys.planning import routes as graph
from buildsys.planning.answers import with_rewrites
from buildsys.planning.ordering import order_routes
from buildsys.planning.qat import learned_first
from buildsys.planning.repair import add_repair_routes, written_options
from buildsys.planning.routes import MAX_ROUTES, Route

if TYPE_CHECKING:
    from buildsys.config.load import LoadedConfig
    from buildsys.config.schema import Model, Target
    from buildsys.records import ChosenRoute, DroppedRoute


@dataclass(frozen=True)
class TargetContext:
    """What the route pipeline reads of one target."""

    name: str
    config: "Target"
    model: "Model"
    #: format → the options the target sets for it (a goal's options given under its family's name moved to it)
    options: dict[str, Any]
    #: format → the option names the user wrote (a built-in preset's choices are not among them: repair.py)
    written: dict[str, set[str]]
    history: list["DroppedRoute"] = field(default_factory=list)  # its routes that failed (history.py)
    gaps: dict[str, list[str]] = field(default_factory=dict)  # "table:reads" → the model's ops it lacks
    qat: str | None = None  # the model's QAT flow ('' none; None: not analysed)
    #: the route a comparison under the target's `prefer:` chose (deploy.lock's `routes.<target>.chosen`): taken
    #: before the others while it has not failed (planning.prefer)
    chosen: Route | None = None


def context_for(cfg: "LoadedConfig", name: str, history: list["DroppedRoute"], gaps: dict[str, list[str]],
              qat: str | None, chosen: "ChosenRoute | None" = None) -> TargetContext:
    """A target's context, after the checks that concern the target as a whole (file:line errors). A `chosen`
    route counts while the target prefers what it was chosen for."""

    project = cfg.project
    target = project.targets[name]
    if target.model not in project.models:
        raise ConfigError(f"unknown model '{target.model}'", where=cfg.where("targets", name, "model"),
                          field=f"targets.{name}.model", hint=did_you_mean(target.model, project.models)
                          or f"models: {', '.join(project.models)}")
    model = project.models[target.model]
    goal = formats().get(target.goal)
    if goal is not None and goal.task != model.task:
        made_for = [n for n, f in sorted(formats().items()) if f.task == model.task and f.runtime and not f.source]
        raise ConfigError(f"format '{target.goal}' is for task: {goal.task} models, and model '{target.model}' "
                          f"has task: {model.task}", where=cfg.where("targets", name, "format"), field=f"targets.{name}.format",
                          hint=f"formats for {model.task}: {', '.join(made_for)}")
    # `options: {triton: ...}` on a `format: triton, precision: int8` target means its goal, triton-int8
    options = dict(target.options)
    passing = {f for r in _paths(cfg, name, target, model) for f in r.formats}
    if target.goal != target.format and target.format in options and target.format not in passing:
        if target.goal in options:
            raise ConfigError(f"options given for both '{target.format}' and '{target.goal}'",
                              where=cfg.where("targets", name, "options", target.format),
                              field=f"targets.{name}.options", hint=f"keep one: the goal node is {target.goal}")
        options[target.goal] = options.pop(target.format)
    preferred = Route.parse(chosen["route"], "prefer") if chosen and chosen["prefer"] == target.prefer else None
    return TargetContext(name, target, model, options, written_options(cfg, name, options), history, gaps, qat,
                         preferred)


def _paths(cfg: "LoadedConfig", name: str, target: "Target", model: "Model") -> list[Route]:
    return graph.paths(model.source.format, target.format, target.precision, target.via, target.routes, name, cfg)


def candidates(cfg: "LoadedConfig", context: TargetContext) -> list[Route]:
    """The target's routes, in the order they are tried: generate → answer → order → repair."""
    routes = generate(cfg, context)
    check_options_apply(cfg, context, routes)
    routes = answered(routes, context)
    routes = ordered(routes, context)
    return repaired(routes, context, cfg)


def generate(cfg: "LoadedConfig", context: TargetContext) -> list[Route]:
    """The format graph's paths with default options, then with each step's alternatives, less the routes that
    cannot honour an option the target sets (a fallback must never deliver something other than what was asked:
    another opset, another exporter). With none left, one stays so that expansion names the option it rejects:
    the first whose steps know every option the target names (a value out of range is reported as such, not as
    an option another converter lacks), else the first."""
    paths = _paths(cfg, context.name, context.config, context.model)
    if context.config.via:  # `via:` pins one route, with its steps' default options
        return paths
    found = [*paths, *graph.alternatives(paths, context.options)][:MAX_ROUTES]
    return [r for r in found if graph.honours(r, context.options)] or \
        [next((r for r in found if graph.knows(r, context.options)), found[0])]


def check_options_apply(cfg: "LoadedConfig", context: TargetContext, routes: list[Route]) -> None:
    """Options apply where a route passes their format: options for a format no candidate makes are an error,
    and so are `rewrites:` / `structured_sparsity:` on a target whose routes load no PyTorch module."""
    name, target = context.name, context.config
    for fmt in context.options:
        if not any(fmt in r.formats[1:] for r in routes):
            raise ConfigError(f"options given for '{fmt}', which is not on this target's route",
                              where=cfg.where("targets", name, "options", fmt), field=f"targets.{name}.options",
                              hint=f"route: {routes[0]}")
    if target.rewrites and routes[0].loading_stop() is None:
        raise ConfigError("rewrites apply where the PyTorch module is loaded, and this target's model is not "
                          f"a PyTorch factory (source: {context.model.source.format})",
                          where=cfg.where("targets", name, "rewrites"), field=f"targets.{name}.rewrites")
    if target.structured_sparsity and routes[0].loading_stop() is None:
        raise ConfigError("structured_sparsity prunes the PyTorch module where a route loads it, and no step of "
                          f"this target's route loads one (source: {context.model.source.format}, goal: {target.goal})",
                          where=cfg.where("targets", name, "structured_sparsity"),
                          field=f"targets.{name}.structured_sparsity")


def answered(routes: list[Route], context: TargetContext) -> list[Route]:
    """Right after each route the history says was refused with an answer, the routes that answer it: the route
    with the rewrites its refusal points at (only for a target that sets no `rewrites:`), then the routes that
    lower what it refused (decompositions, a static export, converter switches, another route; moved up when
    already further down), those first where the rewrites are only a guess (`answers_first`). An answered route
    refused in turn brings its own answers right after it."""

    rewrites_allowed = context.config.rewrites is None
    answers: list[tuple[Route, list[Route]]] = []
    for record in context.history:
        found: list[Route] = []
        if rewrites_allowed and record.get("rewrites"):
            rewritten = with_rewrites(Route.parse(record["route"]), record["rewrites"], context.options)
            found += [rewritten] if rewritten is not None else []
        lowered = [Route.parse(words, "answer") for words in record.get("answers", [])]
        found = [*lowered, *found] if record.get("answers_first") else [*found, *lowered]
        if found:
            answers.append((Route.parse(record["route"]), found))
    out = list(routes)
    i = 0
    while i < len(out):
        at = i + 1
        for route, found in answers:
            if route != out[i]:
                continue
            for answer in found:
                if answer in out[:at]:
                    continue
                if answer in out:
                    out.remove(answer)
                out.insert(at, answer)
                at += 1
        i += 1
    return out


def ordered(routes: list[Route], context: TargetContext) -> list[Route]:
    """Routes whose converters lack one of the model's ops after those that can work (or, where rewrites remove
    what they lack, replaced by the route with them); a QAT model's routes that keep its learned scales first."""

    if context.gaps:
        routes = order_routes(routes, context.gaps, context.options, auto_rewrites=context.config.rewrites is None)
    if context.qat:
        routes = learned_first(routes, context.qat)
    return routes


def repaired(routes: list[Route], context: TargetContext, cfg: "LoadedConfig") -> list[Route]:
    """Right after each route whose check missed a tolerance (the history's records marked `repair`), that route
    with each repair recipe its quantizing step has and the target allows."""

    missed = [Route.parse(r["route"]) for r in context.history if r.get("repair")]
    return add_repair_routes(routes, missed, context.options, context.config.repair, context.model, cfg.root,
                             context.written)
