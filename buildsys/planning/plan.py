"""Planning: key every node, compare with deploy.lock and the store, and decide what must happen.

The plan is pure: it reads the config, the lock, the store and file stats, and writes nothing but
the stat cache. Every stale node carries its reasons as data.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from buildsys import __version__

from buildsys.storage import keys
from buildsys.config.load import LoadedConfig
from buildsys.planning.expand import Dag, Node, expand
from buildsys.config.data import GENERATION, TOKENIZER
from buildsys.config.inputs import data_files, factory_distributions, generation_files, source_files
from buildsys.formats.base import delivered
from buildsys.storage.hashing import StatCache, digest_json
from buildsys.planning.kinds import ArtifactKind, CheckKind, kind_of
from buildsys.storage.lock import Lock
from buildsys.status import Action, State
from buildsys.formats import get_step
from buildsys.storage.store import Store

if TYPE_CHECKING:
    from buildsys.planning.coverage import Coverage

# What a node needs done:
NOTHING = "nothing"  # fresh and present
RUN = "run"  # run its step (or restore it from the action cache if the key is there)
RESTORE = "restore"  # fresh, only the materialized artifact is missing or modified
#: This host cannot build it (its step's `host_requirement`, or an upstream node's): listed with
#: that reason, never started; `build` fails it at once and still builds the other targets.
BLOCKED = "blocked"


@dataclass
class NodePlan:
    """What the plan says of one node: `action` (the executor's instruction: NOTHING, RUN, RESTORE,
    BLOCKED), why, and its key; `state` and `next` say it in the status vocabulary every output uses."""

    node: Node
    action: str
    reasons: list[str] = field(default_factory=list)
    key: str | None = None  # None while an upstream node still has to run
    components: dict[str, Any] | None = None
    cached: bool = False  # the action cache already holds this key's outputs
    remote: bool = False  # not in the local cache, but the remote cache holds it: it will be pulled
    #: BLOCKED because it already failed under the key it would have now (every route of its target
    #: failed, or it failed earlier in this build), not because this host lacks something
    failed: bool = False

    @property
    def fresh(self) -> bool:
        return self.action == NOTHING

    @property
    def state(self) -> State:
        """The node's state: the one mapping of plan actions to words (plan, --json, the Python API)."""
        if self.action == NOTHING:
            return State.FRESH
        if self.action == BLOCKED:
            return State.FAILED if self.failed else State.BLOCKED
        return State.STALE

    @property
    def next(self) -> Action:
        """What a build will do about it."""
        if self.action in (NOTHING, BLOCKED):
            return Action.NONE
        if self.action == RESTORE:
            return Action.RESTORE
        return Action.REMOTE if self.remote else Action.CACHED if self.cached else Action.RUN


@dataclass
class Plan:
    """Nodes in dependency order with what each needs; `targets` are the requested ones."""

    config: LoadedConfig
    dag: Dag
    nodes: dict[str, NodePlan]
    targets: list[str]
    #: target → the routes it no longer tries: each failed under the key it would have again
    #: ({"route", "node", "key", "reason"}, from deploy.lock's `routes`).
    dropped: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    #: the models' ops against each converter's table, as far as the cache knows (buildsys.planning.coverage)
    coverage: "Coverage | None" = None

    def order(self) -> list[NodePlan]:
        return [self.nodes[n.name] for n in self.dag.order() if n.name in self.nodes]

    @property
    def work(self) -> list[NodePlan]:
        return [p for p in self.order() if p.action != NOTHING]


