"""The expansion of targets into a DAG of nodes: artifacts shared between targets (along each
target's route, see routes.py), one reference per model, one check (and bench) per target.

Expansion is a pure function of the validated project, the selected targets and modelbuild's own
code, so its result is cached under the cache directory: an unchanged deploy.yaml is planned without
even importing networkx (a third of `plan`'s start-up).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from buildsys.config.load import LoadedConfig
from buildsys.errors import ConfigError, PlanError, did_you_mean
from buildsys.formats import formats, get_format, steps
from buildsys.storage.hashing import digest_json
from buildsys.planning.coverage import order_routes
from buildsys.planning.kinds import ArtifactKind, BenchKind, CheckKind, ReferenceKind
from buildsys.formats.torch.qat import QatUnknown, learned_first, plan_problem
from buildsys.planning.repair import add_repair_routes, with_goal, written_options
from buildsys.planning.answers import add_rewrite_routes, loading_stop, loads_module
from buildsys.planning.routes import candidate_routes, format_graph, hop, route_formats, stop_options

if TYPE_CHECKING:
    import networkx as nx

    from buildsys.planning.coverage import Gaps
    from buildsys.planning.answers import Refusals

# The steps of the nodes that are not formats (registered in buildsys.nodes).
REFERENCE_STEP, CHECK_STEP, BENCH_STEP = "reference", "check", "bench"

@dataclass
class Node:
    """One artifact, reference or check in the build DAG.

    `name` is stable and human ("digits/onnx", "digits/reference", "verify:server"); it is the
    node's key in deploy.lock. `deps` are names of nodes whose outputs this one consumes, the
    first being the main input.
    """

    name: str
    kind: str  # a NodeKind's name (buildsys.planning.kinds): "artifact" | "reference" | "check" | "bench"
    model: str
    format: str
    step: str
    options: dict[str, Any]
    deps: list[str] = field(default_factory=list)
    source_format: str = ""  # the model's source format when the first dep is the source itself
    data_sets: tuple[str, ...] = ()
    targets: list[str] = field(default_factory=list)  # targets whose deliverable this node is
    target: str = ""  # for checks: the target being verified
    precision: str = "fp32"


@dataclass
class Dag:
    """Nodes in dependency order, their consumers, and each target's deliverable and route."""

    nodes: dict[str, Node]
    names: list[str]  # topological order, ties broken by name: stable output
    consumers: dict[str, list[str]]
    target_nodes: dict[str, str]  # target → its deliverable artifact node
    routes: dict[str, list[str]]  # target → formats from source to goal: the route this DAG takes
    #: target → every route it may take, in the order tried (routes.candidate_routes); the DAG holds
    #: the first one not excluded (a route that failed under the same key, see plan.make_plan).
    candidates: dict[str, list[list[str]]] = field(default_factory=dict)
    exhausted: list[str] = field(default_factory=list)  # targets whose every candidate route failed

    def order(self) -> list[Node]:
        return [self.nodes[n] for n in self.names]

    def rewrites(self, name: str) -> list[str]:
        """The op rewrites a node's artifact carries: those its chain of artifacts applied (docs/rewrites.md)."""
        out: list[str] = []
        current: str | None = name
        while current in self.nodes:
            node = self.nodes[current]
            out = [n for n in node.options.get("rewrites") or [] if n not in out] + out
            current = node.deps[0] if node.deps else None  # a check's first dep is its artifact
        return out

    def structured_sparsity(self, name: str) -> float:
        """The structured pruning ratio a node's artifact carries: that of the step of its chain that loaded the
        module (formats.torch.pruned), 0 when none pruned it."""
        current: str | None = name
        while current in self.nodes:
            node = self.nodes[current]
            if node.options.get("structured_sparsity"):
                return float(node.options["structured_sparsity"])
            current = node.deps[0] if node.deps else None
        return 0.0

    def graph(self) -> "nx.DiGraph":
        """The DAG as a networkx graph (built on demand)."""
        import networkx as nx

        g: nx.DiGraph[str] = nx.DiGraph()
        g.add_nodes_from(self.names)
        g.add_edges_from((d, n.name) for n in self.nodes.values() for d in n.deps)
        return g


