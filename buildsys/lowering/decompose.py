"""An exported program decomposed with PyTorch's own tables: the worker side of the `decompose` option (docs/lowering.md).

Tables, looked up in this order for each op: `torch._decomp.decomposition_table` (which also holds
decompositions outside the core set: grid_sampler_2d, affine_grid_generator, cumsum…), the core ATen
decompositions (`torch._decomp.core_aten_decompositions()`, which also lowers the composite ops a training-IR
export keeps: grid_sampler, cdist, linear), this project's own (`own_decompositions`, in extra_decompositions.py:
ops PyTorch's tables leave or lower only to a prim and no converter takes: empty_permuted, addbmm, exp2, erfc, angle,
put), and `torch._refs` (the Python references, for an op none holds).
torch is imported inside the functions: the planner imports this module's name only through the steps.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Sequence, Union

if TYPE_CHECKING:
    import torch
    from torch.export import ExportedProgram

#: Enters the key of every step that decomposes (planning.planner): bump when a decomposition's output changes.
#: 2: the whole-program decomposition keeps linear layers whose weight is constant (`_linear_kept`).
#: 3: it goes on past the core set where `decomposition_table` lowers what is left (`to_core`); var_mean.
VERSION = 3

#: A `decompose` option's value: the ops by bare name (grid_sampler_2d), or "core" for the whole program.
Spec = Union[str, Sequence[str]]
_TABLES = "torch._decomp.decomposition_table, the core ATen decompositions, torch._refs"


class NoDecomposition(Exception):
    """What was asked cannot be decomposed; the message says which op and why, for the step's error."""


def _base(target: Any) -> str:
    """aten.grid_sampler_2d.default → grid_sampler_2d ('' for what is not an ATen op overload)."""
    parts = str(target).split(".")
    return parts[1] if len(parts) == 3 and parts[0] == "aten" else ""


def _refs(name: str) -> Callable[..., Any] | None:
    """The Python reference of `name` in torch._refs (special_/linalg_/fft_ ops in their submodules)."""
    import torch._refs
    import torch._refs.fft
    import torch._refs.linalg
    import torch._refs.nn.functional
    import torch._refs.special

    modules = [("", torch._refs), ("", torch._refs.nn.functional), ("special_", torch._refs.special),
               ("linalg_", torch._refs.linalg), ("fft_", torch._refs.fft)]
    for prefix, module in modules:
        if prefix and not name.startswith(prefix):
            continue
        ref = getattr(module, name[len(prefix):], None)
        if callable(ref) and name[len(prefix):] in getattr(module, "__all__", ()):
            return ref
    return None


def own_decompositions() -> dict["torch._ops.OpOverload", Callable[..., Any]]:
    """This project's decompositions of ATen ops that PyTorch's tables leave (or lower only to a prim) and no
    converter takes (lowering/extra_decompositions.py), keyed as theirs; consulted after them, and part of the
    whole program's core decomposition."""
    from buildsys.lowering.extra_decompositions import table

    return table()


def core_table(keep_linear: bool = False) -> Any:
    """The table `run_decompositions` uses by default (the core ATen decompositions), with `own_decompositions`;
    without `aten.linear` where `keep_linear` (`_linear_kept`)."""
    import torch

    table = torch.export.default_decompositions()
    for op, fn in own_decompositions().items():
        table[op] = fn
    if keep_linear:
        table.pop(torch.ops.aten.linear.default, None)
    return table


def to_core(program: "ExportedProgram", keep_linear: bool = False) -> "ExportedProgram":
    """`program` decomposed to core ATen as far as PyTorch's tables reach: by `core_table`, then each op it leaves
    that is not core ATen by `decomposition_table`'s entry where that lowers it to ATen ops (not a reference),
    round after round while one makes another. The core set leaves ops export's functionalization makes
    (`_native_batch_norm_legit_functional`, from a batch norm that updates running statistics), which ExecuTorch's
    verifier and coremltools both refuse; on the zoo's architectures no op is left and this adds nothing."""
    import torch
    from torch._decomp import decomposition_table

    table = core_table(keep_linear)
    kept = {torch.ops.aten.linear.default} if keep_linear else set()
    out = program.run_decompositions(table)
    for _ in range(4):
        more = {n.target: decomposition_table[n.target] for n in out.graph.nodes
                if n.op == "call_function" and isinstance(n.target, torch._ops.OpOverload)
                and torch.Tag.core not in n.target.tags and n.target not in table and n.target not in kept
                and _lowers(decomposition_table.get(n.target))}
        if not more:
            break
        table.update(more)
        out = program.run_decompositions(table)
    return out


