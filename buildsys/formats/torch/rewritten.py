"""The options of the steps that load the PyTorch module, shared by them: `rewrites` (docs/rewrites.md),
`structured_sparsity`, and the lowering answers `decompose` and `static_fallback` (docs/lowering.md).

A step whose options derive from `RewritableOptions` loads the module and applies the named op rewrites
(buildsys.rewrites) before it traces, exports or captures it, then exports and decomposes it when `decompose` is
set (buildsys.lowering); the routes know such a step as the hop that loads the module, where an automatic rewrite
route puts its rewrites (buildsys.planning.answers) and a refusal's decomposition or static export goes. Each option
is left out of the options' JSON when unset, so a node without it keeps the key it had before the option existed;
the rewrites' versions enter the key beside them (kinds.ArtifactKind), the torch version already does.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar, Literal, Optional, Union

from pydantic import Field, SerializationInfo, SerializerFunctionWrapHandler, field_validator, model_serializer

from buildsys.formats.base import Step, StepOptions

if TYPE_CHECKING:
    import torch

    from buildsys.formats.base import StepContext


class RewritableOptions(StepOptions):
    """Options of a step that loads the PyTorch module: the op rewrites it applies first."""

    rewrites: tuple[str, ...] = Field(
        default=(), description="Op rewrites applied to the module before it is traced or exported, in order "
        "(docs/rewrites.md: the families fft, complex, scatter, recurrent, distance, triangular, special, scan, order, linalg; their members "
        "stft, embedding-bag; diff, roll, unfold, fold, sdpa): each removes an op "
        "some converters refuse and computes the same. Usually left unset: when a converter refuses an op a "
        "rewrite removes, the route with that rewrite here is tried next. Setting it (even to []) pins it for "
        "this format: no rewrite is added automatically.")
    structured_sparsity: float = Field(
        default=0.0, ge=0.0, lt=1.0, description="Structured (channel) pruning before the module is traced or "
        "exported: the share of output channels removed from every conv and linear layer but those that make the "
        "model's outputs (by L2 weight magnitude, with torch-pruning's dependency graph; no fine-tuning). Every "
        "format made from this one gets the smaller model; its check still compares against the dense PyTorch "
        "reference, so a ratio the model cannot afford fails the build. Usually set on the target "
        "(`structured_sparsity:`). 0: no pruning.")
    decompose: Optional[Union[Literal["core"], tuple[str, ...]]] = Field(
        default=None, description="Export the module with torch.export and decompose it with PyTorch's own tables "
        "(torch._decomp.decomposition_table, the core ATen decompositions, torch._refs) before this step carries on "
        "(docs/lowering.md): a list of ATen ops (e.g. [grid_sampler_2d], the ops a converter refused) decomposes just "
        "those, 'core' the whole program to core ATen. After `rewrites` and structured pruning. TorchScript is then "
        "compiled by torch.jit.script from the decomposed graph; an op no table decomposes fails the step, naming it. "
        "Usually left unset: the planner sets it when a converter refuses an op PyTorch can decompose.")
    static_fallback: bool = Field(
        default=False, description="When torch.export with the signature's dynamic axes violates a constraint of the "
        "model's code ('Constraints violated'), export again at static shapes (the batch axis the signature's size or "
        "1, other axes the example's) and record a fallback caveat saying so, instead of failing. For routes whose "
        "formats have fixed shapes anyway (an ExecuTorch .pte, litert-torch's TFLite): a .pt2 or ONNX delivered with "
        "dynamic axes keeps it false, so its export fails naming the constraint. Usually set by the planner.")

    @field_validator("decompose")
    @classmethod
    def _op_names(cls, value: Any) -> Any:
        if value is None or value == "core":
            return value
        from buildsys.rewrites import op_base

        names = tuple(dict.fromkeys(op_base(str(op)) for op in value))
        if not names:
            raise ValueError("decompose: [] decomposes nothing: name the ATen ops (e.g. [grid_sampler_2d]), or 'core', "
                             "or leave it unset")
        bad = [n for n in names if not n.isidentifier()]
        if bad:
            raise ValueError(f"decompose: {bad[0]!r} is not an ATen op name (e.g. grid_sampler_2d, aten::cdist)")
        return names

    @field_validator("rewrites")
    @classmethod
    def _known(cls, names: tuple[str, ...]) -> tuple[str, ...]:
        from buildsys.rewrites import check_names

        return tuple(check_names(names))

    @model_serializer(mode="wrap")
    def _without_empty_rewrites(self, handler: SerializerFunctionWrapHandler, info: SerializationInfo) -> Any:
        data = handler(self)
        if isinstance(data, dict) and not data.get("rewrites"):
            data.pop("rewrites", None)  # keys of nodes without rewrites stay what they were
        if isinstance(data, dict) and not data.get("structured_sparsity"):
            data.pop("structured_sparsity", None)  # nor do those of unpruned nodes
        if isinstance(data, dict) and data.get("decompose") is None:
            data.pop("decompose", None)  # nor those of undecomposed ones
        if isinstance(data, dict) and not data.get("static_fallback"):
            data.pop("static_fallback", None)
        return data


def load_rewritten(step: "Step", ctx: "StepContext[Any]", fold: bool = False, eager_qat: bool = False) -> "torch.nn.Module":
    """The step's PyTorch module, loaded, its linear layers in disguise (transformers' Conv1D) made nn.Linear
    (formats/torch/linear.py), with its options' rewrites applied (their own errors are the user's: a
    StepError naming the step). A quantization-aware-trained module comes converted with its
    learned parameters (buildsys.formats.torch.qat.quantized; `fold`: its weights stored as int8): what every exporter
    must carry to the int8 artifacts. An eager-mode QAT module is refused unless the step exports fake
    quantization itself (`eager_qat`: the TorchScript ONNX exporter), which gets it with plain fake-quant calls."""
    from buildsys import rewrites
    from buildsys.formats.torch.qat import quantized
    from buildsys.formats.torch.loading import load_module

    from buildsys.formats.torch.linear import as_linear

    module = quantized(load_module(ctx.model, ctx.root, name=ctx.model_name, step=step.name), step=step.name, fold=fold,
                       eager=eager_qat)
    ctx.extra["as_linear"] = as_linear(module)  # Conv1D and its kin as nn.Linear: every quantizer downstream knows them
    ratio = float(getattr(ctx.options, "structured_sparsity", 0.0))
    if ratio:
        module = _pruned(step, ctx, module, ratio)
    names = list(getattr(ctx.options, "rewrites", ()))
    return rewrites.apply(module, names) if names else module


def _pruned(step: "Step", ctx: "StepContext[Any]", module: "torch.nn.Module", ratio: float) -> "torch.nn.Module":
    """`module` with `ratio` of its channels removed (formats.torch.pruned); what was done goes to
    `ctx.extra` for the step's metrics (`rewrite_metrics`)."""
    from buildsys.errors import describe
    from buildsys.formats.torch import pruned
    from buildsys.formats.torch.qat import info_of

    problem = pruned.unavailable()
    if problem:
        raise step.fail(ctx, problem)
    if info_of(module) is not None:
        raise step.fail(ctx, "structured_sparsity cannot prune a quantization-aware-trained module (its fake-quant "
                             "observers are sized per channel): prune before QAT, or set structured_sparsity: 0")
    try:
        ctx.extra["structured_pruning"] = pruned.prune_channels(module, ctx.model, ctx.example(), ratio)
    except Exception as exc:
        raise step.fail(ctx, f"structured pruning at {ratio:g} failed: {describe(exc)}") from exc
    return module


