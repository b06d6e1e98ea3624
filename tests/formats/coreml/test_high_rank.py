"""buildsys.formats.coreml.high_rank: a rank-6 (or higher) reshape → transpose → reshape chain with a dynamic batch,
as window-partition attention writes it, converts through both coremltools frontends with the batch kept dynamic,
every tensor at rank ≤ 5, and computes what PyTorch does at other batches (MIL reference)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

ct = pytest.importorskip("coremltools")
torch = pytest.importorskip("torch")

from buildsys.lowering.ranks import _as_shape, folded, groups  # noqa: E402

pytestmark = pytest.mark.coreml


class Windows(torch.nn.Module):
    """Swin's window partition (rank 6), attention within each window, and the reverse (rank 6 again)."""

    def __init__(self, dim: int = 16, window: int = 4) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.embed = torch.nn.Conv2d(3, dim, 4, 4)
        self.window = window
        self.attn = torch.nn.MultiheadAttention(dim, 2, batch_first=True)
        self.head = torch.nn.Linear(dim, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.embed(x).permute(0, 2, 3, 1)
        b, h, w, c = x.shape
        n = self.window
        t = x.view(b, h // n, n, w // n, n, c).permute(0, 1, 3, 2, 4, 5).reshape(-1, n * n, c)
        t = self.attn(t, t, t, need_weights=False)[0]
        x = t.view(b, h // n, w // n, n, n, c).permute(0, 1, 3, 2, 4, 5).reshape(b, h, w, c)
        return self.head(x.mean((1, 2)))


class Scattered(torch.nn.Module):
    """A rank-7 transpose that no grouping brings to rank 5, the batch moved off the front."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.view(x.shape[0], 2, 3, 2, 3, 2, 4).permute(6, 4, 0, 2, 5, 3, 1).reshape(4, -1) + 1


def _convert(module: torch.nn.Module, x: torch.Tensor, frontend: str, path: Path, passes: object = None) -> Path:
    """`module` converted with a dynamic batch (modelbuild's pipeline, or `passes`) and saved: coremltools refuses
    to write a program holding a tensor of rank over 5."""
    from buildsys.formats.coreml.frontend import frontend_patches
    from buildsys.formats.coreml.passes import pipeline

    if frontend == "torchscript":
        source = torch.jit.trace(module.eval(), x, check_trace=False)
    else:
        batch = torch.export.Dim("batch", min=1, max=64)
        source = torch.export.export(module.eval(), (x,), dynamic_shapes={"x": {0: batch}}).run_decompositions()
    with frontend_patches():
        mlmodel = ct.convert(source, convert_to="mlprogram", skip_model_load=True,
                             compute_precision=ct.precision.FLOAT32, minimum_deployment_target=ct.target.iOS16,
                             inputs=[ct.TensorType(name="x", shape=(ct.RangeDim(1, 64), *x.shape[1:]),
                                                   dtype=np.float32)],
                             pass_pipeline=pipeline(False) if passes is None else passes)
    mlmodel.save(str(path))
    return path


@pytest.mark.parametrize("frontend", ["torchscript", "pt2"])
def test_window_partition_keeps_its_batch_dynamic(frontend: str, tmp_path: Path) -> None:
    from buildsys.formats.coreml.mil import MilProgram

    module = Windows().eval()
    with pytest.raises(ValueError, match="rank <= 5"):  # what coremltools' own pipeline leaves
        _convert(module, torch.zeros(2, 3, 32, 32), frontend, tmp_path / "refused.mlpackage", ct.PassPipeline())
    program = MilProgram.load(_convert(module, torch.zeros(2, 3, 32, 32), frontend, tmp_path / "w.mlpackage"))
    for batch in (1, 3):
        x = torch.randn(batch, 3, 32, 32, generator=torch.Generator().manual_seed(batch))
        got = program.evaluate({"x": x.numpy()}).outputs[program.output_names[0]]
        with torch.no_grad():
            np.testing.assert_allclose(got, module(x).numpy(), rtol=1e-5, atol=1e-6)


def test_a_transpose_no_grouping_brings_to_rank_5_is_written_in_rank_4_steps(tmp_path: Path) -> None:
    from buildsys.formats.coreml.mil import MilProgram

    program = MilProgram.load(_convert(Scattered(), torch.zeros(2, 288), "pt2", tmp_path / "s.mlpackage"))
    assert program.op_counts()["transpose"] == 7  # one rank-4 swap per axis of the rank-7 transpose
    for batch in (1, 3):
        x = torch.randn(batch, 288, generator=torch.Generator().manual_seed(batch))
        got = program.evaluate({"x": x.numpy()}).outputs[program.output_names[0]]
        np.testing.assert_array_equal(got, Scattered()(x).numpy())


def test_axes_that_move_together_are_one_axis() -> None:
    import sympy

    assert groups([0, 1, 3, 2, 4, 5]) == [[0, 1], [3], [2], [4, 5]]
    batch = sympy.Symbol("is0")
    sizes, perm = folded([batch, 2, 4, 2, 4, 16], [0, 1, 3, 2, 4, 5])
    assert (sizes, perm) == ([2 * batch, 4, 2, 64], [0, 2, 1, 3])
    symbolic = lambda n: isinstance(n, sympy.Basic) and not n.is_number  # noqa: E731
    assert _as_shape(sizes, symbolic) == [-1, 4, 2, 64]
    assert _as_shape([batch, sympy.Symbol("is1"), 2], symbolic) is None  # two dynamic sizes: one reshape cannot say both
