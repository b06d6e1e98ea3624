"""buildsys.formats.coreml.broadcast_constants: a weight that torch.export's program expands for a batched matmul
(and a constant repeated along an axis an elementwise op broadcasts) is stored once, not once per batch entry; what
the program computes is unchanged (MIL reference), and an axis the other operand does not restore is left as it is.
The package keeps no ExecuTorch debug map (frontend.make_reproducible)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

ct = pytest.importorskip("coremltools")
torch = pytest.importorskip("torch")

pytestmark = pytest.mark.coreml


class Expanded(torch.nn.Module):
    """A weight expanded to the batch of a bmm, a bias repeated over rows, and a constant whose repeated axis the
    other operand holds at size 1 (so the sum takes its size from the constant: left stored whole)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.weight = torch.nn.Parameter(torch.randn(16, 48))
        self.register_buffer("rows", torch.randn(1, 48).repeat(8, 1))
        self.register_buffer("needed", torch.randn(1, 48).repeat(6, 1))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        y = torch.bmm(x, self.weight.expand(4, 16, 48)) + self.rows
        return y, y[:, :1, :].sum(0) + self.needed  # [1, 48] + [6, 48]: the 6 comes from the constant


def _package(path: Path, passes: object) -> Path:
    from buildsys.formats.coreml.frontend import frontend_patches, make_reproducible

    program = torch.export.export(Expanded().eval(), (torch.zeros(4, 8, 16),)).run_decompositions()
    with frontend_patches():
        mlmodel = ct.convert(program, convert_to="mlprogram", skip_model_load=True,
                             compute_precision=ct.precision.FLOAT32, minimum_deployment_target=ct.target.iOS16,
                             pass_pipeline=passes)
    mlmodel.save(str(path))
    make_reproducible(path)
    return path


def test_an_expanded_weight_is_stored_once(tmp_path: Path) -> None:
    from buildsys.formats.coreml.mil import MilProgram
    from buildsys.formats.coreml.passes import pipeline

    whole = _package(tmp_path / "whole.mlpackage", ct.PassPipeline())
    once = _package(tmp_path / "once.mlpackage", pipeline(recurrent_weights_fp16=False))

    def weight_file(package: Path) -> int:
        return (package / "Data/com.apple.CoreML/weights/weight.bin").stat().st_size

    # the weight 4 times and the bias 8 times (12 KB + 1.5 KB) against once each; the [6, 48] constant stays whole
    assert weight_file(whole) - weight_file(once) >= (3 * 16 * 48 + 7 * 48) * 4
    assert weight_file(once) >= (16 * 48 + 48 + 6 * 48) * 4
    assert not (whole / "executorch_debug_handle_mapping.json").exists()
    x = np.random.default_rng(0).standard_normal((4, 8, 16)).astype(np.float32)
    got = {p: MilProgram.load(p) for p in (whole, once)}
    with torch.no_grad():
        want = [o.numpy() for o in Expanded().eval()(torch.from_numpy(x))]
    for program in got.values():
        outputs = program.evaluate({program.input_names[0]: x}).outputs
        for name, expected in zip(program.output_names, want):
            np.testing.assert_allclose(outputs[name], expected, rtol=1e-5, atol=1e-5)


def test_repeated_axes() -> None:
    from buildsys.formats.coreml.broadcast_constants import repeated_axes

    assert repeated_axes(np.broadcast_to(np.arange(6.0).reshape(1, 2, 3), (4, 2, 3))) == [0]
    assert repeated_axes(np.ones((3, 2))) == [0, 1]
    assert repeated_axes(np.arange(6.0).reshape(2, 3)) == []