def expand(cfg: LoadedConfig, selected: list[str] | None = None, cache: Path | None = None,
           bench: bool = False, excluded: dict[str, list[list[str]]] | None = None,
           refusals: "Refusals | None" = None, gaps: "Gaps | None" = None,
           repairs: dict[str, list[list[str]]] | None = None, qat: dict[str, str] | None = None) -> Dag:
    """Turn the project's targets (all, or `selected`) into the DAG of nodes that makes them.

    Targets with latency budgets get a `bench:` node; `bench=True` gives every target one. Each
    target takes its first candidate route not in `excluded[target]`. With `cache` (a file path), a
    previous expansion of the same inputs is reused. `refusals` (target → failed routes and the
    rewrites their refusals point at, rewrite_routes.refusals) add the rewrite routes; `gaps` (model → the
    ops each converter table lacks, coverage.Coverage.gaps) order them (coverage.order_routes); `repairs`
    (target → failed routes whose check miss opened an accuracy repair, repair.repairable) add the repair routes.
    `qat` (model → the QAT flow the op analysis found, '' for none; a model not analysed is absent) puts a QAT
    model's routes that keep its learned quantization first and waives their calibration data (buildsys.formats.torch.qat).
    """
    excluded, refusals, gaps, repairs, qat = excluded or {}, refusals or {}, gaps or {}, repairs or {}, qat or {}
    if cache is None:
        return _expand(cfg, selected, bench, excluded, refusals, gaps, repairs, qat)
    import pickle

    key = digest_json([cfg.project.model_dump(mode="json"), selected, bench, str(cfg.root), code_fingerprint(),
                       excluded, refusals, gaps, repairs, qat])
    try:
        with open(cache, "rb") as f:
            stored_key, dag = pickle.load(f)
        if stored_key == key:
            return dag
    except (OSError, EOFError, pickle.UnpicklingError, AttributeError, ValueError, TypeError):
        pass  # no cache, or one written by other code: expand afresh
    dag = _expand(cfg, selected, bench, excluded, refusals, gaps, repairs, qat)
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_suffix(".tmp")
    with open(tmp, "wb") as f:
        pickle.dump((key, dag), f, protocol=pickle.HIGHEST_PROTOCOL)
    tmp.replace(cache)
    return dag


@lru_cache(maxsize=1)
def code_fingerprint() -> str:
    """Identity of modelbuild's own code and plugins: any edit to it invalidates cached expansions."""
    import os

    import buildsys

    package = Path(buildsys.__file__).parent
    stats = [[str(p.relative_to(package)), st.st_size, st.st_mtime_ns]
             for p in sorted(package.rglob("*.py")) for st in [p.stat()]]
    return digest_json([buildsys.__version__, os.environ.get("MODELBUILD_PLUGINS", ""), stats])


