"""Keys and statuses: each node's key components, its key, and whether it is fresh, stale (and why), blocked
on this host, or to be restored. The plan (plan.py) asks the Planner for every node in dependency order; the
builder asks it again for a node whose upstream was rebuilt (early cutoff when the bytes came out the same).

Pure but for the stat cache: it reads the config, the lock, the store and file stats.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from buildsys.config import data
from buildsys.config.data import GENERATION, TOKENIZER
from buildsys.config.inputs import data_files, factory_distributions, generation_files, source_files
from buildsys.config.load import LoadedConfig
from buildsys.errors import ConfigError
from buildsys.formats import get_step
from buildsys.formats.base import Step, delivered
from buildsys.formats.quantized_weights import VERSION as QUANTIZED_WEIGHTS_VERSION, activations
from buildsys.lowering.decompose import VERSION as DECOMPOSE_VERSION
from buildsys.planning.kinds import ArtifactKind, kind_of
from buildsys.planning.node import Node
from buildsys.records import NodeEntry
from buildsys.status import Action, State
from buildsys.storage import keys
from buildsys.storage.hashing import StatCache, digest_json
from buildsys.storage.lock import Lock
from buildsys.storage.remote import remote_for
from buildsys.storage.store import Store


@dataclass
class NodePlan:
    """What the plan says of one node: its `state`, what a build does about it (`action`: the executor's
    instruction), why, and its key (None while an upstream node still has to run)."""

    node: Node
    state: State
    action: Action
    reasons: list[str] = field(default_factory=list)
    key: str | None = None
    components: dict[str, Any] | None = None

    @property
    def fresh(self) -> bool:
        return self.state is State.FRESH

    @property
    def runs(self) -> bool:
        """Whether the build obtains its output: runs its step, or restores it from a cache."""
        return self.action in (Action.RUN, Action.CACHED, Action.REMOTE)

    @classmethod
    def stale(cls, node: Node, reasons: list[str], key: str | None = None, components: dict[str, Any] | None = None,
              cached: bool = False) -> "NodePlan":
        return cls(node, State.STALE, Action.CACHED if cached else Action.RUN, reasons, key, components)


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
        # node → (why this host cannot build it, whether its own step is why, what its consumers say), None when
        # it can: see `blocked`
        self._blocked: dict[str, tuple[str, bool, str] | None] = {}

    @property
    def remote(self) -> Any:
        """The remote cache (buildsys.storage.remote.Remote) configured for this project, or None.

        Created lazily and cheaply (no network): only a stale node's lookup talks to the remote."""
        if self._remote is None:

            self._remote = remote_for(self.config) or False
        return self._remote or None

    def _on_remote(self, node: Node, plan: NodePlan) -> NodePlan:
        """Mark a stale node that the local cache lacks but the remote holds: it will be pulled."""
        remote = self.remote
        if remote is not None and plan.key and plan.action is Action.RUN and remote.serves(node) \
                and remote.lookup(plan.key):
            plan.action = Action.REMOTE
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

        path = self.config.root / rel
        if not path.exists():
            raise ConfigError(f"'{rel}' does not exist", hint="step options name files relative to the deploy file")
        return self.stat.tree(path)[0] if path.is_dir() else self.stat.digest(path)

    def components(self, node: Node, upstream: dict[str, str]) -> dict[str, Any]:
        """Everything that determines `node`'s output; `upstream` maps dep name → output digest."""

        model = self.config.project.models[node.model]
        step = get_step(node.step)
        kind = kind_of(node)
        inputs: dict[str, str] = {}
        packages = list(step.packages)
        comp: dict[str, Any] = {"step": step.name, "step_version": step.version, "options": node.options}
        if node.options.get("decompose") is not None:  # (only then: the keys of other steps stay as they were)
            comp["decompose_version"] = DECOMPOSE_VERSION
        if "quantized_weights" in step.committed_metrics:  # a fact formats/quantized_weights.py measures: its rules
            comp["quantized_weights_version"] = QUANTIZED_WEIGHTS_VERSION
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
        if kind.judges and self.chain_fact(node.deps[0], "quantized_weights"):  # judged against its floor
            comp["quantized_weights"] = self.chain_fact(node.deps[0], "quantized_weights")
            scheme = activations({k: self.chain_fact(node.deps[0], k) for k in ("scheme", "method")})
            if scheme:  # int8 weights with activations that are not: the check's record says so
                comp["quantized_weights"] = {**comp["quantized_weights"], "activations": scheme}
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
        for entry in self._chain(artifact):
            out += [c for c in entry.get("caveats", []) if c not in out]
        return out

    def chain_fact(self, artifact: str, name: str) -> Any:
        """The committed fact `name` (`Step.committed_metrics`) of `artifact` or, where it has none, of the
        nearest artifact it was made from (a Triton layout's onnx-int8 model: its quantized_weights); None."""
        return next((e["facts"][name] for e in self._chain(artifact) if name in (e.get("facts") or {})), None)

    def _chain(self, artifact: str) -> Iterator[NodeEntry]:
        """The lock entries of `artifact` and of the artifacts it was made from, nearest first."""
        name: str | None = artifact
        while name:
            entry = self.lock.entry(name)
            yield entry
            inputs = (entry.get("components") or {}).get("inputs") or {}
            name = next((k.removeprefix("upstream ") for k in inputs if k.startswith("upstream ")), None)

    # --- status --------------------------------------------------------------------------------
    def status(self, node: Node, upstream: dict[str, str | None], force: bool = False) -> NodePlan:
        """Fresh or stale (with reasons) given upstream output digests (None: will be rebuilt)."""
        blocked = self.blocked(node)
        if blocked:  # checked first: a host that cannot build it cannot key it either (no GPU to name)
            why, own = blocked  # its own step fails at once; what is downstream of it is skipped
            return NodePlan(node, State.BLOCKED, Action.FAIL if own else Action.SKIP, [why])
        entry = self.lock.nodes.get(node.name)
        unknown = [d for d in node.deps if upstream.get(d) is None]
        if unknown:
            reasons = [f"upstream {d} will be rebuilt" for d in unknown] if entry else ["not built yet"]
            if entry:  # also say what changed here, comparing with the lock's upstream digests
                assumed = {d: upstream.get(d) or _lock_output(self.lock, d, entry) for d in node.deps}
                own_reasons = keys.explain(entry.get("components", {}), self.components(node, assumed))
                reasons += [r for r in own_reasons if not r.startswith(("upstream ", "reference "))]
            return NodePlan.stale(node, reasons)
        comp = self.components(node, upstream)  # type: ignore[arg-type]
        key = keys.action_key(comp)
        cached = self.store.get_action(key) is not None
        if force:
            return NodePlan.stale(node, ["forced"], key, comp)
        if entry is None:
            return self._on_remote(node, NodePlan.stale(node, ["not built yet"], key, comp, cached))
        if entry.get("key") != key:
            reasons = keys.explain(entry.get("components", {}), comp) or ["key changed"]
            return self._on_remote(node, NodePlan.stale(node, reasons, key, comp, cached))
        problems = self._delivery_problems(node) if kind_of(node).owns_delivery else []
        if problems:
            artifact = self.lock.entry(node.deps[0])
            if self.store.has_files(artifact.get("files", [])):
                return NodePlan(node, State.STALE, Action.RESTORE, problems, key, comp)
            return self._on_remote(node, NodePlan.stale(node, problems, key, comp))
        return NodePlan(node, State.FRESH, Action.NONE, [], key, comp)

    def blocked(self, node: Node) -> tuple[str, bool] | None:
        """Why this host cannot build `node`, and whether that is its own step's host requirement (True) or an
        upstream node's, named (False; deps are asked first: planning goes in dependency order). None: it can."""
        if node.name not in self._blocked:
            own = get_step(node.step).host_requirement()
            if own:
                self._blocked[node.name] = (own, True, f"upstream {node.name}: {own}")
            else:
                up = next((entry[2] for d in node.deps if (entry := self._blocked.get(d))), None)
                self._blocked[node.name] = (up, False, up) if up else None
        found = self._blocked[node.name]
        return (found[0], found[1]) if found else None

    def _delivery_problems(self, check: Node) -> list[str]:
        """Why a target's deliverable under artifacts/ does not match what its passing check
        verified: missing or modified files. Deliverables are owned by checks, so an artifact that
        fails its check is never delivered."""
        target, artifact = check.target, check.deps[0]
        recorded = self.lock.targets.get(target)
        expected = delivered(self.lock.entry(artifact).get("files") or [])  # its diagnostics stay cached
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


def _lock_output(lock: Lock, dep: str, entry: NodeEntry) -> str:
    return entry.get("components", {}).get("inputs", {}).get(f"upstream {dep}") or lock.entry(dep).get("tree", "")


def _names_files(step: type) -> bool:
    """Whether a step overrides Step.files_used (its options can name project files)."""

    return step.files_used.__func__ is not Step.files_used.__func__  # type: ignore[attr-defined]