class Planner:
    """Computes keys and statuses; also used by the executor to re-key nodes once upstream is built."""

    def __init__(self, config: LoadedConfig, lock: Lock, store: Store, stat: StatCache, artifacts: Path):
        self.config = config
        self.lock = lock
        self.store = store
        self.stat = stat
        self.artifacts = artifacts
        self._source: dict[str, dict[str, str]] = {}
        self._source_packages: dict[str, list[str]] = {}
        self._data: dict[tuple[str, str], str] = {}
        self._remote: Any = None  # resolved on first use: a no-op plan never reads the remote settings
        # node → (why this host cannot build it, what its consumers say), None when it can: see `blocked`
        self._blocked: dict[str, tuple[str, str] | None] = {}

    @property
    def remote(self) -> Any:
        """The remote cache (buildsys.storage.remote.Remote) configured for this project, or None.

        Created lazily and cheaply (no network): only a stale node's lookup talks to the remote."""
        if self._remote is None:
            from buildsys.storage.remote import remote_for

            self._remote = remote_for(self.config) or False
        return self._remote or None

    def _on_remote(self, node: Node, plan: NodePlan) -> NodePlan:
        """Mark a stale node that the local cache lacks but the remote holds: it will be pulled."""
        remote = self.remote
        if remote is not None and plan.key and not plan.cached and remote.serves(node) and remote.lookup(plan.key):
            plan.remote = True
            plan.reasons = [*plan.reasons, f"from remote {remote.url}"]
        return plan

    # --- key components ----------------------------------------------------------------------
    def _digest_files(self, files: list[Path]) -> str:
        if len(files) == 1:
            return self.stat.digest(files[0])
        return digest_json([[f.relative_to(self.config.root).as_posix(), self.stat.digest(f)] for f in files])

    def source_inputs(self, model: str) -> dict[str, str]:
        if model not in self._source:
            self._source[model] = {role: self._digest_files(files) for role, files in source_files(self.config, model).items()}
        return self._source[model]

    def source_packages(self, model: str) -> list[str]:
        """The distributions a model's factory imports or reads from (inputs.factory_distributions)."""
        if model not in self._source_packages:
            source = self.config.project.models[model].source
            self._source_packages[model] = factory_distributions(self.config.root, source.factory.partition(":")[0]) \
                if source.factory else ["transformers"] if source.transformers else []
        return self._source_packages[model]

    def data_input(self, model: str, which: str) -> str:
        """Digest of a data set's file (or of its callable's spec: callables should be pure)."""
        if (model, which) not in self._data and which in (GENERATION, TOKENIZER):
            fields = ("tokenizer",) if which == TOKENIZER else ("prompts", "held_text", "tokenizer")
            self._data[model, which] = self._digest_files(generation_files(self.config, model, fields))
        if (model, which) not in self._data:
            path = data_files(self.config, model, which)
            spec = getattr(self.config.project.models[model].data, which)
            self._data[model, which] = self.stat.digest(path) if path else digest_json(spec.model_dump())
        return self._data[model, which]

    def _file_input(self, rel: str) -> str:
        """Digest of a project file or directory a step's options name (a missing one is a config error)."""
        from buildsys.errors import ConfigError

        path = self.config.root / rel
        if not path.exists():
            raise ConfigError(f"'{rel}' does not exist", hint="step options name files relative to the deploy file")
        return self.stat.tree(path)[0] if path.is_dir() else self.stat.digest(path)

    def components(self, node: Node, upstream: dict[str, str]) -> dict[str, Any]:
        """Everything that determines `node`'s output; `upstream` maps dep name → output digest."""
        from buildsys.config import data

        model = self.config.project.models[node.model]
        step = get_step(node.step)
        kind = kind_of(node)
        inputs: dict[str, str] = {}
        packages = list(step.packages)
        comp: dict[str, Any] = {"step": step.name, "step_version": step.version, "options": node.options}
        if node.source_format:
            inputs.update(self.source_inputs(node.model))
            packages += self.source_packages(node.model)  # the weights' package, transformers, …
            comp["source"] = model.source.model_dump(mode="json", include={"factory", "kwargs"})
            if model.source.transformers:  # (only when set: a factory model's keys stay as they were)
                comp["source"]["transformers"] = model.source.transformers
        for shipped in step.shipped_files:
            inputs[f"shipped {shipped.name}"] = self.stat.digest(shipped)
        if kind is ArtifactKind and _names_files(step):  # most steps don't: skip re-validating their options
            for rel in step.files_used(step.Options.model_validate(node.options)):
                inputs[f"file {rel}"] = self._file_input(rel)
        for which in node.data_sets:
            resolved = data.resolve_set(model, which)
            if resolved is not None:
                inputs[f"data {resolved}"] = self.data_input(node.model, resolved)
        for i, dep in enumerate(node.deps):
            inputs["reference" if kind.judges and i == 1 else f"upstream {dep}"] = upstream[dep]
        kind.add_components(node, model, comp, packages)
        if kind.judges and self.chain_caveats(node.deps[0]):  # what the artifact's chain reported enters its verdict
            comp["caveats"] = self.chain_caveats(node.deps[0])
        device = step.host_components(node.options)
        if device:  # what the output is only valid for (a TensorRT engine: GPU model, TensorRT)
            comp["device"] = device
        comp.update(keys.host_parts(kind.host_binding(node) or step.host_binding(node.options, node.data_sets)))
        comp["inputs"] = inputs
        comp["signature"] = model.model_dump(mode="json", include={"inputs", "outputs"})
        comp["toolchain"] = {**keys.toolchain(packages), **kind.pinned(node)}
        return comp

    def chain_caveats(self, artifact: str) -> list[dict[str, Any]]:
        """The caveats the lock records for `artifact` and the artifacts it was made from (a model
        delivered un-optimized), nearest first: what a target's check reports with its own."""
        out: list[dict[str, Any]] = []
        name: str | None = artifact
        while name:
            entry = self.lock.nodes.get(name, {})
            out += [c for c in entry.get("caveats", []) if c not in out]
            inputs = (entry.get("components") or {}).get("inputs") or {}
            name = next((k.removeprefix("upstream ") for k in inputs if k.startswith("upstream ")), None)
        return out

    # --- status --------------------------------------------------------------------------------
    def status(self, node: Node, upstream: dict[str, str | None], force: bool = False) -> NodePlan:
        """Fresh or stale (with reasons) given upstream output digests (None: will be rebuilt)."""
        blocked = self.blocked(node)
        if blocked:  # checked first: a host that cannot build it cannot key it either (no GPU to name)
            return NodePlan(node, BLOCKED, [blocked])
        entry = self.lock.nodes.get(node.name)
        unknown = [d for d in node.deps if upstream.get(d) is None]
        if unknown:
            reasons = [f"upstream {d} will be rebuilt" for d in unknown] if entry else ["not built yet"]
            if entry:  # also say what changed here, comparing with the lock's upstream digests
                assumed = {d: upstream.get(d) or _lock_output(self.lock, d, entry) for d in node.deps}
                own = keys.explain(entry.get("components", {}), self.components(node, assumed))
                reasons += [r for r in own if not r.startswith(("upstream ", "reference "))]
            return NodePlan(node, RUN, reasons)
        comp = self.components(node, upstream)  # type: ignore[arg-type]
        key = keys.action_key(comp)
        cached = self.store.get_action(key) is not None
        if force:
            return NodePlan(node, RUN, ["forced"], key, comp, cached=False)
        if entry is None:
            return self._on_remote(node, NodePlan(node, RUN, ["not built yet"], key, comp, cached))
        if entry.get("key") != key:
            reasons = keys.explain(entry.get("components", {}), comp) or ["key changed"]
            return self._on_remote(node, NodePlan(node, RUN, reasons, key, comp, cached))
        problems = self._delivery_problems(node) if kind_of(node).owns_delivery else []
        if problems:
            artifact = self.lock.nodes.get(node.deps[0], {})
            action = RESTORE if self.store.has_files(artifact.get("files", [])) else RUN
            plan = NodePlan(node, action, problems, key, comp, cached=action == RESTORE)
            return self._on_remote(node, plan) if action == RUN else plan
        return NodePlan(node, NOTHING, [], key, comp)

    def blocked(self, node: Node) -> str | None:
        """Why this host cannot build `node`: its step's host requirement, else the first upstream
        node's, named (deps are asked first: planning goes in dependency order). None: it can."""
        if node.name not in self._blocked:
            own = get_step(node.step).host_requirement()
            if own:
                self._blocked[node.name] = (own, f"upstream {node.name}: {own}")
            else:
                up = next((why[1] for d in node.deps if (why := self._blocked.get(d))), None)
                self._blocked[node.name] = (up, up) if up else None
        entry = self._blocked[node.name]
        return entry[0] if entry else None

    def _delivery_problems(self, check: Node) -> list[str]:
        """Why a target's deliverable under artifacts/ does not match what its passing check
        verified: missing or modified files. Deliverables are owned by checks, so an artifact that
        fails its check is never delivered."""
        target, artifact = check.target, check.deps[0]
        recorded = self.lock.targets.get(target)
        expected = delivered(self.lock.nodes.get(artifact, {}).get("files") or [])  # its diagnostics stay cached
        if not recorded or recorded.get("node") != artifact or recorded.get("files") != expected:
            return [f"output missing: {self.display(self.artifacts / target)}"]
        problems = []
        for rel, digest, _size, _x in recorded["files"]:
            path = self.artifacts / target / rel
            if not path.is_file():
                problems.append(f"output missing: {self.display(path)}")
            elif self.stat.digest(path) != digest:
                problems.append(f"output modified: {self.display(path)}")
        return problems

    def display(self, path: Path) -> str:
        try:
            return path.relative_to(self.config.root).as_posix()
        except ValueError:
            return str(path)

    def output_digest(self, name: str) -> str | None:
        entry = self.lock.nodes.get(name)
        return entry.get("tree") if entry else None