def rewrite_metrics(ctx: "StepContext[Any]", ops: list[str] | None = None, module: Any = None) -> dict[str, Any]:
    """What the step's metrics say of its rewrites (committed to the lock: `rewrites`) and, where the step
    saw the traced or exported graph, the ATen ops it holds (`ops`: what a refusal downstream is matched
    against when it names no op); of a QAT `module` (buildsys.formats.torch.qat), what was recognised (`qat`)."""
    from buildsys.formats.torch.qat import info_of

    out: dict[str, Any] = {}
    info = info_of(module) if module is not None else None
    if info is not None:
        out["qat"] = f"{info.describe()}: exported with its learned quantization parameters " + \
            ("(convert_pt2e)" if info.flow == "pt2e" else "(fake-quant as QuantizeLinear/DequantizeLinear)")
    names = list(getattr(ctx.options, "rewrites", ()))
    if names:
        out["rewrites"] = names
    if ctx.extra.get("as_linear"):  # linear layers in disguise made nn.Linear (formats/torch/linear.py)
        out["as_linear"] = len(ctx.extra["as_linear"])
    if ctx.extra.get("structured_pruning"):
        out["structured_pruning"] = ctx.extra["structured_pruning"]
    if ops is not None:
        out["ops"] = sorted(set(ops))
    return out


