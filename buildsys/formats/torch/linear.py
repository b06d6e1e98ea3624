"""Linear layers in disguise, made `nn.Linear` where a step loads the module, so every quantizer sees them.

Quantizers recognise linear layers by type or by op: `nn.Linear` for torchao's `quantize_` (ExecuTorch's
LLM schemes), `aten.linear` for PT2E's XNNPACKQuantizer (ExecuTorch and litert-torch int8). A module that
computes the same thing another way is skipped by all of them and ships float under an int8 name:
transformers' `pytorch_utils.Conv1D` (GPT-2, GPT-J, GPT-Neo, …: `addmm(bias, x, weight)` with the weight
stored [in, out]) is the common one, and any custom layer whose forward is a `matmul` / `addmm` with a
parameter weight is the same case.

So the test is what the module computes, not its type: a leaf module (no children) whose parameters are a
2-D `weight` and at most a 1-D `bias`, whose output on random inputs equals `F.linear(x, W, b)` for its
weight read either way round ([out, in] or [in, out]), is replaced by an `nn.Linear` holding the same
numbers. Modules of torch's own layer types are left alone (they are what quantizers already know), and
so is a weight tied to another module (replacing it would untie them).

A weight need not belong to a layer at all: XLNet's attention keeps `q`, `k`, `v`, `o` as [d_model, heads,
head_dim] parameters and contracts them with `einsum("ibh,hnd->ibnd", x, q)`; Funnel's relative attention, custom
token mixers and `x @ self.weight` forwards do the same with `einsum`, `matmul` or `mm`. No PT2E quantizer has a
pattern for those ops, so those weights stayed float in an "int8" artifact (XLNet's TFLite int8: 44 % of its
weights). `weight_contractions_as_linear` rewrites, in an exported graph before a quantizer annotates it, every
contraction of one activation with one learned weight (an `nn.Parameter`, read through layout ops only) that is a
linear map of the activation: the activation's contracted dims flattened last, `aten.linear` with the weight laid
out [out, in] as a new parameter, the weight's free dims unflattened and permuted where the op put them. Batch
dims on the weight (a batched matmul), diagonals and a dim summed alone are not linear maps and stay as they are.

Recurrent layers hide their weights the same way: `aten.lstm` / `aten.gru` / `aten.rnn_*` take them as a flat
list no quantizer reads, so an int8 file kept every recurrent weight float (timm's Sequencer2D: 59 % of its weights
int8). `with_recurrent_layers_unrolled` decomposes them in an exported program, with PyTorch's own decompositions,
into the steps' `aten.linear` ops and gate arithmetic, at the program's static sequence length (up to
MAX_UNROLLED_STEPS steps: beyond, conversion time and int8 state error grow with the length).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

#: PyTorch's recurrent layer ops (`aten.<kind>.input`; `_cell` for one step), for every module that finds them.
RECURRENT_KINDS = ("lstm", "gru", "rnn_tanh", "rnn_relu")


def _linear_equivalent(module: "torch.nn.Module") -> "torch.nn.Linear | None":
    """An nn.Linear computing what `module` computes, or None where it is not a linear layer."""
    import torch

    params = dict(module.named_parameters(recurse=False))
    weight, bias = params.get("weight"), params.get("bias")
    if (type(module).__module__.startswith("torch.") or set(params) - {"weight", "bias"} or weight is None
            or weight.dim() != 2 or not weight.dtype.is_floating_point or any(True for _ in module.children())
            or (bias is not None and (bias.dim() != 1 or bias.dtype != weight.dtype))):
        return None
    generator = torch.Generator().manual_seed(0)
    for matrix in (weight, weight.t()):  # [out, in] as nn.Linear, or [in, out] as Conv1D
        out_features, in_features = matrix.shape
        if bias is not None and bias.shape[0] != out_features:
            continue
        x = torch.randn(2, 3, in_features, generator=generator, dtype=weight.dtype)
        try:
            with torch.no_grad():
                got = module(x)
        except Exception:  # noqa: BLE001 - not this way round (a width it refuses), or not one tensor in at all
            continue
        expected = torch.nn.functional.linear(x, matrix, bias)
        if isinstance(got, torch.Tensor) and got.shape == expected.shape and torch.allclose(got, expected, rtol=1e-4, atol=1e-5):
            linear = torch.nn.Linear(in_features, out_features, bias=bias is not None, dtype=weight.dtype)
            with torch.no_grad():
                linear.weight.copy_(matrix)
                if bias is not None:
                    linear.bias.copy_(bias)
            return linear.train(module.training)
    return None


def as_linear(root: "torch.nn.Module") -> list[str]:
    """Replace (in place) every linear layer in disguise under `root` by an equivalent nn.Linear at the
    same path; returns the paths replaced. A GraphModule (an exported or converted program) is left as is."""
    import torch

    if isinstance(root, torch.fx.GraphModule):
        return []
    owners: dict[int, int] = {}
    for module in root.modules():
        for param in module.parameters(recurse=False):
            owners[id(param)] = owners.get(id(param), 0) + 1
    replaced = []
    for path, module in list(root.named_modules()):
        weight = getattr(module, "weight", None)
        if not path or not isinstance(weight, torch.nn.Parameter) or owners.get(id(weight), 0) > 1:
            continue
        linear = _linear_equivalent(module)
        if linear is None:
            continue
        parent_path, _, name = path.rpartition(".")
        setattr(root.get_submodule(parent_path), name, linear)
        replaced.append(path)
    return replaced


# Ops that only lay a tensor out again: a weight read through a chain of them is still that weight.
_LAYOUT_OPS = frozenset(f"aten.{op}" for op in (
    "permute.default", "transpose.int", "t.default", "view.default", "reshape.default", "_unsafe_view.default",
    "unsqueeze.default", "squeeze.dim", "squeeze.dims", "contiguous.default", "clone.default", "detach.default",
    "alias.default"))

# FX nodes are typed Any below: their `args` and `target` are unions no narrowing here would make clearer.


def _weight_value(gm: "torch.fx.GraphModule", node: Any) -> "torch.Tensor | None":
    """The value of `node` where it is a learned weight (an nn.Parameter, floating point) read through layout
    ops only, else None."""
    import torch

    if not isinstance(node, torch.fx.Node):
        return None
    if node.op == "get_attr":
        try:
            value = gm.get_parameter(str(node.target)).detach()
        except AttributeError:  # a buffer or a plain tensor: not learned
            return None
        return value if value.dtype.is_floating_point else None
    target: Any = node.target
    if node.op != "call_function" or str(target) not in _LAYOUT_OPS:
        return None
    source = _weight_value(gm, node.args[0])
    if source is None or any(isinstance(a, torch.fx.Node) for a in [*node.args[1:], *node.kwargs.values()]):
        return None
    return target(source, *node.args[1:], **node.kwargs)


def _contraction(node: Any) -> tuple[str, Any, Any] | None:
    """(equation, left, right) of a two-operand einsum, mm or matmul, with a letter for every dim."""
    import torch

    aten = torch.ops.aten
    if node.target == aten.einsum.default and len(node.args[1]) == 2 and "..." not in node.args[0]:
        equation = str(node.args[0]).replace(" ", "")
        if "->" not in equation:  # implicit output: the letters used once, in alphabetical order
            letters = equation.replace(",", "")
            equation += "->" + "".join(sorted(c for c in set(letters) if letters.count(c) == 1))
        return equation, node.args[1][0], node.args[1][1]
    if node.target in (aten.mm.default, aten.matmul.default) and len(node.args) == 2:
        ranks = [len(a.meta["val"].shape) if isinstance(a, torch.fx.Node) and "val" in a.meta else 0 for a in node.args]
        if min(ranks) < 2 or (ranks[0] > 2 and ranks[1] > 2):  # a vector, or batch dims on both sides
            return None
        batch = "abcdefgh"[:max(ranks) - 2]
        lhs = (batch if ranks[0] > 2 else "") + "mk"
        rhs = (batch if ranks[1] > 2 else "") + "kn"
        return f"{lhs},{rhs}->{batch}mn", node.args[0], node.args[1]
    return None


def _as_linear_map(equation: str, weight_left: bool) -> tuple[str, str, str, str] | None:
    """(x, w, out, contracted) index strings where the contraction is the activation `x` mapped linearly by the
    weight `w`, else None."""
    operands, out = equation.split("->")
    left, right = operands.split(",")
    w, x = (left, right) if weight_left else (right, left)
    if any(len(set(s)) != len(s) for s in (w, x, out)):
        return None  # a diagonal
    contracted = "".join(c for c in x if c in w)
    free, batch = set(w) - set(x), set(x) - set(w)
    if not contracted or not free or set(contracted) & set(out) or set(out) != free | batch:
        return None  # an outer product, a weight dim shared with the output (batched), or a dim summed alone
    return x, w, out, contracted


def weight_contractions_as_linear(gm: "torch.fx.GraphModule") -> list[str]:
    """Rewrite (in place) every einsum / mm / matmul of an activation with a learned weight that is a linear map
    into `aten.linear` with the weight as a new [out, in] parameter (see the module docstring); returns the
    weights so rewritten. Needs the traced values (`meta["val"]`) of an exported graph at static sizes."""
    import torch
    from torch._guards import detect_fake_mode

    fake_mode = detect_fake_mode([n.meta["val"] for n in gm.graph.nodes if "val" in n.meta])
    rewritten: list[str] = []
    for node in list(gm.graph.nodes):
        found = _contraction(node) if node.op == "call_function" and fake_mode is not None else None
        if found is None:
            continue
        equation, left, right = found
        for weight_left, weight_node, activation in ((True, left, right), (False, right, left)):
            weight = _weight_value(gm, weight_node)
            spec = _as_linear_map(equation, weight_left) if weight is not None else None
            shape = activation.meta["val"].shape if isinstance(activation, torch.fx.Node) \
                and "val" in activation.meta else None
            if weight is not None and spec is not None and shape is not None and len(shape) == len(spec[0]) \
                    and weight.dim() == len(spec[1]) and all(isinstance(d, int) for d in shape):
                rewritten.append(_as_linear(gm, node, activation, weight_node, weight, spec, fake_mode))
                break
    if rewritten:
        gm.recompile()
    return rewritten


def _as_linear(gm: "torch.fx.GraphModule", node: Any, activation: Any, weight_node: Any, weight: "torch.Tensor",
               spec: tuple[str, str, str, str], fake_mode: Any) -> str:
    """Replace the contraction `node` by permute → reshape → linear → reshape → permute, the weight laid out
    [out, in] as a parameter beside the original (under its name where nothing else reads the original); returns
    the weight's name."""
    import math

    import torch

    aten = torch.ops.aten
    x, w, out, contracted = spec
    shape = [int(d) for d in activation.meta["val"].shape]
    batch, free = [c for c in x if c not in w], [c for c in w if c not in x]
    sizes = {c: int(weight.shape[i]) for i, c in enumerate(w)}
    matrix = weight.permute([w.index(c) for c in free + list(contracted)]).reshape(
        math.prod(sizes[c] for c in free), math.prod(sizes[c] for c in contracted))
    root = weight_node
    while root.op == "call_function":  # the get_attr the layout ops read
        root = root.args[0]
    owner_path, _, original = str(root.target).rpartition(".")
    owner = gm.get_submodule(owner_path)
    attr = original + "_linear"
    while hasattr(owner, attr):
        attr += "_"
    owner.register_parameter(attr, torch.nn.Parameter(matrix.contiguous().clone(), requires_grad=False))

    def emit(target: Any, *args: Any) -> Any:
        new = gm.graph.call_function(target, args)
        with fake_mode:
            new.meta["val"] = target(*[a.meta["val"] if isinstance(a, torch.fx.Node) else a for a in args])
        for key in ("nn_module_stack", "stack_trace", "source_fn_stack", "from_node"):
            if key in node.meta:
                new.meta[key] = node.meta[key]
        return new

    with gm.graph.inserting_before(node):
        value = activation
        order = [x.index(c) for c in batch + list(contracted)]
        if order != list(range(len(x))):
            value = emit(aten.permute.default, value, order)
        value = emit(aten.reshape.default, value, [shape[x.index(c)] for c in batch]
                     + [math.prod(sizes[c] for c in contracted)])
        matrix_node = gm.graph.get_attr(f"{owner_path}.{attr}" if owner_path else attr)
        matrix_node.meta["val"] = fake_mode.from_tensor(getattr(owner, attr))
        value = emit(aten.linear.default, value, matrix_node)
        value = emit(aten.reshape.default, value, [shape[x.index(c)] for c in batch] + [sizes[c] for c in free])
        order = [(batch + free).index(c) for c in out]
        if order != list(range(len(out))):
            value = emit(aten.permute.default, value, order)
    node.replace_all_uses_with(value)
    gm.graph.erase_node(node)
    if _drop_unused_weight(gm, weight_node):  # the laid-out weight takes the weight's name
        owner.register_parameter(original, owner._parameters.pop(attr))
        matrix_node.target = root.target
    return str(root.target)


