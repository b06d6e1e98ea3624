"""What litert-torch's program goes through before it is converted (formats/tflite/litert_torch.py): a graph pass that
makes explicit broadcasts implicit again, one that folds the constants a model generates (the `fold_constants`
answer), and the PT2E annotations TFLite's int8 kernels require of litert-torch's
quantizer (one scale through ops that only move values; the fixed output ranges of softmax, sigmoid and tanh).
torch is imported inside the functions.
"""

from __future__ import annotations

from typing import Any


#: Elementwise ops that broadcast their tensor operands (numpy's rules): an `expand` feeding one of them only makes
#: explicit what the op does anyway.
BROADCASTING = frozenset({"add", "sub", "rsub", "mul", "div", "where", "maximum", "minimum", "pow", "eq", "ne", "lt",
                          "le", "gt", "ge", "logical_and", "logical_or", "logical_xor", "bitwise_and", "bitwise_or",
                          "atan2", "fmod", "remainder", "copysign", "hypot", "fmax", "fmin"})


def implicit_broadcasts(module: Any) -> list[str]:
    """Remove (in place) each `expand` (or `expand_as`) whose every consumer is a BROADCASTING op whose result keeps
    its shape without it: the op broadcasts the unexpanded tensor to the same result. Returns the expands removed.

    Why: litert-torch lowers `expand` to BROADCAST_TO, and after its layout passes the pair can be refused ("'tfl.mul'
    op operands don't have broadcast-compatible shapes" at conversion, BROADCAST_TO "Output shape must be
    broadcastable from input shape" at LiteRT's prepare: timm's MobileViTv2 multiplies by `context.expand_as(value)`),
    where the same op on the unexpanded tensor converts. The program computes the same values either way, with one
    op and one materialised tensor fewer."""
    import torch

    graph, removed = module.graph, []
    for node in list(graph.nodes):
        if node.op != "call_function" or str(getattr(node.target, "_opname", "")) not in ("expand", "expand_as"):
            continue
        source, users = node.args[0], list(node.users)
        if not isinstance(source, torch.fx.Node) or not users or not all(_keeps_shape(u, node, source) for u in users):
            continue
        node.replace_all_uses_with(source)
        graph.erase_node(node)
        removed.append(node.name)
    if removed:
        module.recompile()
    return removed


def _keeps_shape(user: Any, expand: Any, source: Any) -> bool:
    """Whether `user` is a BROADCASTING op that gives a result of the same shape when it reads `source` (the
    unexpanded tensor) instead of `expand` (an expand never changes the dtype)."""
    import torch

    if user.op != "call_function" or str(getattr(user.target, "_opname", "")) not in BROADCASTING:
        return False
    result, shapes = user.meta.get("val"), []
    for arg in (*user.args, *user.kwargs.values()):
        if arg is expand:
            arg = source
        if isinstance(arg, torch.fx.Node):
            value = arg.meta.get("val")
            if not isinstance(value, torch.Tensor):
                return False
            shapes.append(tuple(value.shape))
    if not isinstance(result, torch.Tensor) or not isinstance(source.meta.get("val"), torch.Tensor):
        return False
    try:
        return tuple(torch.broadcast_shapes(*shapes)) == tuple(result.shape)
    except RuntimeError:
        return False


#: Ops that only move or pick values (every output value is an input value): an int8 tensor through them keeps its
#: scale, and TFLite's converter requires it ("'tfl.transpose' op quantization parameters violate the same scale
#: constraint", the transpose of GPT-NeoX's attention heads). litert-torch's quantizer shares its input's range
#: through permute, view, squeeze, slice_copy, flatten, mean and a few more; torch.export also keeps these.
LAYOUT_OPS = frozenset({"transpose", "t", "reshape", "_unsafe_view", "unsqueeze", "squeeze", "expand", "select",
                        "slice", "narrow", "contiguous", "clone", "alias", "unflatten", "flip", "roll", "repeat",
                        "pixel_shuffle", "pixel_unshuffle", "channel_shuffle", "max_pool2d"})
#: Pads add zeros, which every int8 range holds exactly: TFLite's PAD keeps its input's scale too (RT-DETR's stem pads
#: before a convolution). A pad of another value may lie outside the input's range, so it keeps its own.
ZERO_PADS = {"constant_pad_nd": 2, "pad": 3}  # op → the position of its value argument


def shared_through_layout_ops(model: Any) -> list[str]:
    """Give each unannotated op of LAYOUT_OPS (and each zero pad) whose input is quantized that input's quantization
    (in place), so its output shares the input's scale, as litert-torch does for its own short list: a chain of
    them shares one range. Returns the nodes annotated."""
    import torch
    from torchao.quantization.pt2e.quantizer import QuantizationAnnotation, SharedQuantizationSpec
    from torchao.quantization.pt2e.quantizer.quantizer import Q_ANNOTATION_KEY

    changed = []
    for node in model.graph.nodes:
        op = str(getattr(node.target, "_opname", "")) if node.op == "call_function" else ""
        if op in ZERO_PADS:
            position = ZERO_PADS[op]
            value = node.args[position] if len(node.args) > position else node.kwargs.get("value")
            mode = node.args[2] if op == "pad" and len(node.args) > 2 else node.kwargs.get("mode", "constant")
            if mode != "constant" or value not in (None, 0, 0.0):
                continue
        elif op not in LAYOUT_OPS:
            continue
        source = node.args[0] if node.args else None
        before = source.meta.get(Q_ANNOTATION_KEY) if isinstance(source, torch.fx.Node) else None
        own, value = node.meta.get(Q_ANNOTATION_KEY), node.meta.get("val")
        if (before is None or before.output_qspec is None or (own is not None and own._annotated)
                or not getattr(getattr(value, "dtype", None), "is_floating_point", True)):
            continue  # not quantized, annotated already, or an integer or boolean value (never quantized)
        shared = SharedQuantizationSpec(source)
        node.meta[Q_ANNOTATION_KEY] = QuantizationAnnotation(input_qspec_map={source: shared}, output_qspec=shared,
                                                             _annotated=True)
        changed.append(node.name)
    return changed


