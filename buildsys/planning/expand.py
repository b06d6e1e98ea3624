"""The expansion of targets into a DAG of nodes: each target's candidate routes (pipeline.py), the first one not
excluded taken, its artifacts shared between targets, one reference per model, one check (and bench) per target.

Expansion is a pure function of the validated project, the selection, the route history, what the op
analysis knows and modelbuild's own code, so its result is cached under the cache directory: an unchanged
deploy.yaml is planned without even importing networkx (a third of `plan`'s start-up).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from buildsys.config.load import LoadedConfig
from buildsys.errors import ConfigError, Location, PlanError, did_you_mean
from buildsys.formats import get_format
from buildsys.planning.kinds import ArtifactKind, BenchKind, CheckKind, ReferenceKind
from buildsys.planning.node import Node
from buildsys.planning.pipeline import TargetContext, candidates, context_for
from buildsys.planning.qat import plan_problem
from buildsys.planning.repair import with_goal
from buildsys.planning.routes import loads_module
from buildsys.storage.hashing import digest_json

if TYPE_CHECKING:
    import networkx as nx

    from buildsys.formats.base import Step, StepOptions
    from buildsys.planning.coverage import Gaps
    from buildsys.planning.history import History
    from buildsys.planning.routes import Route
    from buildsys.records import ChosenRoute

# The steps of the nodes that are not formats (registered in buildsys.nodes).
REFERENCE_STEP, CHECK_STEP, BENCH_STEP = "reference", "check", "bench"


@dataclass(frozen=True)
class Unsettled:
    """A plan-time problem only the model's op analysis can settle: an int8 step lacks calibration data that a
    quantization-aware-trained model would not need (planning.qat). Raised as a ConfigError when the caller
    does not let the plan analyse the model."""

    model: str
    message: str
    where: Location
    field: str

    def error(self) -> ConfigError:
        return ConfigError(self.message, where=self.where, field=self.field)


@dataclass
class Dag:
    """Nodes in dependency order, their consumers, and each target's deliverable and route."""

    nodes: dict[str, Node]
    names: list[str]  # topological order, ties broken by name: stable output
    consumers: dict[str, list[str]]
    target_nodes: dict[str, str]  # target → its deliverable artifact node
    routes: dict[str, "Route"]  # target → the route this DAG takes
    #: target → every route it may take, in the order tried (pipeline.candidates); the DAG holds the first one
    #: not excluded (a route that failed under the same key, see plan.make_plan).
    candidates: dict[str, list["Route"]] = field(default_factory=dict)
    exhausted: list[str] = field(default_factory=list)  # targets whose every candidate route failed
    contexts: dict[str, TargetContext] = field(default_factory=dict)  # what the route pipeline read of each target
    unsettled: list[Unsettled] = field(default_factory=list)  # targets left out until their model is analysed

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

    def graph(self) -> "nx.DiGraph[str]":
        """The DAG as a networkx graph (built on demand)."""
        import networkx as nx

        g: nx.DiGraph[str] = nx.DiGraph()
        g.add_nodes_from(self.names)
        g.add_edges_from((d, n.name) for n in self.nodes.values() for d in n.deps)
        return g