def _linear_kept(program: "ExportedProgram") -> int:
    """Prepare `program` (in place) for a core decomposition that keeps its linear layers: each `aten.linear` whose
    weight the program computes (a weight-normed or tied-and-scaled layer) is rewritten as `matmul(x, wᵀ) + b`,
    which the core table lowers; the others, whose weight is a parameter, buffer or constant, stay `aten.linear`.

    Why per node: PT2E quantizers (XNNPACK's, litert-torch's) annotate `aten.linear`, not the `addmm`/`mm` the core
    table makes of it, so an int8 route that needed the whole-program decomposition shipped every linear layer
    float (GPT-NeoX's lm_head: caught by min_quantized_share); but Core ML's `linear` takes only a constant weight.
    Every converter that reads an exported program lowers `aten.linear` itself. Returns how many were kept."""
    import torch

    aten = torch.ops.aten
    signature = program.graph_signature
    constant = {*signature.inputs_to_parameters, *signature.inputs_to_buffers,
                *signature.inputs_to_lifted_tensor_constants}
    graph = program.graph_module.graph
    kept, rewritten = 0, False
    for node in list(graph.nodes):
        if node.op != "call_function" or node.target is not aten.linear.default:
            continue
        x, weight, bias = (list(node.args) + [None])[:3]
        if getattr(weight, "op", None) == "placeholder" and weight.name in constant:
            kept += 1
            continue
        with graph.inserting_before(node):
            out = graph.call_function(aten.matmul.default, (x, graph.call_function(aten.t.default, (weight,))))
            if bias is not None:
                out = graph.call_function(aten.add.Tensor, (out, bias))
        node.replace_all_uses_with(out)
        graph.erase_node(node)
        rewritten = True
    if rewritten:
        program.graph_module.recompile()
    return kept


def _entries(name: str) -> dict["torch._ops.OpOverload", Callable[..., Any]]:
    """Every overload of aten.`name` with a decomposition, from the first table that lowers it to ATen ops (a
    table's reference, which exports as a prim, only where no table lowers it: erfc's own entry beats torch._refs')."""
    import torch
    from torch._decomp import core_aten_decompositions, decomposition_table

    packet = getattr(torch.ops.aten, name, None)
    if packet is None or not hasattr(packet, "overloads"):
        return {}
    overloads = [getattr(packet, o) for o in packet.overloads()]
    tables = (decomposition_table, core_aten_decompositions(), own_decompositions())
    for table in tables:
        found = {o: table[o] for o in overloads if _lowers(table.get(o))}
        if found:
            return found
    for table in tables:
        found = {o: table[o] for o in overloads if o in table}
        if found:
            return found
    ref = _refs(name)  # functional overloads only: a reference computes a result, it writes no `out=`
    return {o: ref for o in overloads if ref is not None and not o._schema.is_mutable} if ref else {}


def decomposes(name: str) -> bool:
    """Whether PyTorch's decomposition tables (`decomposition_table`, the core ATen set) lower aten.`name` to other
    ATen ops: what the worker says of the ops a refusal names, so the planner offers a decomposition only where
    one exists, also before the op analysis read the whole table. A reference (`torch._refs`, also registered in
    the tables) does not count: it exports as a prim (erfinv → prims.erf_inv), which no converter takes either;
    `decompose: [op]` written by hand still reaches it."""
    import torch
    from torch._decomp import core_aten_decompositions, decomposition_table

    packet = getattr(torch.ops.aten, name, None)
    if packet is None or not hasattr(packet, "overloads"):
        return False
    tables = (decomposition_table, core_aten_decompositions(), own_decompositions())
    return any(_lowers(table.get(getattr(packet, o))) for table in tables for o in packet.overloads())


