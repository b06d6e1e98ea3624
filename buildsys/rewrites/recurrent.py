"""The recurrent family: nn.RNN / nn.GRU / nn.LSTM and their Cell versions unrolled over a static sequence length.

Each of the T steps is two linears (x_t·W_ihᵀ + b_ih, h·W_hhᵀ + b_hh) on 2-D [B, ·] tensors and the gate
arithmetic (gates cut by constant slices), written out with the gate layout and
formulas of torch's own kernels (GRU: r, z, n with n = tanh(W_in x + b_in + r ⊙ (W_hn h + b_hn)); LSTM:
i, f, g, o and the projection W_hr of proj_size). Handled: every layer count, bidirectional
(the backward direction runs from the last step), batch_first, given or zero initial states, biases or
none, proj_size; the cells with and without a batch dim. What torch's modules pass the ATen functions
(`torch.gru`, `torch.lstm_cell`, ...) is what is replaced, so a model's own nn.GRU is unrolled as is.
Refused (RewriteNotApplicable): a PackedSequence (ragged lengths), dropout between layers in training
mode (random), a dynamic sequence length (the unrolled graph has T steps).

Why a rewrite and not a decomposition: PyTorch does decompose rnn_tanh / gru / lstm (into the same
unrolled steps) but only inside torch.export's run_decompositions: the TorchScript trace that the legacy
ONNX exporter and Core ML's trace frontend read records `aten::gru`, which the ONNX exporter writes as an
ONNX GRU that onnx2tf turns into a TensorFlow while loop TFLite refuses (`tf.TensorListReserve`). The
rewrite unrolls where the module is loaded, for every route. Equivalence:
tests/rewrites/test_rewrite_families_recurrent.py.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Sequence

from buildsys.rewrites.base import HandlerTable, Rewrite, RewriteNotApplicable

if TYPE_CHECKING:
    import torch

_KINDS = ("rnn_tanh", "rnn_relu", "gru", "lstm")


def _gates(x: torch.Tensor, count: int) -> list[torch.Tensor]:
    """x's last dim cut into `count` equal gates by constant slices (a chunk traced with a dynamic batch is
    exported as a Shape / Gather / Div per step)."""
    from buildsys.rewrites.mechanism import static_size

    size = static_size(x, -1, "recurrent", "a gate split") // count
    return [x[..., g * size:(g + 1) * size] for g in range(count)]


def _cell(kind: str, x_proj: torch.Tensor, state: tuple[torch.Tensor, ...], w_hh: torch.Tensor,
          b_hh: torch.Tensor | None, w_hr: torch.Tensor | None) -> tuple[torch.Tensor, ...]:
    """One step: `x_proj` = x·W_ihᵀ + b_ih; `state` = (h,) or (h, c) for an LSTM; the new state."""
    import torch
    import torch.nn.functional as F

    h = state[0]
    h_proj = F.linear(h, w_hh, b_hh)
    if kind == "gru":
        x_r, x_z, x_n = _gates(x_proj, 3)
        h_r, h_z, h_n = _gates(h_proj, 3)
        reset, update = torch.sigmoid(x_r + h_r), torch.sigmoid(x_z + h_z)
        candidate = torch.tanh(x_n + reset * h_n)
        return (candidate + update * (h - candidate),)  # (1 − z)·n + z·h, as torch computes it
    if kind == "lstm":
        i, f, g, o = _gates(x_proj + h_proj, 4)
        c = torch.sigmoid(f) * state[1] + torch.sigmoid(i) * torch.tanh(g)
        h = torch.sigmoid(o) * torch.tanh(c)
        return (h if w_hr is None else F.linear(h, w_hr), c)
    total = x_proj + h_proj
    return (torch.tanh(total) if kind == "rnn_tanh" else torch.relu(total),)


def _direction(kind: str, inputs: Sequence[torch.Tensor], state: tuple[torch.Tensor, ...],
               weights: Sequence[torch.Tensor | None], reverse: bool) -> tuple[list[torch.Tensor], tuple[torch.Tensor, ...]]:
    """One direction of one layer over the steps' inputs ([B, F] each): the outputs in time order and the last
    state. Every step is 2-D (its own input projection too): converters that guess layouts for 3-D tensors
    (onnx2tf) meet none in the recurrence."""
    import torch.nn.functional as F

    w_ih, b_ih, w_hh, b_hh, w_hr = weights
    assert w_ih is not None and w_hh is not None
    outputs: list[torch.Tensor] = []
    for x in (reversed(inputs) if reverse else inputs):
        state = _cell(kind, F.linear(x, w_ih, b_ih), state, w_hh, b_hh, w_hr)
        outputs.append(state[0])
    return (outputs[::-1] if reverse else outputs), state


def _layout(params: Sequence[torch.Tensor], has_biases: bool, groups: int, op: str) -> list[list[torch.Tensor | None]]:
    """The flat weight list split per layer and direction into [w_ih, b_ih, w_hh, b_hh, w_hr]."""
    per = len(params) // groups if groups else 0
    if per * groups != len(params) or per not in ((4, 5) if has_biases else (2, 3)):
        raise RewriteNotApplicable("recurrent", op, f"{len(params)} weights for {groups} layer-directions")
    out = []
    for g in range(groups):
        w = list(params[g * per:(g + 1) * per])
        w_ih, w_hh = w[0], w[1]
        b_ih, b_hh = (w[2], w[3]) if has_biases else (None, None)
        w_hr = w[-1] if per in (3, 5) else None
        out.append([w_ih, b_ih, w_hh, b_hh, w_hr])
    return out


def _unrolled(kind: str) -> Any:
    """torch.<kind>(input, hx, params, has_biases, num_layers, dropout, train, bidirectional, batch_first)."""
    def run(input: torch.Tensor, hx: Any, params: Sequence[torch.Tensor], has_biases: bool, num_layers: int,
            dropout: float, train: bool, bidirectional: bool, batch_first: bool = False) -> tuple[torch.Tensor, ...]:
        import torch

        from buildsys.rewrites.mechanism import static_size

        op = f"torch.{kind}"
        if not isinstance(params, (list, tuple)):  # the PackedSequence overload: (data, batch_sizes, hx, params, ...)
            raise RewriteNotApplicable("recurrent", op, "a PackedSequence (sequences of different lengths)")
        if train and dropout > 0 and num_layers > 1:
            raise RewriteNotApplicable("recurrent", op, f"dropout={dropout} in training mode (random)")
        length = static_size(input, 1 if batch_first else 0, "recurrent", op)
        steps = [input[:, t] if batch_first else input[t] for t in range(length)]          # [B, F] each
        directions = 2 if bidirectional else 1
        weights = _layout(params, has_biases, num_layers * directions, op)
        states = tuple(hx) if kind == "lstm" else (hx,)                                 # each [L·D, B, H]
        last: list[list[torch.Tensor]] = [[] for _ in states]
        for layer in range(num_layers):
            outputs = []
            for direction in range(directions):
                g = layer * directions + direction
                out, state = _direction(kind, steps, tuple(s[g] for s in states), weights[g], reverse=direction == 1)
                outputs.append(out)
                for kept, value in zip(last, state):
                    kept.append(value)
            steps = outputs[0] if directions == 1 else [torch.cat(pair, dim=-1) for pair in zip(*outputs)]
        output = torch.stack(steps, dim=1 if batch_first else 0)
        return (output, *(torch.stack(kept, dim=0) for kept in last))
    return run


def _cell_function(kind: str) -> Any:
    """torch.<kind>_cell(input, hx, w_ih, w_hh, b_ih=None, b_hh=None): one step (lstm: hx = (h, c))."""
    def step(input: torch.Tensor, hx: Any, w_ih: torch.Tensor, w_hh: torch.Tensor, b_ih: torch.Tensor | None = None,
             b_hh: torch.Tensor | None = None) -> Any:
        import torch.nn.functional as F

        state = tuple(hx) if kind == "lstm" else (hx,)
        out = _cell(kind, F.linear(input, w_ih, b_ih), state, w_hh, b_hh, None)
        return out if kind == "lstm" else out[0]
    return step


_FUNCTIONS: dict[str, Any] = {**{kind: _unrolled(kind) for kind in _KINDS},
                              **{f"{kind}_cell": _cell_function(kind) for kind in _KINDS}}


def _handlers() -> HandlerTable:
    import torch

    return {getattr(torch, name): impl for name, impl in _FUNCTIONS.items()}


REWRITES = (
    Rewrite(
        name="recurrent",
        version=1,
        # ... and what the cells are traced as (unsafe_chunk: coremltools' trace frontend has none), the fused
        # kernels eager CPU and GPU runs dispatch
        removes=(*(f"aten::{k}" for k in _KINDS), *(f"aten::{k}_cell" for k in _KINDS), "aten::unsafe_chunk",
                 "aten::unsafe_split", "aten::mkldnn_rnn_layer", "aten::_thnn_fused_lstm_cell",
                 "aten::_thnn_fused_gru_cell"),
        # neither XNNPACK's nor litert-torch's PT2E quantizer has a quantized LSTM/GRU: unrolled, their gates are
        # linear layers both quantize (a 2-layer LSTM through litert-torch's int8: 1.4 % of weights int8, then 100 %)
        quantizable=(*(f"aten::{k}" for k in _KINDS), *(f"aten::{k}_cell" for k in _KINDS)),
        description="nn.RNN / GRU / LSTM (layers, bidirectional, batch_first, initial states, proj_size) and "
                    "their cells unrolled over the static sequence length into linear layers and gate arithmetic",
        handlers=_handlers,
        signs=(r"TensorList\w*", r"\bRNN\b", r"\bGRU\b", r"\bLSTM\b", r"\bTensorArray\w*"),
    ),
)
