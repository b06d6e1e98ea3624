"""Node kinds as types: what each kind of node adds to its key, asks its worker for, and does with a result.

A node is an artifact (`digits/onnx`), the reference of a model (`digits/reference`), the check of a
target (`verify:android`) or its benchmark (`bench:android`). Everything that differs between those
kinds lives here, decided once, so that the planner and the executor ask the kind instead of
testing strings: the planner for key components, the executor for the worker request and for what
a result means (pass, warn, fail; deliver or withdraw; commit to the lock or only record).
`Node.kind` stays the kind's name (plain data in plans and cached expansions); `kind_of(node)` is
the class.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from buildsys.config import data
from buildsys.rewrites import MECHANISM, versions
from buildsys.status import verdict_of
from buildsys.storage.keys import HostBinding
from buildsys.storage.lock import LOCAL

if TYPE_CHECKING:
    from buildsys.config.schema import Model
    from buildsys.planning.node import Node
    from buildsys.storage.keys import HostBinding


@dataclass(frozen=True)
class Disposition:
    """What a finished node's metrics mean: `failed` with the words for it, and whether to deliver."""

    failed: bool = False
    what: str = ""
    deliver: bool = False
    withdraw: bool = False


class NodeKind:
    """The behaviour every node of one kind shares. Subclasses set the flags and override hooks."""

    name: ClassVar[str]
    #: Judges an artifact against its model's reference: deps are [artifact, reference], and it runs
    #: in the artifact's toolchain worker.
    judges: ClassVar[bool] = False
    #: Nothing may run beside it (a benchmark: parallel work would skew its latencies).
    runs_alone: ClassVar[bool] = False
    #: Its key names the host, so its entry is recorded for this machine and never committed.
    host_bound: ClassVar[bool] = False
    #: Its key compares the artifact delivered under artifacts/<target>/ (a check owns delivery).
    owns_delivery: ClassVar[bool] = False
    #: How its nodes are named after what they are of (`node_name`): a target for a check or a
    #: benchmark, a model for a reference. Artifacts are named by their route.
    name_format: ClassVar[str] = ""

    @classmethod
    def node_name(cls, of: str) -> str:
        """The name of this kind's node for target or model `of` (`verify:android`, `digits/reference`)."""
        return cls.name_format.format(of)

    @classmethod
    def add_components(cls, node: "Node", model: "Model", comp: dict[str, Any], packages: list[str]) -> None:
        """Add what this kind's output depends on beyond the step, options and inputs. A judging kind
        runs the artifact in its format's runtime, whose packages therefore enter its key."""
        if cls.judges:
            from buildsys.formats import get_format, runtime_class

            runtime = get_format(node.format).runtime
            packages += _runtime_packages(runtime)
            if runtime and runtime_class(runtime).stand_in:  # where the runtime cannot run, the stand-in computes
                packages += _runtime_packages(runtime_class(runtime).stand_in)

    @classmethod
    def pinned(cls, node: "Node") -> dict[str, str]:
        """Versions outside Python that a judging kind's runtime pins (the npm packages a browser check
        serves, `Runtime.npm_packages`): they enter the key's toolchain beside the installed packages'
        versions, so a new pin re-runs the checks made with the old one."""
        if not cls.judges:
            return {}
        from buildsys.formats import get_format, runtimes

        runtime = get_format(node.format).runtime
        return {f"npm {name}": version for name, version in runtimes()[runtime].npm_packages.items()} if runtime else {}

    @classmethod
    def request_extra(cls, node: "Node", model: "Model", source: str | None) -> dict[str, Any]:
        """Kind-specific fields of the worker request (`source`: the model's source file, if any)."""
        return {}

    @classmethod
    def host_binding(cls, node: "Node") -> "HostBinding | None":
        """How much of the host this kind's result depends on (keys.HostBinding); None: as its step says."""
        return None

    @classmethod
    def outcome(cls, node: "Node", metrics: dict[str, Any]) -> Disposition:
        """What a successful step's metrics mean for the build."""
        return Disposition()

    @classmethod
    def lock_fields(cls, node: "Node", metrics: dict[str, Any]) -> dict[str, Any]:
        """Fields the lock entry carries for this kind (besides key, components and files)."""
        return {}


class ArtifactKind(NodeKind):
    """A step's output on the route from a model's source to a target's format."""

    name = "artifact"

    @classmethod
    def add_components(cls, node: "Node", model: "Model", comp: dict[str, Any], packages: list[str]) -> None:
        """The versions of the op rewrites its options apply (buildsys.rewrites): a new version of a
        rewrite rebuilds what was made with it."""
        if node.options.get("rewrites"):
            comp["rewrites"] = versions(node.options["rewrites"])
            comp["rewrite_mechanism"] = MECHANISM
        if node.options.get("structured_sparsity"):  # a pruned module: the pruning code and library decide it
            from buildsys.formats.torch.pruned import PACKAGE, PRUNING_VERSION

            comp["structured_pruning"] = PRUNING_VERSION
            packages.append(PACKAGE)
        if model.generation is not None:  # a decoder's export is sized by its cache and prefill chunk
            comp["generation"] = model.generation.model_dump(mode="json", include={"max_seq_len", "max_cache_len"})

    @classmethod
    def lock_fields(cls, node: "Node", metrics: dict[str, Any]) -> dict[str, Any]:
        """The step's committed facts (`Step.committed_metrics`) and its caveats: what holds of the
        output on every host, so `explain`, the report and the checks downstream can read it."""
        from buildsys.formats import get_step

        facts = {k: metrics[k] for k in get_step(node.step).committed_metrics if k in metrics}
        out: dict[str, Any] = {"facts": facts} if facts else {}
        if metrics.get("caveats"):
            out["caveats"] = metrics["caveats"]
        return out


