"""buildsys.lowering.ranks: a video-Swin window partition (rank 8) in a torch.export program with a dynamic batch,
folded to XNNPACK's rank 6 (runs of axes the transpose keeps together) and to rank 5 (rank-4 steps beside them),
computes what the program computed at other batches, and exported again holds no tensor over the limit."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from buildsys.lowering.ranks import folded_ranks, groups, steps  # noqa: E402


class Windows3d(torch.nn.Module):
    """Video Swin's partition of a [B, D, H, W, C] map into 2 × 4 × 4 windows (rank 8), a per-window mix, and the
    reverse (rank 8 again), with `contiguous` between the permute and the view as torchvision writes it."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.mix = torch.nn.Linear(8, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, d, h, w, c = x.shape
        t = x.view(b, d // 2, 2, h // 4, 4, w // 4, 4, c).permute(0, 1, 3, 5, 2, 4, 6, 7).reshape(-1, 32, c)
        t = self.mix(t)
        y = t.view(b, d // 2, h // 4, w // 4, 2, 4, 4, c).permute(0, 1, 4, 2, 5, 3, 6, 7).contiguous()
        return y.view(b, d, h, w, c)


def _ranks(graph_module: torch.fx.GraphModule) -> int:
    return max(n.meta["val"].dim() for n in graph_module.graph.nodes if isinstance(n.meta.get("val"), torch.Tensor))


@pytest.mark.parametrize("limit", [6, 5])
def test_a_rank_8_window_partition_is_folded_and_computes_the_same(limit: int) -> None:
    model = Windows3d().eval()
    x = torch.randn(2, 4, 8, 8, 8)
    program = torch.export.export(model, (x,), dynamic_shapes={"x": {0: torch.export.Dim("batch", min=1, max=16)}})
    module = program.module()
    assert _ranks(module) == 8
    assert folded_ranks(module, limit) == 2
    with torch.no_grad():
        for batch in (1, 3):
            inputs = torch.randn(batch, 4, 8, 8, 8, generator=torch.Generator().manual_seed(batch))
            torch.testing.assert_close(module(inputs), model(inputs), rtol=0, atol=0)
    assert _ranks(torch.export.export(module, (x,)).graph_module) <= limit


def test_the_plan_moves_runs_of_axes_and_keeps_one_dynamic_size_per_reshape() -> None:
    assert groups([0, 1, 3, 5, 2, 4, 6, 7]) == [[0, 1], [3], [5], [2], [4], [6, 7]]
    dynamic = lambda n: isinstance(n, str)  # noqa: E731 - a stand-in for a symbolic size
    shape = ["B", 2, 2, 2, 4, 2, 4, 8]
    assert steps(shape, [0, 1, 3, 5, 2, 4, 6, 7], 6, dynamic) == [([-1, 2, 2, 4, 2, 32], [0, 2, 4, 1, 3, 5])]
    four = steps(shape, [0, 1, 3, 5, 2, 4, 6, 7], 4, dynamic)
    assert four is not None and all(len(s) == 4 and s.count(-1) <= 1 for s, _ in four)
    two_dynamic = ["B", "T", 2, 2, 2, 2, 2]
    assert steps(two_dynamic, [1, 0, 3, 2, 5, 4, 6], 5, dynamic) is None