def expand(cfg: LoadedConfig, selected: list[str] | None = None, cache: Path | None = None, *, bench: bool = False,
           history: "History | None" = None, gaps: "Gaps | None" = None, qat: dict[str, str] | None = None,
           excluded: dict[str, list["Route"]] | None = None, chosen: dict[str, "ChosenRoute"] | None = None) -> Dag:
    """Turn the project's targets (all, or `selected`) into the DAG of nodes that makes them.

    Each target takes its first candidate route (pipeline.candidates, from the route `history`, the op
    coverage `gaps` and the models' `qat` flows) not in `excluded[target]`, or the route `chosen` for it under
    its `prefer:` where that one is left (planning.prefer). Targets with latency budgets get a
    `bench:` node; `bench=True` gives every target one. With `cache` (a file path), a previous expansion of
    the same inputs is reused."""
    history, gaps, qat, excluded, chosen = history or {}, gaps or {}, qat or {}, excluded or {}, chosen or {}
    if cache is None:
        return _expand(cfg, selected, bench, history, gaps, qat, excluded, chosen)
    import pickle

    key = digest_json([cfg.project.model_dump(mode="json"), selected, bench, str(cfg.root), code_fingerprint(),
                       history, gaps, qat, {t: [r.words() for r in rs] for t, rs in sorted(excluded.items())},
                       {t: c["route"] + [c["prefer"]] for t, c in sorted(chosen.items())}])
    try:
        with open(cache, "rb") as f:
            stored_key, dag = pickle.load(f)
        if stored_key == key:
            return dag
    except (OSError, EOFError, pickle.UnpicklingError, AttributeError, ValueError, TypeError, ImportError):
        pass  # no cache, or one written by other code: expand afresh
    dag = _expand(cfg, selected, bench, history, gaps, qat, excluded, chosen)
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


@dataclass
class _Chains:
    """The artifact nodes of every target's route, shared by identity (the model plus the chain of (step,
    options) that leads to a node), before they are named."""

    identities: dict[str, Node] = field(default_factory=dict)  # identity digest → node
    by_base: dict[str, list[str]] = field(default_factory=dict)  # "model/format" → identities, in order
    primary: dict[str, set[str]] = field(default_factory=dict)  # "model/format" → identities on first candidates


def _expand(cfg: LoadedConfig, selected: list[str] | None, bench: bool, history: "History", gaps: "Gaps",
            qat: dict[str, str], excluded: dict[str, list["Route"]], chosen: dict[str, "ChosenRoute"]) -> Dag:
    from buildsys.nodes import verify

    project = cfg.project
    for t in selected or []:
        if t not in project.targets:
            raise PlanError(f"unknown target '{t}'", hint=did_you_mean(t, project.targets)
                            or f"targets in {cfg.path.name}: {', '.join(project.targets)}")
    # Every target is expanded, even when only some are selected, so that a node's name (which
    # depends on how many variants of its format the project has) never depends on the selection.
    chains = _Chains()
    routes: dict[str, "Route"] = {}
    candidate_routes: dict[str, list["Route"]] = {}
    contexts: dict[str, TargetContext] = {}
    exhausted: list[str] = []
    unsettled: list[Unsettled] = []
    checks: list[Node] = []
    for tname, target in project.targets.items():
        contexts[tname] = context_for(cfg, tname, history.get(tname, []), gaps.get(target.model, {}), qat.get(target.model),
                                      chosen.get(tname))
        candidate_routes[tname] = candidates(cfg, contexts[tname])
        left = [r for r in candidate_routes[tname] if r not in excluded.get(tname, [])]
        if not left:
            exhausted.append(tname)  # every route failed: the planner fails its check, saying why
        route = left[0] if left else candidate_routes[tname][-1]  # exhausted: the last one tried, already built
        if contexts[tname].chosen in left:  # chosen under `prefer:`; the first routes still name the nodes
            route = next(r for r in left if r == contexts[tname].chosen)
        routes[tname] = route
        precision = _precision(cfg, tname, route.formats[-1])
        try:
            acceptance = verify.resolve_acceptance(target.acceptance, precision, contexts[tname].model.outputs)
        except ConfigError as exc:
            raise ConfigError(exc.what.removeprefix("acceptance.outputs names "), hint=exc.hint,
                              where=cfg.where("targets", tname, "acceptance", "outputs"),
                              field=f"targets.{tname}.acceptance.outputs") from None
        for _, _, _, ident in _walk(cfg, contexts[tname], candidate_routes[tname][0], acceptance["outputs"]):
            chains.primary.setdefault(ident[1], set()).add(ident[0])
        artifact = _add_chain(cfg, contexts[tname], route, acceptance["outputs"], chains, unsettled)
        if artifact is None:
            continue  # its calibration problem waits for the model's analysis (Unsettled)
        chains.identities[artifact].targets.append(tname)
        checks += _judges(tname, contexts[tname], artifact, acceptance, precision, bench)
    return _assemble(cfg, selected, chains, checks, routes, candidate_routes, exhausted, contexts, unsettled)