def _lowers(fn: Any) -> bool:
    """Whether a table's entry lowers its op to other ATen ops: not a reference (`torch._refs`), which the table
    also registers for elementwise ops and which export as a prim (erfinv → prims.erf_inv)."""
    return fn is not None and not str(getattr(fn, "__module__", "")).startswith("torch._refs")


def decomposable_ops() -> list[str]:
    """The ATen ops (bare names) PyTorch's decomposition tables lower to other ATen ops: the `decomposable` table
    refusal answers read (buildsys.planning.coverage_probe), so the planner offers a decomposition only for an op
    PyTorch can decompose (`torch._refs` left out, as in `decomposes`)."""
    from torch._decomp import core_aten_decompositions, decomposition_table

    tables = (decomposition_table, core_aten_decompositions(), own_decompositions())
    return sorted({_base(k) for table in tables for k, fn in table.items() if _lowers(fn)} - {""})


def decompose(program: "ExportedProgram", spec: Spec) -> tuple["ExportedProgram", dict[str, Any]]:
    """`program` with the ops `spec` names decomposed ("core": the whole program to core ATen, its linear layers with a
    constant weight kept, `_linear_kept`, which edits `program` in place), and the record the step's metrics keep:
    `{"decompose": spec, "decomposed": {op: [the ops it became]}}`.

    A named op the graph holds only inside a composite op (grid_sampler_2d inside grid_sampler, as a training-IR
    export keeps it) is reached by decomposing that composite op first. Raises NoDecomposition for an op no table
    has, one the program does not hold, or one its decomposition leaves in place (it declined these arguments)."""
    if isinstance(spec, str):
        if spec != "core":
            raise NoDecomposition(f"decompose: {spec!r} is neither 'core' nor a list of ops")
        kept = _linear_kept(program)
        out = to_core(program, keep_linear=True)
        return out, _record("core", decompositions(program, out), kept)
    names = list(dict.fromkeys(spec))
    table: dict[Any, Callable[..., Any]] = {}
    for name in names:
        entries = _entries(name)
        if not entries:
            raise NoDecomposition(f"aten::{name} has no decomposition in PyTorch's tables ({_TABLES}; torch "
                                  f"{_torch_version()}): decompose cannot lower it, an op rewrite must (docs/rewrites.md)")
        table.update(entries)
    held = {_base(n.target) for n in program.graph.nodes if n.op == "call_function"}
    composites = _composites(program, [n for n in names if n not in held])
    table.update(composites)
    out = program.run_decompositions(table)
    for _ in range(4):  # what a decomposition made that is not core ATen, decomposed in turn (cdist → _euclidean_dist)
        made = _noncore(out, held | set(names))
        if not made:
            break
        table.update(made)
        out = program.run_decompositions(table)
    left = sorted({_base(n.target) for n in out.graph.nodes if n.op == "call_function"} & set(names))
    if left:
        raise NoDecomposition(f"PyTorch's decomposition of aten::{left[0]} left it in the program (it declines "
                              "these arguments or dtypes): an op rewrite must remove it (docs/rewrites.md)")
    # An op export's functionalisation makes (`_native_batch_norm_legit_functional`, what a refusal names) stands
    # in the exported program as the op it came from (`_native_batch_norm_legit`): that op's decomposition is asked.
    asked = set(names) | {_base(t) for t in composites} | {n.removesuffix("_functional") for n in names}
    record = _record(names, {op: parts for op, parts in decompositions(program, out).items() if op in asked})
    if not record["decomposed"]:
        raise NoDecomposition(f"the exported program holds no {', '.join(f'aten::{n}' for n in names)} to decompose "
                              f"(its ops: {', '.join(sorted(held - {''}))})")
    return out, record


