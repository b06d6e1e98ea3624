"""FX provenance shared instead of copied (buildsys/formats/torch/provenance.py): the same chains as PyTorch
records them, pass by pass, and no NodeSource left patched after the block."""

from __future__ import annotations

from typing import Any

import pytest

torch = pytest.importorskip("torch")

from buildsys.formats.torch.provenance import shared_provenance  # noqa: E402


class Block(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv, self.norm = torch.nn.Conv2d(3, 8, 3), torch.nn.LayerNorm(6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.gelu(self.norm(self.conv(x))).softmax(-1)


def _chains(shared: bool) -> list[Any]:
    """Each node's provenance after two rounds of decomposition, graph ids left out (id() differs per run)."""

    def plain(source: Any) -> Any:
        return (source.name, source.target, source.pass_name, [a.name for a in source.action],
                [plain(s) for s in source.from_node])

    program = torch.export.export(Block().eval(), (torch.randn(1, 3, 8, 8),))
    if shared:
        with shared_provenance():
            decomposed = program.run_decompositions().run_decompositions()
    else:
        decomposed = program.run_decompositions().run_decompositions()
    return [(n.name, [plain(s) for s in n.meta.get("from_node", [])]) for n in decomposed.graph.nodes]


def test_shared_chains_are_the_chains_torch_records() -> None:
    from torch.fx.traceback import NodeSource

    before = NodeSource.__init__
    copied, shared = _chains(False), _chains(True)
    assert any(chain for _, chain in copied), "the passes recorded no provenance: the test checks nothing"
    assert shared == copied
    assert NodeSource.__init__ is before