def _lock_output(lock: Lock, dep: str, entry: dict) -> str:
    return entry.get("components", {}).get("inputs", {}).get(f"upstream {dep}") or lock.nodes.get(dep, {}).get("tree", "")


def _names_files(step: type) -> bool:
    """Whether a step overrides Step.files_used (its options can name project files)."""
    from buildsys.formats.base import Step

    return step.files_used.__func__ is not Step.files_used.__func__  # type: ignore[attr-defined]


def make_plan(planner: Planner, targets: list[str] | None = None, *, force: bool = False,
              force_kinds: tuple[str, ...] = (), bench: bool = False,
              dropped_now: dict[str, list[list[str]]] | None = None) -> Plan:
    """Expand the requested targets and give every node its action and reasons.

    A target takes its first candidate route that has not failed under the key it would have now
    (deploy.lock remembers each failed route with the key of the node that failed, and the
    modelbuild version that failed it): a route is tried again only when something it depends on
    changed, a toolchain upgrade (modelbuild's own included) too. A target
    whose every route failed is blocked, its check listing each route and why it was dropped.

    `dropped_now` (target → routes) are the routes that failed earlier in the same build: they stay
    dropped whatever key their failing node would have now. Within a build nothing a key depends on
    changes, but a key is only known once the node's inputs are: a failing node behind one that is
    not fresh at plan time (restored or rebuilt for the next route) has no key to match its record,
    and the build would take that route again, and again.
    """
    from buildsys.planning import coverage
    from buildsys.planning.repair import repairable
    from buildsys.planning.repair import tried as tried_repairs
    from buildsys.planning.answers import refusals

    excluded: dict[str, list[list[str]]] = {}
    dropped: dict[str, list[dict[str, Any]]] = {}
    now = dropped_now or {}
    refused = refusals(planner.lock.routes)  # a refusal a rewrite answers adds the route with that rewrite
    known = coverage.read(planner)  # ops a route's converter lacks move it back (or bring its rewrite forward)
    repairs = repairable(planner.lock.routes)  # an int8 check miss adds the route with each repair recipe
    while True:
        dag = expand(planner.config, targets, cache=planner.store.dir / "expansion.pickle", bench=bench,
                     excluded=excluded, refusals=refused, gaps=known.gaps(), repairs=repairs, qat=known.qat())
        plans = _plan_nodes(planner, dag, force, force_kinds)
        keys = {p.key for p in plans.values() if p.key}
        still = {t: rec for t in dag.routes for rec in planner.lock.routes.get(t, {}).get("dropped", [])
                 if rec["route"] == dag.routes[t] and t not in dag.exhausted
                 and (rec["route"] in now.get(t, []) or
                      (rec["key"] in keys and rec.get("modelbuild") == __version__ and not force))}
        if not still:
            break
        for t, rec in still.items():
            excluded.setdefault(t, []).append(rec["route"])
            dropped.setdefault(t, []).append(rec)
    for t in dag.exhausted:
        check = plans[CheckKind.node_name(t)]
        tried = "; ".join(f"{' → '.join(r['route'])}: {r['reason']}" for r in dropped.get(t, []))
        check.action, check.failed, check.reasons = BLOCKED, True, [f"no route passes its check ({tried})"]
        hint = tried_repairs(dag.candidates.get(t, []))
        if hint:
            check.reasons[0] += f"; {hint}"
    selected = list(dag.target_nodes) if not targets else targets
    return Plan(planner.config, dag, plans, selected, dropped, known)