def _expand(cfg: LoadedConfig, selected: list[str] | None, bench: bool,
            excluded: dict[str, list[list[str]]], refusals: "Refusals", gaps: "Gaps",
            repairs: dict[str, list[list[str]]], qat: dict[str, str]) -> Dag:
    import networkx as nx

    from buildsys.nodes import verify
    from buildsys.nodes.bench import BenchOptions

    project = cfg.project
    for t in selected or []:
        if t not in project.targets:
            raise PlanError(f"unknown target '{t}'", hint=did_you_mean(t, project.targets)
                            or f"targets in {cfg.path.name}: {', '.join(project.targets)}")
    # Every target is expanded, even when only some are selected, so that a node's name (which
    # depends on how many variants of its format the project has) never depends on the selection.
    names = list(project.targets)
    fg = format_graph()
    identities: dict[str, Node] = {}  # identity digest → node
    chains: dict[str, list[str]] = {}
    routes: dict[str, list[str]] = {}
    candidates: dict[str, list[list[str]]] = {}
    exhausted: list[str] = []
    checks: list[Node] = []
    primary: dict[str, set[str]] = {}  # "model/format" → identities on targets' first candidate routes
    for tname in names:
        target = project.targets[tname]
        if target.model not in project.models:
            raise ConfigError(f"unknown model '{target.model}'", where=cfg.where("targets", tname, "model"),
                              field=f"targets.{tname}.model", hint=did_you_mean(target.model, project.models)
                              or f"models: {', '.join(project.models)}")
        model = project.models[target.model]
        goal = formats().get(target.goal)
        if goal is not None and goal.task != model.task:
            made_for = [n for n, f in sorted(formats().items()) if f.task == model.task and f.runtime and not f.source]
            raise ConfigError(f"format '{target.goal}' is for task: {goal.task} models, and model '{target.model}' "
                              f"has task: {model.task}", where=cfg.where("targets", tname, "format"), field=f"targets.{tname}.format",
                              hint=f"formats for {model.task}: {', '.join(made_for)}")
        passing = {f for r in candidate_routes(model.source.format, target.format, target.precision, target.via,
                                               target.routes, tname, cfg) for f in route_formats(r)}
        # `options: {triton: ...}` on a `format: triton, precision: int8` target means its goal, triton-int8
        opts_by_format = dict(target.options)
        if target.goal != target.format and target.format in opts_by_format \
                and target.format not in passing:
            if target.goal in opts_by_format:
                raise ConfigError(f"options given for both '{target.format}' and '{target.goal}'",
                                  where=cfg.where("targets", tname, "options", target.format),
                                  field=f"targets.{tname}.options", hint=f"keep one: the goal node is {target.goal}")
            opts_by_format[target.goal] = opts_by_format.pop(target.format)
        candidates[tname] = candidate_routes(model.source.format, target.format, target.precision, target.via,
                                             target.routes, tname, cfg, opts_by_format)
        if target.rewrites is None:  # automatic: each refused route is followed by the route with its rewrites
            candidates[tname] = add_rewrite_routes(candidates[tname], refusals.get(tname, []), opts_by_format)
        elif target.rewrites and loading_stop(candidates[tname][0]) is None:
            raise ConfigError("rewrites apply where the PyTorch module is loaded, and this target's model is not "
                              f"a PyTorch factory (source: {model.source.format})",
                              where=cfg.where("targets", tname, "rewrites"), field=f"targets.{tname}.rewrites")
        if target.structured_sparsity and loading_stop(candidates[tname][0]) is None:
            raise ConfigError("structured_sparsity prunes the PyTorch module where a route loads it, and no step of "
                              f"this target's route loads one (source: {model.source.format}, goal: {target.goal})",
                              where=cfg.where("targets", tname, "structured_sparsity"),
                              field=f"targets.{tname}.structured_sparsity")
        if gaps.get(target.model):  # a route whose converter lacks an op goes after those that can work
            candidates[tname] = order_routes(candidates[tname], target.model, gaps, opts_by_format,
                                             auto_rewrites=target.rewrites is None)
        if qat.get(target.model):  # a QAT model: routes that keep its learned scales first (buildsys.formats.torch.qat)
            candidates[tname] = learned_first(candidates[tname], qat[target.model], _route_steps)
        candidates[tname] = add_repair_routes(candidates[tname], repairs.get(tname, []), opts_by_format, target.repair,
                                              model, cfg.root, written_options(cfg, tname, opts_by_format))
        left = [r for r in candidates[tname] if r not in excluded.get(tname, [])]
        if not left:
            exhausted.append(tname)  # every route failed: the planner blocks its check, saying why
        route = left[0] if left else candidates[tname][-1]  # exhausted: the last one tried, already built
        precision = _precision(target, hop(route[-1])[0], cfg, tname)
        routes[tname] = route
        try:
            acceptance = verify.resolve_acceptance(target.acceptance, precision, model.outputs)
        except ConfigError as exc:
            raise ConfigError(exc.what.removeprefix("acceptance.outputs names "), hint=exc.hint,
                              where=cfg.where("targets", tname, "acceptance", "outputs"),
                              field=f"targets.{tname}.acceptance.outputs") from None
        for fmt in opts_by_format:  # options apply where the route taken passes their format
            if not any(fmt in route_formats(r)[1:] for r in candidates[tname]):
                raise ConfigError(f"options given for '{fmt}', which is not on this target's route",
                                  where=cfg.where("targets", tname, "options", fmt), field=f"targets.{tname}.options",
                                  hint=f"route: {' → '.join(route)}")

        def walk(path: list[str]) -> list[tuple[str, str, Any, Any, str]]:
            """(from, to, step, options, identity) along a route, as formats; the identity is the
            model plus the chain of (step, options) that leads to a node, so equal chains share a
            node. A stop with an alternative label takes that alternative's options."""
            identity: list[Any] = [target.model]
            hops = []
            for stop_a, stop_b in zip(path, path[1:]):
                (a, _), (b, label) = hop(stop_a), hop(stop_b)
                step = steps()[fg.edges[a, b]["step"]]
                raw = opts_by_format.get(b, {})
                if target.rewrites is not None and loads_module(step) and isinstance(raw, dict):
                    raw = {"rewrites": target.rewrites, **raw}  # the format's own option wins
                if target.structured_sparsity and loads_module(step) and isinstance(raw, dict):
                    raw = {"structured_sparsity": target.structured_sparsity, **raw}  # the format's own wins
                if isinstance(raw, dict):  # a searching option, a recipe's or the user's, aims at the target's tolerance
                    raw = with_goal(step, {**raw, **stop_options(step, label)} if label else raw, acceptance["outputs"])
                options = _options(step, raw, cfg, tname, b)
                identity.append([step.name, options.model_dump(mode="json")])
                hops.append((a, b, step, options, digest_json(identity)))
            return hops

        for _, b, _, _, ident in walk(candidates[tname][0]):
            primary.setdefault(f"{target.model}/{b}", set()).add(ident)
        previous = ""
        for a, b, step, options, ident in walk(route):
            problem = step.check_config(model, options, cfg.root)
            unknown = False
            if problem and model.source.format == "pytorch":  # a QAT model's int8 steps need no calibration data
                problem, unknown = plan_problem(step, model, options, cfg.root, problem, qat.get(target.model))
            if problem:
                where = cfg.where("targets", tname, "options", b) if b in opts_by_format \
                    else cfg.where("targets", tname, "precision")
                if unknown:  # `build` and `plan --ops` analyse the model's graph and plan again
                    raise QatUnknown(problem, model=target.model, where=where, field=f"targets.{tname} ({b})")
                raise ConfigError(problem, where=where, field=f"targets.{tname} ({b})")
            opts = options.model_dump(mode="json")
            if ident not in identities:
                data = tuple(step.data_used(options)) + (("example",) if fg.nodes[a]["source"] else ())
                if model.data.calibration is None:  # only a QAT model's waiver (above) gets here without it
                    data = tuple(d for d in data if d != "calibration")
                identities[ident] = Node(
                    name="", kind=ArtifactKind.name, model=target.model, format=b, step=step.name, options=opts,
                    deps=[previous] if previous else [], source_format=a if fg.nodes[a]["source"] else "",
                    data_sets=tuple(dict.fromkeys(data)), precision=get_format(b).precision)
                chains.setdefault(f"{target.model}/{b}", []).append(ident)
            previous = ident
        identities[previous].targets.append(tname)
        reference = ReferenceKind.node_name(target.model)
        checks.append(Node(name=CheckKind.node_name(tname), kind=CheckKind.name, model=target.model, format=target.goal,
                           step=CHECK_STEP, options=acceptance, deps=[previous, reference], target=tname,
                           precision=precision))
        acc = target.acceptance
        if bench or acc.p50_ms is not None or acc.p95_ms is not None:
            options = BenchOptions(batch_size=acc.bench_batch, p50_ms=acc.p50_ms, p95_ms=acc.p95_ms, on_fail=acc.on_fail)
            checks.append(Node(name=BenchKind.node_name(tname), kind=BenchKind.name, model=target.model, format=target.goal,
                               step=BENCH_STEP, options=options.model_dump(mode="json"), deps=[previous, reference],
                               target=tname, precision=precision))
    # Name artifact nodes: "model/format", with an identity digest when the targets' first routes
    # hold several variants of it, or when a node lies on a fallback route only: its name then
    # differs from the first route's node of that format, so the lock never mixes the two. Names
    # depend on the first routes alone, never on the routes taken: a target that falls back must not
    # rename the nodes other targets share (their keys name their inputs, so a rename would make
    # them stale, and a failed route's key could no longer be matched to skip it).
    rename = {}
    for base, idents in chains.items():
        for ident in idents:
            canonical = primary.get(base) == {ident}
            rename[ident] = base if canonical else f"{base}~{ident[:6]}"
    nodes: dict[str, Node] = {}
    for ident, node in identities.items():
        node.name = rename[ident]
        node.deps = [rename[d] for d in node.deps]
        nodes[node.name] = node
    for mname in dict.fromkeys(c.model for c in checks):
        source = project.models[mname].source.format
        name = ReferenceKind.node_name(mname)
        nodes[name] = Node(name=name, kind=ReferenceKind.name, model=mname, format=REFERENCE_STEP, step=REFERENCE_STEP,
                           options={}, source_format=source, data_sets=("evaluation",))
    for check in checks:
        check.deps[0] = rename[check.deps[0]]
        nodes[check.name] = check
    graph: nx.DiGraph[str] = nx.DiGraph()
    for node in nodes.values():
        graph.add_node(node.name)
        graph.add_edges_from((d, node.name) for d in node.deps)
    if not nx.is_directed_acyclic_graph(graph):  # defensive: routes are checked, but say it plainly
        cycle = " → ".join(a for a, _ in nx.find_cycle(graph))
        raise PlanError(f"the build graph has a cycle: {cycle}")
    if selected:
        wanted = {c.name for c in checks if c.target in selected}
        graph = graph.subgraph(set().union(*(nx.ancestors(graph, n) | {n} for n in wanted))).copy()
        nodes = {n: nodes[n] for n in graph.nodes}
        checks = [c for c in checks if c.target in selected]
        routes = {t: routes[t] for t in selected}
        candidates = {t: candidates[t] for t in selected}
        exhausted = [t for t in exhausted if t in selected]
    target_nodes = {c.target: c.deps[0] for c in checks if c.kind == CheckKind.name}
    names = list(nx.lexicographical_topological_sort(graph))
    consumers = {n: sorted(graph.successors(n)) for n in names}
    return Dag(nodes, names, consumers, target_nodes, routes, candidates, exhausted)


