"""Types the exporter wrote that the ONNX operator schemas forbid, made legal with Casts.

PyTorch promotes where ONNX does not: `bool_mask.cumsum(-1)` is an int64 cumulative count in torch,
and the legacy exporter writes it as `CumSum(bool)`, which ONNX's schema (T: ints and floats) forbids
and ONNX Runtime refuses to load ("Type 'tensor(bool)' ... of operator (CumSum) is invalid"). The same
happens to any op whose type constraint leaves out the dtype torch computed in. This pass reads each
node's schema at the file's opset and, for an input whose type its constraint does not allow, casts
that input to the nearest type it does allow, the way torch itself would compute:

- `bool` becomes int64 (torch's promotion of bool arithmetic and reductions), and stays int64: the
  consumers the exporter wrote already expect the count, not a bool;
- any other type is widened (small ints to int32/int64, half floats to float32) and the node's outputs
  of that type variable are cast back, so the graph keeps the dtype torch kept.

A file whose types are all legal is left untouched. Used by the exporters only, never on a given file.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Sequence

if TYPE_CHECKING:
    import onnx

#: For each illegal input type, the types to widen it to, in order of preference (exact for every value).
WIDER: dict[str, tuple[str, ...]] = {
    "bool": ("int64", "int32", "float"),
    "int8": ("int32", "int64", "float"), "uint8": ("int32", "int64", "float"),
    "int16": ("int32", "int64", "float"), "uint16": ("int32", "int64", "float"),
    "uint32": ("int64", "double"), "int32": ("int64", "double"),
    "float16": ("float", "double"), "bfloat16": ("float", "double"),
}


def legalise(path: Path) -> dict[str, int]:
    """Rewrite `path` in place so every standard node's input types are legal; returns {op: casts inserted}."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    fixed = legalise_model(model)
    if fixed:
        onnx.save(model, str(path))
    return fixed


def legalise_model(model: "onnx.ModelProto") -> dict[str, int]:
    """Insert the Casts in `model` (in place); returns {op type: casts inserted}, empty when all was legal."""
    from onnx import helper

    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    if opset is None:
        return {}
    types = _value_types(model)
    fixed: dict[str, int] = {}
    nodes: list[onnx.NodeProto] = []
    for index, node in enumerate(model.graph.node):
        schema = _schema(node, opset)
        after: list[onnx.NodeProto] = []
        if schema is not None:
            allowed = {tc.type_param_str: {s[len("tensor("):-1] for s in tc.allowed_type_strs if s.startswith("tensor(")}
                       for tc in schema.type_constraints}
            chosen: dict[str, tuple[str, str]] = {}  # type variable → (old type, new type)
            for slot, name in enumerate(node.input):
                param = _formal(schema.inputs, slot)
                old = types.get(name)
                if not name or param is None or param.type_str not in allowed or old is None:
                    continue
                ok = allowed[param.type_str]
                if old in ok:
                    continue
                new = chosen.get(param.type_str, (old, next((t for t in WIDER.get(old, ()) if t in ok), None)))[1]
                if new is None:
                    continue
                chosen[param.type_str] = (old, new)
                cast = f"{name}__as_{new}_{index}"
                nodes.append(helper.make_node("Cast", [name], [cast], to=_elem(new), name=f"{node.name}/legalise_{slot}"))
                node.input[slot] = cast
                types[cast] = new
                fixed[node.op_type] = fixed.get(node.op_type, 0) + 1
            for slot, name in enumerate(node.output):
                param = _formal(schema.outputs, slot)
                if not name or param is None or param.type_str not in chosen:
                    continue
                old, new = chosen[param.type_str]
                if old == "bool":  # torch's bool arithmetic is int64: the consumers expect the widened value
                    types[name] = new
                    continue
                wide = f"{name}__{new}_{index}"
                node.output[slot] = wide
                after.append(helper.make_node("Cast", [wide], [name], to=_elem(old), name=f"{node.name}/restore_{slot}"))
        nodes.append(node)
        nodes.extend(after)
    if fixed:
        del model.graph.node[:]
        model.graph.node.extend(nodes)
        del model.graph.value_info[:]  # the types inferred before the casts may now be stale
    return fixed


def _value_types(model: "onnx.ModelProto") -> dict[str, str]:
    """Element type names of the graph's values, as ONNX's (non-strict) shape inference infers them."""
    import onnx

    try:
        inferred = onnx.shape_inference.infer_shapes(model, strict_mode=False)
    except Exception:  # inference itself failed: judge only what the file declares
        inferred = model
    graph = inferred.graph
    out: dict[str, str] = {}
    for value in [*graph.input, *graph.value_info, *graph.output]:
        elem = value.type.tensor_type.elem_type
        if elem:
            out[value.name] = onnx.helper.tensor_dtype_to_string(elem).removeprefix("TensorProto.").lower()
    for init in graph.initializer:
        out[init.name] = onnx.helper.tensor_dtype_to_string(init.data_type).removeprefix("TensorProto.").lower()
    for node in graph.node:  # Constant nodes' outputs, which inference may leave untyped
        if node.op_type == "Constant" and node.attribute and node.attribute[0].type == onnx.AttributeProto.TENSOR:
            tensor = node.attribute[0].t
            out.setdefault(node.output[0], onnx.helper.tensor_dtype_to_string(tensor.data_type)
                           .removeprefix("TensorProto.").lower())
    return out


def _schema(node: "onnx.NodeProto", opset: int) -> "onnx.defs.OpSchema | None":
    import onnx

    if node.domain not in ("", "ai.onnx"):
        return None
    try:
        return onnx.defs.get_schema(node.op_type, opset)
    except onnx.defs.SchemaError:
        return None


def _formal(params: "Sequence[onnx.defs.OpSchema.FormalParameter]", slot: int) -> "onnx.defs.OpSchema.FormalParameter | None":
    """The formal parameter at `slot`, the last one standing for every further (variadic) slot."""
    if not params:
        return None
    if slot < len(params):
        return params[slot]
    last = params[-1]
    return last if last.option == last.option.Variadic else None


def _elem(name: str) -> int:
    import onnx

    return int(getattr(onnx.TensorProto, name.upper()))