def decompositions(program: Any, core: Any) -> dict[str, list[str]]:
    """Each op of `program`'s graph → the ops of `core` made from it (its nodes' `from_node` provenance)."""
    base = lambda target: str(target).split(".")[1]  # noqa: E731
    exported = {n.name: base(n.target) for n in program.graph.nodes
                if n.op == "call_function" and str(n.target).startswith("aten.")}
    out: dict[str, set[str]] = {op: set() for op in exported.values()}
    for node in core.graph.nodes:
        if node.op != "call_function" or not str(node.target).startswith("aten."):
            continue
        for source in node.meta.get("from_node") or []:
            if source.name in exported:
                out[exported[source.name]].add(base(node.target))
    return {op: sorted(ops) for op, ops in sorted(out.items())}


def _composites(program: "ExportedProgram", missing: list[str]) -> dict[Any, Callable[..., Any]]:
    """The core decompositions of the composite ops of `program` whose decomposition makes an op of `missing`."""
    if not missing:
        return {}
    from torch._decomp import core_aten_decompositions

    made = decompositions(program, program.run_decompositions())
    parents = {op for op, parts in made.items() if set(parts) & set(missing)}
    core = core_aten_decompositions()
    return {n.target: core[n.target] for n in program.graph.nodes
            if n.op == "call_function" and _base(n.target) in parents and n.target in core}


def _noncore(program: "ExportedProgram", before: set[str]) -> dict[Any, Callable[..., Any]]:
    """The core decompositions of the ops of `program` not among `before` that are not core ATen (what a named op's
    decomposition made: its decomposition, not the core table, may leave composite ops)."""
    import torch
    from torch._decomp import core_aten_decompositions

    core = {**core_aten_decompositions(), **own_decompositions()}
    return {n.target: core[n.target] for n in program.graph.nodes
            if n.op == "call_function" and _base(n.target) and _base(n.target) not in before
            and torch.Tag.core not in n.target.tags and n.target in core}


def _record(spec: Spec, made: dict[str, list[str]], linear_kept: int = 0) -> dict[str, Any]:
    """What changed: each op of the program that the decomposition replaced, and the ops it became (and how many
    linear layers a core decomposition kept, `_linear_kept`)."""
    changed = {op: parts for op, parts in made.items() if parts != [op]}
    out = {"decompose": spec if isinstance(spec, str) else list(spec), "decomposed": changed}
    return {**out, "linear_kept": linear_kept} if linear_kept else out


def scriptable(program: "ExportedProgram") -> "torch.jit.ScriptModule":
    """The decomposed program as TorchScript that keeps its dynamic sizes.

    torch.jit.trace of `program.module()` would freeze every size a decomposition computes (its `sym_size` calls
    return Python ints while tracing), so the graph is compiled with torch.jit.script instead: flat inputs and a
    tuple of outputs (plain FX code generation, no pytree), `sym_size` as `Tensor.size`, each op overload as its
    packet (TorchScript picks the overload by schema), input guards left out (export already checked them)."""
    import torch

    module = program.module()
    graph = module.graph
    graph._codegen = torch.fx.graph.CodeGen()
    for node in list(graph.nodes):
        if node.op == "call_module" and "guards" in str(node.target):
            graph.erase_node(node)
        elif node.op == "call_function" and node.target is torch.ops.aten.sym_size.int:
            node.op, node.target = "call_method", "size"
        elif node.op == "call_function" and isinstance(node.target, torch._ops.OpOverload):
            node.target = node.target.overloadpacket
    plain = torch.fx.GraphModule(module, graph)  # without the unlifted module's pre-forward hooks
    return torch.jit.script(plain)


def describe(record: dict[str, Any]) -> str:
    """One line: what a `decompose` option did (for explain, the report and the lock's facts)."""
    made = record.get("decomposed") or {}
    asked = record.get("decompose")
    what = "the whole program to core ATen" if asked == "core" else ", ".join(asked or [])
    shown = "; ".join(f"{op} → {', '.join(parts) or 'nothing'}" for op, parts in sorted(made.items())[:6])
    more = f"; and {len(made) - 6} more" if len(made) > 6 else ""
    return f"decomposed with PyTorch's tables: {what} ({shown}{more})"


def _torch_version() -> str:
    import torch

    return str(torch.__version__)
