"""Embedding tables stored in int8 in an exported graph, before a PT2E quantizer annotates it
(docs/quantization.md#embedding-tables).

PT2E's quantizers (XNNPACK's for ExecuTorch, litert-torch's for TFLite) annotate linear, convolution and
arithmetic ops; none has a pattern for `aten.embedding`, so a model's embedding tables stayed float32 in an
"int8" file: a BERT-style encoder's 30522 × 256 word table was 31 MB of a 34.8 MB TFLite file, 3.1× its int8 size.
Every runtime here has an integer gather (TFLite's GATHER on int8 params, ExecuTorch's portable `embedding` on an
int8 weight), so the table is stored as int8 with one symmetric scale per row, and the lookup becomes:

    rows  = embedding(table_int8, ids)        # int8 [..., dim]
    scale = embedding(row_scales, ids)        # float32 [..., 1]
    out   = rows.to(float32) * scale

Per row, because a table's rows differ in range by orders of magnitude (rare tokens' rows stay near their
initialisation); the rounding error of a row is at most half a step of its own largest value / 127. A table that
is also read by another op (tied to an output head) is left as it is: it is quantized as that op's weight, and
a second int8 copy would store it twice. Tables the target keeps float on purpose (keep_float names the module,
the table or the lookup node) are left float too.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Iterable

if TYPE_CHECKING:
    import torch

#: The fewest elements of a table worth storing in int8 (below, a table is a few positions of a tiny model: the
#: scales and the extra lookup would cost as much as they save).
MIN_ELEMENTS = 1024


def embeddings_as_int8(gm: "torch.fx.GraphModule", keep: Iterable[str] = ()) -> list[str]:
    """Rewrite (in place) every `aten.embedding` of a float table of at least MIN_ELEMENTS elements that nothing
    else reads and `keep` does not name into an int8 lookup with per-row scales (see the module doc); returns the
    tables so rewritten, by their attribute path."""
    import torch
    from torch._guards import detect_fake_mode

    aten = torch.ops.aten
    keep = [str(k) for k in keep if k]
    fake_mode = detect_fake_mode([n.meta["val"] for n in gm.graph.nodes if "val" in n.meta])
    rewritten: list[str] = []
    for node in list(gm.graph.nodes):
        if node.op != "call_function" or node.target is not aten.embedding.default or fake_mode is None:
            continue
        table = node.args[0]
        if not isinstance(table, torch.fx.Node) or table.op != "get_attr" or len(table.users) != 1:
            continue  # a computed table, or one tied to another op (an output head): that op quantizes it
        weight = _attr(gm, str(table.target))
        path = str(table.target)
        module_path = str((list((node.meta.get("nn_module_stack") or {}).values()) or [("", "")])[-1][0])
        names = (path, node.name, module_path)
        if not isinstance(weight, torch.Tensor) or not weight.is_floating_point() or weight.dim() != 2 \
                or weight.numel() < MIN_ELEMENTS or _kept(names, keep):
            continue
        _as_int8_lookup(gm, node, table, weight, fake_mode)
        rewritten.append(path)
    if rewritten:
        gm.graph.eliminate_dead_code()
        read = {str(n.target) for n in gm.graph.nodes if n.op == "get_attr"}
        for path in rewritten:  # the float table itself, read no more: an exporter would still store it
            if path not in read:
                owner_path, _, name = path.rpartition(".")
                delattr(gm.get_submodule(owner_path) if owner_path else gm, name)
        gm.recompile()
    return rewritten


def _attr(gm: "torch.fx.GraphModule", path: str) -> Any:
    owner_path, _, name = path.rpartition(".")
    return getattr(gm.get_submodule(owner_path) if owner_path else gm, name, None)


def _kept(names: tuple[str, ...], keep: list[str]) -> bool:
    """Whether keep_float names this lookup: its table's path, its node, or its module (or a module above it)."""
    return any(n == k or n.startswith((k + ".", k + "/")) for k in keep for n in names if n)


def _as_int8_lookup(gm: "torch.fx.GraphModule", node: Any, table: Any, weight: "torch.Tensor", fake_mode: Any) -> None:
    """Replace the lookup `node` of `table` by the int8 lookup, scaled per row, registering the int8 table and its
    scales beside the original attribute (which `embeddings_as_int8` then deletes, unread)."""
    import torch

    aten = torch.ops.aten
    data = weight.detach().float()
    scales = (data.abs().amax(dim=1, keepdim=True) / 127.0).clamp(min=torch.finfo(torch.float32).tiny)
    quantized = torch.round(data / scales).clamp(-127, 127).to(torch.int8)
    owner_path, _, name = str(table.target).rpartition(".")
    owner = gm.get_submodule(owner_path) if owner_path else gm
    int8_name, scale_name = _free(owner, name + "_int8"), _free(owner, name + "_row_scale")
    owner.register_buffer(int8_name, quantized.contiguous())
    owner.register_buffer(scale_name, scales.to(weight.dtype).contiguous())
    prefix = owner_path + "." if owner_path else ""

    def emit(kind: str, target: Any, *args: Any, **kwargs: Any) -> Any:
        with gm.graph.inserting_before(node):
            new = gm.graph.get_attr(target) if kind == "get_attr" else gm.graph.call_function(target, args, kwargs)
        with fake_mode:
            if kind == "get_attr":
                new.meta["val"] = fake_mode.from_tensor(_attr(gm, target), static_shapes=True)
            else:
                new.meta["val"] = target(*[a.meta["val"] if isinstance(a, torch.fx.Node) else a for a in args],
                                         **kwargs)
        for key in ("nn_module_stack", "stack_trace", "source_fn_stack", "from_node"):
            if key in node.meta:
                new.meta[key] = node.meta[key]
        return new

    ids = node.args[1]
    rows = emit("call", aten.embedding.default, emit("get_attr", prefix + int8_name), ids)
    scale = emit("call", aten.embedding.default, emit("get_attr", prefix + scale_name), ids)
    widened = emit("call", aten._to_copy.default, rows, dtype=weight.dtype)
    out = emit("call", aten.mul.Tensor, widened, scale)
    node.replace_all_uses_with(out)
    gm.graph.erase_node(node)


def _free(owner: Any, name: str) -> str:
    while hasattr(owner, name):
        name += "_"
    return name