class ReferenceKind(NodeKind):
    """The model's source run once on its evaluation inputs: what every check compares to."""

    name = "reference"
    name_format = "{}/reference"

    @classmethod
    def add_components(cls, node: "Node", model: "Model", comp: dict[str, Any], packages: list[str]) -> None:
        from buildsys.formats import get_format

        if data.used_set(model) is None:
            comp["synthetic"] = {"seed": model.seed, "samples": model.samples}
        if model.generation is not None:  # how the prompts are cut and continued (their files: data generation)
            comp["generation"] = model.generation.model_dump(mode="json")
        packages += _runtime_packages(get_format(node.source_format).runtime)

    @classmethod
    def lock_fields(cls, node: "Node", metrics: dict[str, Any]) -> dict[str, Any]:
        """The model's intrinsic error (nodes/intrinsic.py, two significant digits): what the default limits of
        its checks were raised by, shown beside them in the lock, `explain` and the report."""
        return {"facts": {"intrinsic": metrics["intrinsic"]}} if metrics.get("intrinsic") else {}


class CheckKind(NodeKind):
    """A target's artifact run in its runtime and compared with the reference under its acceptance.

    Its options are the resolved acceptance (a tolerance change re-runs only the check). A pass (or a
    miss with on_fail: warn) delivers the artifact to artifacts/<target>/; a miss withdraws it.
    """

    name = "check"
    judges = True
    owns_delivery = True
    name_format = "verify:{}"

    @classmethod
    def add_components(cls, node: "Node", model: "Model", comp: dict[str, Any], packages: list[str]) -> None:
        from buildsys.formats import get_format

        super().add_components(node, model, comp, packages)
        comp["options"] = {}
        comp["acceptance"] = node.options
        serving = get_format(node.format).serving_runtime if node.options.get("serving") else None
        if serving:
            packages += _runtime_packages(serving)
            from buildsys.formats import get_runtime

            device = get_runtime(serving).host_components()
            if device:  # whether the serving part can run here (a C++ compiler for LibTorch)
                comp["device"] = device

    @classmethod
    def request_extra(cls, node: "Node", model: "Model", source: str | None) -> dict[str, Any]:
        return {"format": node.format}

    @classmethod
    def host_binding(cls, node: "Node") -> "HostBinding":
        """A verdict is an observation of the artifact in this host's runtime, which may not run at all
        elsewhere (Core ML's numeric check needs macOS) or may round differently: one host kind never
        lends its verdict to another. For a quantized or half-precision artifact the CPU's
        instruction-set class matters too: int8 kernels differ with and without VNNI / AVX-512
        (examples/digits: cosine 0.78 on an AVX2-only CPU with 8-bit weights, 0.9996 with 7). An fp32
        verdict is shared across CPU classes: fp32 kernels differ only in summation order (~1e-6
        relative), two orders of magnitude under the fp32 default tolerance."""

        return HostBinding.PLATFORM if node.precision == "fp32" else HostBinding.CPU_CLASS

    @classmethod
    def outcome(cls, node: "Node", metrics: dict[str, Any]) -> Disposition:
        if metrics.get("passed") is False and node.options.get("on_fail") != "warn":
            return Disposition(failed=True, what="acceptance not met", withdraw=True)
        return Disposition(deliver=True)

    @classmethod
    def lock_fields(cls, node: "Node", metrics: dict[str, Any]) -> dict[str, Any]:
        """The verdict and its caveats hold on every host of one kind (the key names it), so the lock
        commits them; the observed numbers behind them go to the build record."""

        fields: dict[str, Any] = {"verdict": str(verdict_of(metrics))}
        if metrics.get("limits_raised"):  # the defaults the model's own error raised (nodes/intrinsic.py)
            fields["facts"] = {"limits_raised": metrics["limits_raised"]}
        if metrics.get("caveats"):
            fields["caveats"] = metrics["caveats"]
        return fields


class BenchKind(NodeKind):
    """A target's artifact timed in its runtime next to PyTorch eager; latency budgets are its acceptance."""

    name = "bench"
    judges = True
    runs_alone = True
    host_bound = True
    name_format = "bench:{}"

    @classmethod
    def host_binding(cls, node: "Node") -> "HostBinding":

        return HostBinding.CPU_CLASS

    @classmethod
    def add_components(cls, node: "Node", model: "Model", comp: dict[str, Any], packages: list[str]) -> None:
        import platform

        super().add_components(node, model, comp, packages)
        # Latencies belong to a machine: another host measures again.
        comp["host"] = {"node": platform.node(), "machine": platform.machine(), "processor": platform.processor()}

    @classmethod
    def request_extra(cls, node: "Node", model: "Model", source: str | None) -> dict[str, Any]:
        return {"format": node.format, "source_format": model.source.format, "source_path": source}

    @classmethod
    def outcome(cls, node: "Node", metrics: dict[str, Any]) -> Disposition:
        if metrics.get("passed") is False and node.options.get("on_fail") != "warn":
            return Disposition(failed=True, what="latency budget missed")
        return Disposition()

    @classmethod
    def lock_fields(cls, node: "Node", metrics: dict[str, Any]) -> dict[str, Any]:

        return {LOCAL: True}


KINDS: dict[str, type[NodeKind]] = {k.name: k for k in (ArtifactKind, ReferenceKind, CheckKind, BenchKind)}


def kind_of(node: "Node") -> type[NodeKind]:
    return KINDS[node.kind]


def _runtime_packages(runtime: str | None) -> list[str]:
    """The packages whose versions enter the key of a node that runs `runtime`."""
    if runtime is None:
        return []
    from buildsys.formats import runtime_class

    return list(runtime_class(runtime).packages)
