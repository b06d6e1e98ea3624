"""Core ML outputs in torch's shape (buildsys/formats/coreml/output_shapes.py): coremltools' torch.export frontend
turns the one value of a masked standard deviation into [1, 1, 1, 1] where torch says [1]; the converted program,
ended in a reshape, gives torch's shape and values in the MIL interpreter, under the output's own name. An output
already in torch's shape, or of another size, is left alone."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

ct = pytest.importorskip("coremltools")
torch = pytest.importorskip("torch")

from buildsys.formats.coreml import output_shapes  # noqa: E402
from buildsys.formats.coreml.frontend import frontend_patches  # noqa: E402
from buildsys.formats.coreml.mil import MilProgram  # noqa: E402

pytestmark = pytest.mark.coreml


class PaddedClipSpread(torch.nn.Module):
    """The spread of a clip's valid samples (padding masked out), and their sum: what a quality gate computes."""

    def forward(self, clip: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        valid = clip[0] > -1.0
        return torch.masked.std(clip[0], mask=valid).unsqueeze(0), (clip * 2.0).sum(dim=-1)


def test_an_output_coremltools_reshaped_gets_torchs_shape_back(tmp_path: Path) -> None:
    module, clip = PaddedClipSpread().eval(), torch.randn(1, 5, 5, 5)
    with frontend_patches():
        program = torch.export.export(module, (clip,)).run_decompositions()
        mlmodel = ct.convert(program, convert_to="mlprogram", skip_model_load=True,
                             compute_precision=ct.precision.FLOAT32, minimum_deployment_target=ct.target.iOS16)
    inputs = output_shapes.program_input_shapes(mlmodel)
    names = list(inputs)
    wanted = output_shapes.torch_output_shapes(program, inputs, names, {names[0]: clip.numpy()})
    assert wanted == [(1,), (1, 5, 5)]
    fixes = output_shapes.mismatched(mlmodel, wanted)
    assert fixes == {0: (1,)}, "coremltools no longer changes this output's rank: the test proves nothing"
    outputs = [v.name for v in mlmodel._mil_program.functions["main"].outputs]
    fixed = output_shapes.reshaped(mlmodel, fixes, minimum_deployment_target=ct.target.iOS16, skip_model_load=True)
    assert [o.name for o in fixed.get_spec().description.output] == outputs
    fixed.save(str(tmp_path / "fixed.mlpackage"))
    mil = MilProgram.load(tmp_path / "fixed.mlpackage")
    got = mil.evaluate({names[0]: clip.numpy()}).outputs
    with torch.no_grad():
        want = [t.numpy() for t in module(clip)]
    for name, expected in zip(outputs, want):
        assert np.shape(got[name]) == expected.shape
        np.testing.assert_allclose(got[name], expected, rtol=1e-5, atol=1e-6)


def test_outputs_in_torchs_shape_or_of_another_size_are_left_alone() -> None:
    with frontend_patches():
        program = torch.export.export(PaddedClipSpread().eval(), (torch.randn(1, 5, 5, 5),)).run_decompositions()
        mlmodel = ct.convert(program, convert_to="mlprogram", skip_model_load=True,
                             compute_precision=ct.precision.FLOAT32, minimum_deployment_target=ct.target.iOS16)
    assert output_shapes.mismatched(mlmodel, [(1, 1, 1, 1), (1, 5, 5)]) == {}
    assert output_shapes.mismatched(mlmodel, [(2,), (1, 5, 5)]) == {}
    assert output_shapes.mismatched(mlmodel, [(1,)]) == {}  # another count of outputs: nothing is compared
