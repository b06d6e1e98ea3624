"""The recurrent family (buildsys/rewrites/recurrent.py): nn.RNN / GRU / LSTM (layers, bidirectional, batch_first,
given initial states, bias or not, proj_size) and their cells, unrolled, compared with torch's own kernels in
float32 and float64, and no recurrent op left in any graph."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from buildsys import rewrites
from buildsys.rewrites import RewriteNotApplicable
from tests.helpers.rewrite_checks import assert_equivalent, graph_ops, randn


class Outputs(nn.Module):
    """A recurrent module run on `x` (and a given initial state), every output and final state in one tensor."""

    def __init__(self, layer: nn.Module, state: object = None) -> None:
        super().__init__()
        self.layer, self.state = layer, state

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.layer(x, self.state) if self.state is not None else self.layer(x)
        parts = out if isinstance(out, tuple) else (out,)
        flat = [t for p in parts for t in (p if isinstance(p, tuple) else (p,))]
        return torch.cat([t.flatten() for t in flat])


def _check(layer: nn.Module, x: torch.Tensor, state: object = None, graphs: bool = False) -> None:
    module = Outputs(layer.eval(), state)
    after = rewrites.apply(module, ["recurrent"])
    assert_equivalent(after(x), module(x))
    if graphs:
        removed = {o.split("::")[1] for o in rewrites.get("recurrent").removes}
        before = graph_ops(module, (x,))  # a cell is traced as its gates; torch.export keeps gru_cell
        assert removed & (before["traced"] | before["exported"]), "the original has no recurrent op: proves nothing"
        found = graph_ops(after, (x,))
        for kind in ("traced", "exported", "decomposed"):
            assert not removed & found[kind], f"{kind}: {removed & found[kind]}"


LAYOUTS = [  # (layers, bidirectional, batch_first, bias)
    (1, False, False, True), (2, True, True, True), (3, False, True, False), (2, True, False, False)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("layout", LAYOUTS, ids=lambda c: f"L{c[0]}{'-bi' if c[1] else ''}{'-bf' if c[2] else ''}"
                         f"{'' if c[3] else '-nobias'}")
@pytest.mark.parametrize("kind", ["RNN", "RNN-relu", "GRU", "LSTM"])
def test_layers_match_torch(kind: str, layout: tuple[int, bool, bool, bool], dtype: torch.dtype) -> None:
    layers, bidirectional, batch_first, bias = layout
    torch.manual_seed(0)
    extra = {"nonlinearity": "relu"} if kind == "RNN-relu" else {}
    layer = getattr(nn, kind.split("-")[0])(5, 7, num_layers=layers, bidirectional=bidirectional,
                                            batch_first=batch_first, bias=bias, **extra).to(dtype)
    directions = 2 if bidirectional else 1
    for batch, steps in [(3, 6), (1, 11)]:
        x = randn(*((batch, steps, 5) if batch_first else (steps, batch, 5)), seed=batch, dtype=dtype)
        _check(layer, x)
        h0 = randn(layers * directions, batch, 7, seed=9, dtype=dtype)
        _check(layer, x, (h0, randn(layers * directions, batch, 7, seed=8, dtype=dtype)) if kind == "LSTM" else h0)
    _check(layer, randn(4, 5, seed=3, dtype=dtype))  # unbatched


def test_lstm_with_projections() -> None:
    torch.manual_seed(0)
    lstm = nn.LSTM(6, 8, num_layers=2, bidirectional=True, proj_size=3, batch_first=True)
    x = randn(2, 5, 6)
    _check(lstm, x)
    _check(lstm, x, (randn(4, 2, 3, seed=1), randn(4, 2, 8, seed=2)))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("cell", ["RNNCell", "GRUCell", "LSTMCell"])
def test_cells_match_torch(cell: str, dtype: torch.dtype) -> None:
    torch.manual_seed(0)
    for bias in (True, False):
        layer = getattr(nn, cell)(5, 7, bias=bias).to(dtype)
        for batch in (1, 4):
            x = randn(batch, 5, seed=batch, dtype=dtype)
            _check(layer, x)
            h = randn(batch, 7, seed=5, dtype=dtype)
            _check(layer, x, (h, randn(batch, 7, seed=6, dtype=dtype)) if cell == "LSTMCell" else h)
        _check(layer, randn(5, dtype=dtype))  # unbatched


@pytest.mark.parametrize("kind", ["RNN", "GRU", "LSTM", "GRUCell", "LSTMCell"])
def test_no_recurrent_op_is_left_in_any_graph(kind: str) -> None:
    torch.manual_seed(0)
    if kind.endswith("Cell"):
        _check(getattr(nn, kind)(5, 7), randn(3, 5), graphs=True)
    else:
        _check(getattr(nn, kind)(5, 7, num_layers=2, bidirectional=True, batch_first=True), randn(2, 6, 5), graphs=True)


def test_what_the_family_does_not_implement_is_refused_not_computed() -> None:
    gru = nn.GRU(3, 4)
    packed = nn.utils.rnn.pack_padded_sequence(randn(5, 2, 3), torch.tensor([5, 3]))

    class Packed(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return gru(packed)[1] + x

    with pytest.raises(RewriteNotApplicable, match="rewrite 'recurrent' does not apply to torch.gru: a PackedSequence"):
        rewrites.apply(Packed(), ["recurrent"])(randn(1, 2, 4))
    dropout = nn.LSTM(3, 4, num_layers=2, dropout=0.5).train()
    with pytest.raises(RewriteNotApplicable, match=r"dropout=0.5 in training mode \(random\)"):
        rewrites.apply(Outputs(dropout), ["recurrent"])(randn(5, 2, 3))
    with pytest.raises(RewriteNotApplicable, match="dimension 0 is dynamic"):
        steps = torch.export.Dim("steps", min=2, max=64)
        torch.export.export(rewrites.apply(Outputs(nn.GRU(3, 4)), ["recurrent"]), (randn(6, 2, 3),),
                            dynamic_shapes=({0: steps},), strict=False)