def _precision(target: Any, goal: str, cfg: LoadedConfig, tname: str) -> str:
    """The precision a target's artifact is judged at: its goal format's. `format: onnx-int8` names
    an int8 format, so its check uses int8 tolerances; an explicit `precision: fp32` beside it is a
    contradiction, not a request for fp32 tolerances on an int8 model."""
    fmt = get_format(goal)
    if fmt.precision != target.precision and "precision" in target.model_fields_set:
        raise ConfigError(f"format '{goal}' is {fmt.precision}, but the target says precision: {target.precision}",
                          where=cfg.where("targets", tname, "precision"), field=f"targets.{tname}.precision",
                          hint=f"write format: {fmt.family} with precision: {fmt.precision}, or drop the precision")
    return fmt.precision


def _options(step: Any, raw: dict[str, Any], cfg: LoadedConfig, target: str, fmt: str) -> Any:
    """Validate a target's options for one step, with file:line errors."""
    if not isinstance(raw, dict):
        raise ConfigError(f"options for '{fmt}' must be a mapping", where=cfg.where("targets", target, "options", fmt),
                          field=f"targets.{target}.options.{fmt}")
    try:
        return step.Options.model_validate(raw)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = ("targets", target, "options", fmt, *err["loc"])
        field_name = ".".join(map(str, loc))
        if err["type"] == "extra_forbidden":
            allowed = list(step.Options.model_fields)
            raise ConfigError(f"unknown option '{err['loc'][-1]}' for step {step.name}", where=cfg.where(*loc),
                              field=f"targets.{target}.options.{fmt}", hint=did_you_mean(str(err["loc"][-1]), allowed)
                              or f"options: {', '.join(allowed) or 'none'}") from None
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "literal_error":
            import re

            choices = re.findall(r"'([^']*)'", err.get("ctx", {}).get("expected", ""))
            hint = did_you_mean(str(err["input"]), choices)
            raise ConfigError(f"{err['input']!r} is not one of {', '.join(choices)}", where=cfg.where(*loc),
                              field=field_name, hint=hint) from None
        raise ConfigError(f"{msg} (got {err.get('input')!r})", where=cfg.where(*loc), field=field_name) from None


def _route_steps(route: list[str]) -> list[Any]:
    """The step classes along a route (its stops as formats)."""
    fg = format_graph()
    stops = [hop(s)[0] for s in route]
    return [steps()[fg.edges[a, b]["step"]] for a, b in zip(stops, stops[1:])]