def _plan_nodes(planner: Planner, dag: Dag, force: bool, force_kinds: tuple[str, ...]) -> dict[str, NodePlan]:
    """Every node's status, in dependency order (keys need upstream outputs)."""
    plans: dict[str, NodePlan] = {}
    digests: dict[str, str | None] = {}
    for node in dag.order():
        upstream = {d: digests[d] for d in node.deps}
        plan = planner.status(node, upstream, force=force or node.kind in force_kinds)
        plans[node.name] = plan
        # A fresh node's output is the lock's; a node that runs has an output not known yet, unless
        # the remote holds it (then its entry names the tree, and downstream can be keyed too).
        digests[node.name] = planner.output_digest(node.name) if plan.action != RUN else \
            (planner.remote.lookup(plan.key)["tree"] if plan.remote else None)
    # An intermediate that is fresh but absent from the cache must be remade only if something
    # that consumes it runs (ninja's rule): walk dependents-first.
    for node in reversed(dag.order()):
        plan = plans[node.name]
        if plan.action == NOTHING and not kind_of(node).judges:
            entry = planner.lock.nodes.get(node.name, {})
            consumers = [plans[c] for c in dag.consumers[node.name]]
            needing = [c.node.name for c in consumers if c.action == RUN]
            if needing and not planner.store.has_files(entry.get("files", [])):
                plan.action = RUN
                plan.reasons = [f"output missing from the cache (needed by {', '.join(needing)})"]
                planner._on_remote(node, plan)
    return plans