def _walk(cfg: LoadedConfig, context: TargetContext, route: "Route",
          outputs: dict[str, Any]) -> list[tuple[str, type["Step"], "StepOptions", tuple[str, str]]]:
    """(source format of the hop, step, options, (identity, "model/format")) along a route. The identity is
    the model plus the chain of (step, options) that leads to a node, so equal chains share a node. A stop
    with a label takes what its label sets (pipeline: alternatives, repairs, rewrites, …)."""

    target = context.config
    identity: list[Any] = [target.model]
    hops = []
    for i in range(1, len(route.stops)):
        step, stop = route.step_at(i), route.stops[i]
        raw = context.options.get(stop.format, {})
        if isinstance(raw, dict):
            if loads_module(step):  # the target's rewrites and pruning apply where the module is loaded
                raw = {**({"rewrites": target.rewrites} if target.rewrites is not None else {}),
                       **({"structured_sparsity": target.structured_sparsity} if target.structured_sparsity else {}),
                       **raw}  # the format's own option wins
            # a searching option, a recipe's or the user's, aims at the target's tolerance
            raw = with_goal(step, {**raw, **stop.options(step)} if stop.label else raw, outputs)
        options = _options(step, raw, cfg, context.name, stop.format)
        identity.append([step.name, options.model_dump(mode="json")])
        hops.append((route.stops[i - 1].format, step, options, (digest_json(identity), f"{target.model}/{stop.format}")))
    return hops


def _add_chain(cfg: LoadedConfig, context: TargetContext, route: "Route", outputs: dict[str, Any], chains: _Chains,
               unsettled: list[Unsettled]) -> str | None:
    """Add the artifact nodes of a target's route (those it shares with others exist already); the identity of
    its last one, or None when a step's plan-time problem waits for the model's op analysis."""
    from buildsys.formats import formats

    model, target = context.model, context.config
    previous = ""
    for source, step, options, (ident, base) in _walk(cfg, context, route, outputs):
        fmt = base.partition("/")[2]
        problem = step.check_config(model, options, cfg.root)
        unknown = False
        if problem and model.source.format == "pytorch":  # a QAT model's int8 steps need no calibration data
            problem, unknown = plan_problem(step, model, options, cfg.root, problem, context.qat)
        if problem:
            where = cfg.where("targets", context.name, "options", fmt) if fmt in context.options \
                else cfg.where("targets", context.name, "precision")
            if unknown:  # `build` and `plan --ops` analyse the model's graph and plan again
                unsettled.append(Unsettled(target.model, problem, where, f"targets.{context.name} ({fmt})"))
                return None
            raise ConfigError(problem, where=where, field=f"targets.{context.name} ({fmt})")
        if ident not in chains.identities:
            is_source = formats()[source].source
            data = tuple(step.data_used(options)) + (("example",) if is_source else ())
            if model.data.calibration is None:  # only a QAT model's waiver (above) gets here without it
                data = tuple(d for d in data if d != "calibration")
            chains.identities[ident] = Node(
                name="", kind=ArtifactKind.name, model=target.model, format=fmt, step=step.name,
                options=options.model_dump(mode="json"), deps=[previous] if previous else [],
                source_format=source if is_source else "", data_sets=tuple(dict.fromkeys(data)),
                precision=get_format(fmt).precision)
            chains.by_base.setdefault(base, []).append(ident)
        previous = ident
    return previous