#: TFLite's int8 kernels of these ops accept one output range only (tflite/kernels/activations.cc: "output->params.scale
#: not near 1.f / 256" fails the model at prepare): (scale, zero point) of int8 outputs.
FIXED_OUTPUT_RANGES = {"softmax": (1 / 256, -128), "_softmax": (1 / 256, -128), "sigmoid": (1 / 256, -128),
                       "tanh": (1 / 128, 0), "log_softmax": (16 / 256, 127), "_log_softmax": (16 / 256, 127)}


def fixed_output_ranges(model: Any) -> list[str]:
    """Give the int8 outputs of softmax, sigmoid, tanh and log-softmax the fixed ranges TFLite's kernels require, in
    an annotated graph (in place): the op's own output annotation, and every consumer's annotation of its input
    edge from such an op (litert-torch folds that quantization into the op). Returns the nodes changed.
    litert-torch's quantizer fixes `_softmax` and `sigmoid` only; the `softmax.int` torch.export keeps (YOLO's
    distribution head) was left unannotated and its consumer's calibrated input range became the softmax's."""
    import torch
    from torchao.quantization.pt2e.quantizer import FixedQParamsQuantizationSpec
    from torchao.quantization.pt2e.quantizer.quantizer import Q_ANNOTATION_KEY

    def fixed(node: Any) -> Any:
        op = str(getattr(node.target, "_opname", "")) if getattr(node, "op", "") == "call_function" else ""
        if op not in FIXED_OUTPUT_RANGES:
            return None
        scale, zero_point = FIXED_OUTPUT_RANGES[op]
        return FixedQParamsQuantizationSpec(dtype=torch.int8, scale=scale, zero_point=zero_point, quant_min=-128,
                                            quant_max=127, qscheme=torch.per_tensor_affine)

    changed = []
    for node in model.graph.nodes:
        annotation = node.meta.get(Q_ANNOTATION_KEY)
        if annotation is None:
            continue
        own = fixed(node) if annotation.output_qspec is not None else None
        if own is not None and not isinstance(annotation.output_qspec, FixedQParamsQuantizationSpec):
            annotation.output_qspec = own
            changed.append(node.name)
        for producer, spec in list(annotation.input_qspec_map.items()):
            edge = fixed(producer)
            if edge is not None and spec is not None and not isinstance(spec, FixedQParamsQuantizationSpec):
                annotation.input_qspec_map[producer] = edge
                changed.append(node.name)
    return changed


#: Folded values larger than this stay computed: a constant is stored in the file, the ops that make it are not.
FOLD_LIMIT_BYTES = 64 << 20


def fold_generated_constants(module: Any) -> list[str]:
    """Replace (in place) every value the program generates from nothing (no input, no weight, no buffer: `eye`,
    `arange`, `full` and what pointwise and layout ops make of them) by a buffer holding it; returns the ops folded.

    Why: litert-torch lowers some constructors to StableHLO ops the TFLite converter keeps and LiteRT's runtime has
    no kernel for ("Didn't find op for builtin opcode 'STABLEHLO_IOTA'": `torch.eye`, which XLNet's attention mask
    subtracts), and the file cannot be prepared. Their values never depend on the inputs, so the program computes
    the same with them stored. Random and side-effecting ops are never folded, nor values above FOLD_LIMIT_BYTES."""
    import torch

    graph, values = module.graph, dict[Any, Any]()
    for node in graph.nodes:
        target = node.target
        if node.op != "call_function" or not isinstance(target, torch._ops.OpOverload) or node.is_impure() \
                or torch.Tag.nondeterministic_seeded in target.tags or any(n not in values for n in node.all_input_nodes):
            continue
        args, kwargs = torch.fx.node.map_arg((node.args, node.kwargs), values.__getitem__)
        values[node] = target(*args, **kwargs)
    for node in list(values):  # a metadata assertion on a value computed here asserts nothing
        for user in list(node.users):
            if user.target == torch.ops.aten._assert_tensor_metadata.default:
                graph.erase_node(user)
    fake_mode = torch._guards.detect_fake_mode([n.meta["val"] for n in graph.nodes if "val" in n.meta])
    folded: list[str] = []
    for node, value in values.items():  # the frontier: generated values read by a computed op
        if not isinstance(value, torch.Tensor) or value.nbytes > FOLD_LIMIT_BYTES \
                or all(user in values for user in node.users):
            continue
        name = f"_folded_{len(folded)}"
        while hasattr(module, name):
            name += "_"
        module.register_buffer(name, value.clone())
        with graph.inserting_before(node):
            constant = graph.get_attr(name)
        if fake_mode is not None:
            constant.meta["val"] = fake_mode.from_tensor(value)
        node.replace_all_uses_with(constant)
        folded.append(str(node.target))
    for node in reversed(list(values)):  # what made them, now unread
        if not node.users:
            graph.erase_node(node)
    if folded:
        module.recompile()
    return folded
