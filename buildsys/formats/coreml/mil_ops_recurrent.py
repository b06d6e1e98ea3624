"""Reference implementations of MIL's recurrent and control-flow ops in NumPy: lstm, rnn, while_loop, cond, scatter.

coremltools converts nn.LSTM to `lstm` (one op per layer and direction pair) and nn.GRU to a
`while_loop` over linear ops (Core ML's `gru` differs from PyTorch's), so both PyTorch recurrent
layers run here. Activations are the ones whose definition is parameter-free; an LSTM with cell
clipping or a hard-sigmoid / scaled-tanh activation is refused (not run), never guessed.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

from buildsys.formats.coreml.mil_registry import Args, const_value, op, refuse_other

if TYPE_CHECKING:
    import numpy as np
    from coremltools.converters.mil.mil import Operation

    Array = np.ndarray

_ACTIVATIONS = ("sigmoid", "tanh", "relu", "linear")


def _activation(name: str) -> Callable[["Array"], "Array"]:
    import numpy as np

    from buildsys.formats.coreml.mil_ops import sigmoid_of

    table: dict[str, Callable[[Array], Array]] = {
        "sigmoid": sigmoid_of, "tanh": np.tanh, "relu": lambda x: np.maximum(x, 0).astype(x.dtype), "linear": lambda x: x}
    return table[name]


def _recurrent_variant(operation: "Operation") -> str | None:
    for key in ("recurrent_activation", "cell_activation", "activation"):
        name = const_value(operation, key)
        if name is not None and name not in _ACTIVATIONS:
            return f"{operation.op_type} {key} {name}"
    if operation.op_type == "lstm" and const_value(operation, "clip") is not None:
        return "lstm with cell clipping"
    return None


def _lstm_direction(x: "Array", h: "Array", c: "Array", w_ih: "Array", w_hh: "Array", bias: "Array",
                    peephole: "Array", acts: tuple[Callable[["Array"], "Array"], ...],
                    reverse: bool) -> tuple["Array", "Array", "Array"]:
    """One direction over the whole sequence: (every step's h [s, b, H], final h, final c).
    Gates are stacked [input, forget, output, cell] (MIL's order); peepholes [input, forget, output]."""
    import numpy as np

    rec, cell_act, act = acts
    hidden = h.shape[-1]
    xw = np.matmul(x, w_ih.T) + bias  # the input projection of every step at once
    steps = range(x.shape[0] - 1, -1, -1) if reverse else range(x.shape[0])
    out = np.zeros((x.shape[0], x.shape[1], hidden), np.float32)
    p_i, p_f, p_o = peephole[:hidden], peephole[hidden:2 * hidden], peephole[2 * hidden:]
    for t in steps:
        gates = xw[t] + np.matmul(h, w_hh.T)
        i = rec(gates[:, :hidden] + p_i * c)
        f = rec(gates[:, hidden:2 * hidden] + p_f * c)
        z = cell_act(gates[:, 3 * hidden:])
        c = f * c + i * z
        o = rec(gates[:, 2 * hidden:3 * hidden] + p_o * c)
        h = o * act(c)
        out[t] = h
    return out, h, c


@op("lstm", refuse=_recurrent_variant)
def lstm(a: Args) -> tuple["Array", "Array", "Array"]:
    import numpy as np

    x = a.tensor("x")
    h0, c0 = a.tensor("initial_h"), a.tensor("initial_c")
    w_ih, w_hh = a.tensor("weight_ih"), a.tensor("weight_hh")
    hidden = w_hh.shape[1]
    zeros4, zeros3 = np.zeros(4 * hidden, np.float32), np.zeros(3 * hidden, np.float32)
    acts = (_activation(a.text("recurrent_activation", "sigmoid")), _activation(a.text("cell_activation", "tanh")),
            _activation(a.text("activation", "tanh")))
    direction = a.text("direction", "forward")
    bias = a.optional("bias")
    peephole = a.optional("peephole")
    first = _lstm_direction(x, h0[:, :hidden], c0[:, :hidden], w_ih, w_hh, zeros4 if bias is None else bias,
                            zeros3 if peephole is None else peephole, acts, reverse=direction == "reverse")
    if direction != "bidirectional":
        seq, h, c = first
        last = seq[-1:] if direction == "forward" else seq[:1]
    else:
        back_bias, back_peep = a.optional("bias_back"), a.optional("peephole_back")
        second = _lstm_direction(x, h0[:, hidden:], c0[:, hidden:], a.tensor("weight_ih_back"),
                                 a.tensor("weight_hh_back"), zeros4 if back_bias is None else back_bias,
                                 zeros3 if back_peep is None else back_peep, acts, reverse=True)
        seq = np.concatenate([first[0], second[0]], axis=-1)
        h, c = np.concatenate([first[1], second[1]], -1), np.concatenate([first[2], second[2]], -1)
        last = h[None]
    return (seq if a.flag("output_sequence") else last), h, c


@op("rnn", refuse=_recurrent_variant)
def rnn(a: Args) -> tuple["Array", "Array"]:
    import numpy as np

    x, h = a.tensor("x"), a.tensor("initial_h")
    w_ih, w_hh = a.tensor("weight_ih"), a.tensor("weight_hh")
    bias = a.optional("bias")
    act = _activation(a.text("activation", "tanh"))
    xw = np.matmul(x, w_ih.T) + (0 if bias is None else bias)
    reverse = a.text("direction", "forward") == "reverse"
    out = np.zeros((x.shape[0], x.shape[1], w_hh.shape[0]), np.float32)
    for t in (range(x.shape[0] - 1, -1, -1) if reverse else range(x.shape[0])):
        h = act(xw[t] + np.matmul(h, w_hh.T))
        out[t] = h
    last = out[:1] if reverse else out[-1:]
    return (out if a.flag("output_sequence") else last), h


@op("while_loop")
def while_loop(a: Args) -> tuple["Array", ...]:
    """Runs the body block while the condition block says so; the loop variables are the result."""
    cond_block, body_block = a.op.blocks
    values = list(a.values["loop_vars"] or ())  # type: ignore[arg-type]
    limit = 1 << 20  # a loop that never ends is a bug in the program, not a result
    for _ in range(limit):
        if not bool(a.run_block(cond_block, values)[0]):
            return tuple(values)
        values = a.run_block(body_block, values)
    raise RuntimeError(f"while_loop '{a.op.name}' ran {limit} iterations without its condition turning false")


@op("cond")
def cond(a: Args) -> tuple["Array", ...]:
    true_block, false_block = a.op.blocks
    return tuple(a.run_block(true_block if bool(a.tensor("pred")) else false_block, []))  # type: ignore[arg-type]


def _scatter_update(x: "Array", index: tuple["Array | slice", ...], updates: "Array", mode: str) -> None:
    import numpy as np

    if mode == "update":
        x[index] = updates
        return
    fn = {"add": np.add, "sub": np.subtract, "mul": np.multiply, "div": np.divide, "max": np.maximum,
          "min": np.minimum}[mode]
    # numpy's stub types ufunc.at's indices as integer arrays only; numpy takes slices among them too
    fn.at(x, index, updates)  # type: ignore[arg-type]


_scatter_mode = refuse_other("mode", "add", ("update", "add", "sub", "mul", "div", "max", "min"))


@op("scatter", refuse=_scatter_mode)
def scatter(a: Args) -> "Array":
    """data[..., indices, ...] (along axis) combined with updates; negative indices count from the end."""
    import numpy as np

    x = a.tensor("data").copy()
    indices = a.tensor("indices").astype(np.int64).reshape(-1)
    axis = a.integer("axis", 0) % x.ndim
    indices = np.where(indices < 0, indices + x.shape[axis], indices)
    updates = a.tensor("updates")
    moved = np.moveaxis(x, axis, 0)  # a view: updating it updates x
    _scatter_update(moved, (indices,), np.moveaxis(updates.reshape(
        updates.shape[:axis] + (len(indices),) + x.shape[axis + 1:]), axis, 0), a.text("mode", "add"))
    return x


@op("scatter_nd", refuse=_scatter_mode)
def scatter_nd(a: Args) -> "Array":
    import numpy as np

    x = a.tensor("data").copy()
    indices = a.tensor("indices").astype(np.int64)
    _scatter_update(x, tuple(np.moveaxis(indices, -1, 0)), a.tensor("updates"), a.text("mode", "add"))
    return x