def _judges(tname: str, context: TargetContext, artifact: str, acceptance: dict[str, Any], precision: str,
            bench: bool) -> list[Node]:
    """A target's check, and its bench when it has latency budgets (or `bench`)."""
    from buildsys.nodes.bench import BenchOptions

    target = context.config
    reference = ReferenceKind.node_name(target.model)
    out = [Node(name=CheckKind.node_name(tname), kind=CheckKind.name, model=target.model, format=target.goal,
                step=CHECK_STEP, options=acceptance, deps=[artifact, reference], target=tname, precision=precision)]
    acc = target.acceptance
    if bench or acc.p50_ms is not None or acc.p95_ms is not None:
        options = BenchOptions(batch_size=acc.bench_batch, p50_ms=acc.p50_ms, p95_ms=acc.p95_ms, on_fail=acc.on_fail)
        out.append(Node(name=BenchKind.node_name(tname), kind=BenchKind.name, model=target.model, format=target.goal,
                        step=BENCH_STEP, options=options.model_dump(mode="json"), deps=[artifact, reference],
                        target=tname, precision=precision))
    return out


def _assemble(cfg: LoadedConfig, selected: list[str] | None, chains: _Chains, checks: list[Node],
              routes: dict[str, "Route"], candidate_routes: dict[str, list["Route"]], exhausted: list[str],
              contexts: dict[str, TargetContext], unsettled: list[Unsettled]) -> Dag:
    """Name the nodes, add the references, check the graph and cut it to the selected targets."""
    import networkx as nx

    # Name artifact nodes: "model/format", with an identity digest when the targets' first routes
    # hold several variants of it, or when a node lies on a fallback route only: its name then
    # differs from the first route's node of that format, so the lock never mixes the two. Names
    # depend on the first routes alone, never on the routes taken: a target that falls back must not
    # rename the nodes other targets share (their keys name their inputs, so a rename would make
    # them stale, and a failed route's key could no longer be matched to skip it).
    rename = {ident: base if chains.primary.get(base) == {ident} else f"{base}~{ident[:6]}"
              for base, idents in chains.by_base.items() for ident in idents}
    nodes: dict[str, Node] = {}
    for ident, node in chains.identities.items():
        node.name = rename[ident]
        node.deps = [rename[d] for d in node.deps]
        nodes[node.name] = node
    for mname in dict.fromkeys(c.model for c in checks):
        name = ReferenceKind.node_name(mname)
        nodes[name] = Node(name=name, kind=ReferenceKind.name, model=mname, format=REFERENCE_STEP, step=REFERENCE_STEP,
                           options={}, source_format=cfg.project.models[mname].source.format, data_sets=("evaluation",))
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
        keep = set(selected)
        routes = {t: r for t, r in routes.items() if t in keep}
        candidate_routes = {t: r for t, r in candidate_routes.items() if t in keep}
        exhausted = [t for t in exhausted if t in keep]
        unsettled = [u for u in unsettled if any(cfg.project.targets[t].model == u.model for t in keep)]
    target_nodes = {c.target: c.deps[0] for c in checks if c.kind == CheckKind.name}
    names = list(nx.lexicographical_topological_sort(graph))
    consumers = {n: sorted(graph.successors(n)) for n in names}
    return Dag(nodes, names, consumers, target_nodes, routes, candidate_routes, exhausted, contexts, unsettled)


def _precision(cfg: LoadedConfig, tname: str, goal: str) -> str:
    """The precision a target's artifact is judged at: its goal format's. `format: onnx-int8` names
    an int8 format, so its check uses int8 tolerances; an explicit `precision: fp32` beside it is a
    contradiction, not a request for fp32 tolerances on an int8 model."""
    target = cfg.project.targets[tname]
    fmt = get_format(goal)
    if fmt.precision != target.precision and "precision" in target.model_fields_set:
        raise ConfigError(f"format '{goal}' is {fmt.precision}, but the target says precision: {target.precision}",
                          where=cfg.where("targets", tname, "precision"), field=f"targets.{tname}.precision",
                          hint=f"write format: {fmt.family} with precision: {fmt.precision}, or drop the precision")
    return fmt.precision


def _options(step: type["Step"], raw: Any, cfg: LoadedConfig, target: str, fmt: str) -> "StepOptions":
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