def _drop_unused_weight(gm: "torch.fx.GraphModule", node: Any) -> bool:
    """Erase the weight's read (its layout ops, its get_attr) where nothing else uses it, and the parameter where
    no other read of it remains (so no float copy ships beside the int8 one); whether the parameter went."""
    while node.op == "call_function" and not node.users:
        source = node.args[0]
        gm.graph.erase_node(node)
        node = source
    target = str(node.target)
    if not node.users:
        gm.graph.erase_node(node)
    if any(n.op == "get_attr" and n.target == target for n in gm.graph.nodes):
        return False
    owner, _, attr = target.rpartition(".")
    delattr(gm.get_submodule(owner), attr)
    return True


#: The longest sequence a recurrent layer is unrolled over. The unrolled program grows with the length (Resemblyzer's
#: 3-layer LSTM over 160 frames: three minutes a conversion, against seconds) and an int8 state's error accumulates
#: over the steps (the same LSTM unrolled missed its range-error tolerance, 0.195 > 0.1): a longer layer keeps its
#: float weights, and the artifact check's int8 share says so.
MAX_UNROLLED_STEPS = 128


def with_recurrent_layers_unrolled(program: "torch.export.ExportedProgram", max_cell_steps: int | None = None,
                                  max_steps: int = MAX_UNROLLED_STEPS) -> "tuple[torch.export.ExportedProgram, int]":
    """The exported program with its recurrent layers (and cells) decomposed by PyTorch's own tables into linears
    and gate arithmetic, and how many layers were; the program itself where it has none, where a layer runs
    over more than `max_steps` steps or takes a packed sequence, or where the unrolled cells (steps x stacked
    layers x directions, summed over the program's layers) would number more than `max_cell_steps`: a converter
    whose cost grows with the unrolled graph sets it. A step's options may lower either bound (a build-cost
    choice: a longer layer stays whole, its weights float, and the int8 share counts them)."""
    import torch
    from torch._decomp import get_decompositions

    aten = torch.ops.aten
    layers = [getattr(aten, kind).input for kind in RECURRENT_KINDS]
    packed = [getattr(aten, kind).data for kind in RECURRENT_KINDS]
    cells = recurrent_cell_decompositions()
    found = [n for n in program.graph.nodes if n.op == "call_function" and n.target in (*layers, *packed, *cells)]
    unrolled = [n for n in found if n.target not in cells]
    if not found or any(n.target in packed or _steps(n) > max_steps for n in unrolled):
        return program, 0
    if max_cell_steps is not None and sum(map(_cell_steps, unrolled)) > max_cell_steps:
        return program, 0
    return program.run_decompositions({**cells, **get_decompositions(layers)}), len(found)


def recurrent_cell_decompositions() -> dict[Any, Any]:
    """PyTorch's decompositions of the recurrent cells (lstm_cell, gru_cell, rnn_*_cell) into linears and pointwise
    ops, as `ExportedProgram.run_decompositions` takes them."""
    import torch
    from torch._export.utils import _get_decomp_for_cia

    aten = torch.ops.aten
    cells = (aten.lstm_cell.default, aten.gru_cell.default, aten.rnn_tanh_cell.default, aten.rnn_relu_cell.default)
    return {op: _get_decomp_for_cia(op) for op in cells}


def _cell_steps(node: Any) -> int:
    """Cells a recurrent layer's node unrolls into: its steps x stacked layers x directions (arguments 4 and 7)."""
    return _steps(node) * int(node.args[4]) * (2 if bool(node.args[7]) else 1)


def _steps(node: Any) -> int:
    """The sequence length of a recurrent layer's node (input, hx, params, has_biases, num_layers, dropout, train,
    bidirectional, batch_first): its input's time axis, unbatched or not."""
    shape = node.args[0].meta["val"].shape
    batch_first = len(node.args) > 8 and bool(node.args[8])
    return int(shape[1] if batch_first and len(shape) == 3 else shape[0])