class FromPyTorch(Step):
    """A step that loads the factory's module (`load_rewritten`) and exports or traces it: what it reads and
    needs, and the facts it commits (`rewrite_metrics`, the lowering's decomposition) and describes."""

    consumes: ClassVar[tuple[str, ...]] = ("pytorch",)
    packages: ClassVar[tuple[str, ...]] = ("torch",)
    extra = "torch"
    toolchain = "torch"
    committed_metrics: ClassVar[tuple[str, ...]] = ("rewrites", "qat", "structured_pruning", "decomposition")

    @classmethod
    def describe_facts(cls, facts: dict[str, Any]) -> list[str]:
        return describe_rewrites(facts) + ([facts["qat"]] if facts.get("qat") else [])


def describe_rewrites(facts: dict[str, Any]) -> list[str]:
    """The rewrites, the structured pruning and the decomposition an artifact carries, in words (for `explain` and
    the report)."""
    names = facts.get("rewrites") or []
    pruning = []
    if facts.get("structured_pruning"):
        from buildsys.formats.torch.pruned import describe

        pruning = [describe(facts["structured_pruning"])]
    if facts.get("decomposition"):
        from buildsys.lowering.decompose import describe as decomposition

        pruning.append(decomposition(facts["decomposition"]))
    if not names:
        return pruning
    from buildsys.rewrites import REGISTRY

    removed = [op for n in names if n in REGISTRY for op in REGISTRY[n].removes[:1]]
    return [f"op rewrites applied: {', '.join(names)} (removes {', '.join(removed)}; see docs/rewrites.md)"] + pruning


def torchscript_ops(module: Any) -> list[str]:
    """The aten:: ops of a traced or scripted module's inlined graph; a transposed `_convolution` (what the trace
    records for F.conv_transpose2d) also under the name of the function the model called (aten::conv_transpose2d),
    which a rewrite removes."""
    try:
        graph = module.inlined_graph
    except Exception:  # noqa: BLE001 - the op list is a note for refusal matching, never a failure
        return []
    ops = [n.kind() for n in graph.nodes() if n.kind().startswith("aten::")]
    return ops + [op for n in graph.nodes() if (op := _transposed_convolution(n))]


def _transposed_convolution(node: Any) -> str | None:
    """aten::conv_transposeNd for a traced aten::_convolution whose `transposed` argument is a true constant."""
    try:
        if node.kind() != "aten::_convolution":
            return None
        flag = node.inputsAt(6).node()
        if flag.kind() != "prim::Constant" or not flag.i("value"):
            return None
        rank = node.inputsAt(1).type().dim()
        return f"aten::conv_transpose{rank - 2}d" if rank and 3 <= rank <= 5 else None
    except Exception:  # noqa: BLE001 - a note for refusal matching, never a failure
        return None


def program_ops(program: Any, custom: bool = False) -> list[str]:
    """The ATen ops of an ExportedProgram's graph (aten.stft.default); with `custom`, also the custom ops
    (torch.library: `torch_nn::_linear_cross_entropy_batch_chunked`), which a refusal downstream may name."""
    out = [str(n.target) for n in program.graph.nodes if n.op == "call_function" and str(n.target).startswith("aten.")]
    if custom:
        out += [n.target._schema.name for n in program.graph.nodes if n.op == "call_function"
                and getattr(n.target, "namespace", "aten") not in ("aten", "prims", "higher_order")
                and hasattr(n.target, "_schema")]
    return out



def dispatched_ops(module: Any, args: tuple[Any, ...]) -> list[str]:
    """The ATen ops one eager call of `module` on `args` dispatches (aten::_embedding_bag), with the torch
    functions it calls under their ATen names (aten::gru): what an exporter that keeps no ATen graph (the
    ONNX export) records for refusals downstream that name only ONNX ops. The calls count because a composite
    op (an RNN, a GRU cell) is dispatched only as the ops it decomposes into."""
    import torch
    from torch.overrides import TorchFunctionMode
    from torch.utils._python_dispatch import TorchDispatchMode

    seen: set[str] = set()

    class _Record(TorchDispatchMode):
        def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
            seen.add(func._schema.name)
            return func(*args, **(kwargs or {}))

    class _Calls(TorchFunctionMode):
        def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
            name = getattr(func, "__name__", "")
            if name and not name.startswith("__"):
                seen.add(f"aten::{name}")
            return func(*args, **(kwargs or {}))

    try:
        with torch.no_grad(), _Calls(), _Record():
            module(*args)
    except Exception:  # noqa: BLE001 - the op list is a note for refusal matching, never a failure
        return []
    return sorted(op for op in seen if op.startswith("aten::"))
