"""XNNPACK's pattern passes are cut only where no pattern can match (buildsys/formats/executorch/pattern_passes.py)."""

from __future__ import annotations

import importlib.util

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.skipif(importlib.util.find_spec("executorch") is None,
                                                   reason="executorch is not installed")]


def test_every_pattern_of_a_cut_pass_holds_the_op_it_is_cut_by() -> None:
    """The cut is sound only while each pattern of the installed ExecuTorch calls the required op: a match
    maps every pattern node onto a graph node of the same target."""
    from executorch.backends.xnnpack.partition.graphs import bilinear_2d, sdpa

    from buildsys.formats.executorch.pattern_passes import holds, required_ops

    patterns = {"ConvertToSDPAPass": sdpa.get_graphs(), "ConvertToUpsampleBilinear2d": list(bilinear_2d.get_graphs_dict())}
    required = {cls.__name__: op for cls, op in required_ops().items()}
    assert set(required) == set(patterns)
    for name, graphs in patterns.items():
        assert graphs and all(holds(graph, required[name]) for graph in graphs), name


def _lowered(model: object, example: tuple, cut: bool) -> tuple[bytes, list[str]]:
    import torch
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower

    from buildsys.formats.executorch.pattern_passes import pattern_passes_where_they_can_match

    program = torch.export.export(model, example)
    if cut:
        with pattern_passes_where_they_can_match():
            edge = to_edge_transform_and_lower(program, partitioner=[XnnpackPartitioner()])
    else:
        edge = to_edge_transform_and_lower(program, partitioner=[XnnpackPartitioner()])
    ops = sorted(str(n.target) for n in edge.exported_program().graph_module.graph.nodes if n.op == "call_function")
    return bytes(edge.to_executorch().buffer), ops


def test_a_program_without_the_ops_lowers_to_the_same_bytes_and_one_with_them_still_fuses() -> None:
    import torch

    torch.manual_seed(0)
    plain = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.Linear(144, 5))
    example = (torch.randn(1, 3, 8, 8),)
    assert _lowered(plain.eval(), example, cut=True) == _lowered(plain.eval(), example, cut=False)

    class Attention(torch.nn.Module):
        def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
            return torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask)

    q = torch.randn(1, 2, 4, 8)
    example = (q, torch.randn(1, 2, 4, 8), torch.randn(1, 2, 4, 8), torch.zeros(4, 4))
    cut, whole = _lowered(Attention().eval(), example, cut=True), _lowered(Attention().eval(), example, cut=False)
    assert cut == whole
    assert "executorch_call_delegate" in " ".join(cut[1]) and not any("softmax" in op for op in cut[1]), cut[1]
