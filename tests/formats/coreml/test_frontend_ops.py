"""The op translations coremltools lacks (buildsys/formats/coreml/frontend_ops.py): product reductions, `|` and `^`
of booleans, isclose, the infinity predicates, acosh / asinh, argmax / argmin of the flattened tensor, layer_norm
with run-time weights, integer floor division (a dynamic size computed with `//`), group norm of a dynamic batch,
`zero_` of a slice or a whole tensor (frontend_inplace.py), `alias`, float-valued ops of integers (sqrt, exp, ...);
each refused by coremltools as it is, converted under modelbuild's patches by both frontends and agreeing with
PyTorch in the MIL interpreter."""

from __future__ import annotations

import operator
from pathlib import Path
from typing import Callable

import numpy as np
import pytest

ct = pytest.importorskip("coremltools")
torch = pytest.importorskip("torch")

from buildsys.formats.coreml.frontend import frontend_patches  # noqa: E402
from buildsys.formats.coreml.mil import MilProgram  # noqa: E402

pytestmark = pytest.mark.coreml


class Fn(torch.nn.Module):
    def __init__(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> None:
        super().__init__()
        self.fn = fn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(x)


def _convert(module: torch.nn.Module, x: torch.Tensor, frontend: str) -> object:
    source = (torch.jit.trace(module.eval(), x) if frontend == "torchscript"
              else torch.export.export(module.eval(), (x,)).run_decompositions())
    return ct.convert(source, convert_to="mlprogram", skip_model_load=True, compute_precision=ct.precision.FLOAT32,
                      minimum_deployment_target=ct.target.iOS16,
                      inputs=[ct.TensorType(name="x", shape=tuple(x.shape), dtype=np.float32)])


def _agrees(module: torch.nn.Module, x: torch.Tensor, frontend: str, path: Path) -> None:
    with frontend_patches():
        mlmodel = _convert(module, x, frontend)
    mlmodel.save(str(path))  # type: ignore[attr-defined]
    program = MilProgram.load(path)
    got = program.evaluate({"x": x.numpy()}).outputs[program.output_names[0]]
    with torch.no_grad():
        want = module(x).numpy()
    assert np.shape(got) == want.shape or np.size(got) == want.size == 1, (np.shape(got), want.shape)
    np.testing.assert_allclose(np.reshape(got, want.shape).astype(np.float64), want.astype(np.float64),
                               rtol=1e-5, atol=1e-6)


def _infinities(y: torch.Tensor) -> torch.Tensor:
    finite = torch.where(torch.isfinite(y), y, torch.zeros_like(y))
    return finite + torch.isinf(y).float() + 2 * torch.isposinf(y).float() - 4 * torch.isneginf(y).float()


def _zeroed(x: torch.Tensor) -> torch.Tensor:
    """`zero_` of a slice (written into the tensor it views, as Swin v2 zeroes its key bias) and of a whole tensor."""
    y = x * 2
    y[:, 1:3].zero_()
    whole = x.clone()
    whole.zero_()
    return y + whole + 1


CASES = {
    "prod over a dim": lambda x: torch.prod(x, 1) + 1.0,
    "prod keepdim": lambda x: x.prod(dim=-1, keepdim=True) * 2.0,
    "prod of all": lambda x: torch.prod(x).reshape(1) + x.sum(),
    "or of comparisons": lambda x: ((x > 0.5) | (x < -0.5)).float() * x,
    "xor of comparisons": lambda x: torch.bitwise_xor(x > 0, x.abs() > 1).float() + x,
    "isclose": lambda x: torch.isclose(x, x.round(), atol=0.2).float() * x,
    "isclose equal_nan": lambda x: torch.isclose(torch.where(x > 1, x / 0 * 0, x), torch.where(x > 0.5, x / 0 * 0,
                                                 x.round()), rtol=0.1, atol=0.2, equal_nan=True).float() + x,
    "isinf and isfinite": lambda x: _infinities(torch.where(x.abs() > 1, x / 0, x)),  # ±inf by x's sign (x ≠ 0)
    "acosh": lambda x: torch.acosh(x.abs() * 10 + 1) + torch.acosh(x.abs() * 1e12 + 1),
    "asinh": lambda x: torch.asinh(x) + torch.asinh(x * 1e-3) * 1e3 + torch.asinh(x * 1e10) * 1e-1,
    "argmax of all": lambda x: torch.argmax(x).float().reshape(1) + x.sum(),
    "argmin of all": lambda x: torch.argmin(x * 2).float().reshape(1) + x.mean(),
    "layer_norm of run-time weights": lambda x: torch.nn.functional.layer_norm(x, (5,), x[0, 0] * 0.5 + 1, x[0, 1]),
    "layer_norm of a run-time weight over two axes": lambda x: torch.nn.functional.layer_norm(x, (4, 5), x[0].exp(),
                                                                                               eps=1e-3),
    "zero_ of a slice and of a whole tensor": _zeroed,
    "alias": lambda x: torch.ops.aten.alias(x * 2) + 1,
    # an integer's square root, as RAFT scales its correlation (`torch.tensor([dim])`: a constant in a trace)
    "sqrt and exp of integers": lambda x: x / torch.sqrt(torch.tensor([x.shape[-1]])) + torch.exp(
        (x > 0).int()) + torch.sigmoid(torch.arange(x.shape[-1])),
}


@pytest.mark.parametrize("frontend", ["torchscript", "export"])
@pytest.mark.parametrize("case", list(CASES))
def test_an_op_coremltools_lacks_converts_and_agrees(tmp_path: Path, frontend: str, case: str) -> None:
    module, x = Fn(CASES[case]), torch.randn(3, 4, 5, generator=torch.Generator().manual_seed(0)) * 1.5
    _agrees(module, x, frontend, tmp_path / "model.mlpackage")


def test_coremltools_as_it_is_refuses_them() -> None:
    x = torch.randn(3, 4)
    for case in ("prod over a dim", "or of comparisons", "argmax of all", "alias"):
        with pytest.raises(Exception):  # noqa: B017 - each fails in its own words
            _convert(Fn(CASES[case]), x, "export")
    with pytest.raises(ValueError, match=r"sqrt\).*expects tensor or scalar of dtype from type domain"):
        _convert(Fn(CASES["sqrt and exp of integers"]), torch.randn(3, 4, 5), "torchscript")


def test_coremltools_as_it_is_refuses_zero_in_a_trace() -> None:
    with pytest.raises(NotImplementedError, match="zero_"):  # torch.export's functional graph holds none
        _convert(Fn(_zeroed), torch.randn(3, 4, 5), "torchscript")


class NamedLikeAnArgument(torch.nn.Module):
    """Ops whose FX node names (floor, tanh) are also string arguments of others (rounding_mode, approximate)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.floor(x) * 2
        return torch.div(y, 3.0, rounding_mode="floor") + torch.nn.functional.gelu(torch.tanh(x), approximate="tanh")


def test_a_string_argument_is_not_read_as_a_node_of_that_name(tmp_path: Path) -> None:
    from buildsys.formats.coreml.from_export import names_apart_from_strings

    x = torch.randn(2, 30, 4, generator=torch.Generator().manual_seed(0)) * 10
    program = torch.export.export(NamedLikeAnArgument().eval(), (x,)).run_decompositions()

    def convert(source: object) -> object:
        return ct.convert(source, convert_to="mlprogram", skip_model_load=True,
                          compute_precision=ct.precision.FLOAT32, minimum_deployment_target=ct.target.iOS16)

    with frontend_patches(), pytest.raises(NotImplementedError, match="rounding mode"):  # coremltools as it is
        convert(program)
    renamed = names_apart_from_strings(program)
    assert {"floor", "tanh"}.isdisjoint(n.name for n in renamed.graph.nodes)
    with frontend_patches():
        mlmodel = convert(renamed)
    mlmodel.save(str(tmp_path / "named.mlpackage"))  # type: ignore[attr-defined]
    mil = MilProgram.load(tmp_path / "named.mlpackage")
    got = mil.evaluate({mil.input_names[0]: x.numpy()}).outputs[mil.output_names[0]]
    with torch.no_grad():
        np.testing.assert_allclose(got, NamedLikeAnArgument()(x).numpy(), rtol=1e-4, atol=5e-4)


class GroupStats(torch.nn.Module):
    """A group norm that also returns its statistics (what a normaliser's calibration or a debugging head reads)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, mean, rstd = torch.native_group_norm(x, torch.ones(6), None, 2, 6, 12, 3, 1e-5)
        return out.sum((2, 3)) + mean.repeat(1, 2) + rstd.repeat(1, 2)


@pytest.mark.parametrize("frontend", ["torchscript", "export"])
def test_group_norm_statistics(frontend: str, tmp_path: Path) -> None:
    x = torch.randn(2, 6, 3, 4)
    with pytest.raises(Exception):  # noqa: B017 - coremltools binds the statistics as None and fails its own way
        _convert(GroupStats(), x, frontend)
    _agrees(GroupStats(), x, frontend, tmp_path / f"{frontend}.mlpackage")


class SizedByFloorDivision(torch.nn.Module):
    """Sizes of a dynamic batch computed with `//` (as torch.export writes a reshape's inferred size), and an
    integer tensor floor-divided, negative numerators included (floor, not truncation)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: [B, 6, 4]
        rows = x.shape[0] * 24 // 8
        steps = (torch.arange(-8, 8).reshape(2, 8)[1:] - 4) // 3  # int64: -4 … 3 // 3
        return x.reshape(rows, 8).expand(rows, 8) * 2 + steps.float()


def _convert_dynamic(source: object, shape: tuple[int, ...]) -> object:
    """`source` converted with a dynamic batch of 1 to 8 and the rest of `shape` fixed."""
    return ct.convert(source, convert_to="mlprogram", skip_model_load=True, minimum_deployment_target=ct.target.iOS16,
                      compute_precision=ct.precision.FLOAT32,
                      inputs=[ct.TensorType(name="x", shape=(ct.RangeDim(1, 8), *shape), dtype=np.float32)])


def _agrees_at_batches(source: object, module: torch.nn.Module, shape: tuple[int, ...], path: Path) -> None:
    """Converted under the patches, the program equals `module` in the MIL reference at batch 1 and 3."""
    with frontend_patches():
        mlmodel = _convert_dynamic(source, shape)
    mlmodel.save(str(path))  # type: ignore[attr-defined]
    mil = MilProgram.load(path)
    for batch in (1, 3):
        given = torch.randn(batch, *shape) * 3
        got = mil.evaluate({mil.input_names[0]: given.numpy()}).outputs[mil.output_names[0]]
        with torch.no_grad():
            np.testing.assert_allclose(got, module(given).numpy(), rtol=1e-4, atol=1e-4)


def test_integer_floor_division_of_a_dynamic_size(tmp_path: Path) -> None:
    x = torch.randn(2, 6, 4, generator=torch.Generator().manual_seed(0))
    program = torch.export.export(SizedByFloorDivision().eval(), (x,),
                                  dynamic_shapes=({0: torch.export.Dim("batch", max=8)},)).run_decompositions()
    assert any(n.target is operator.floordiv for n in program.graph.nodes)

    with pytest.raises(ValueError, match="share the same data type"):  # coremltools as it is: the size a float
        _convert_dynamic(program, (6, 4))
    _agrees_at_batches(program, SizedByFloorDivision(), (6, 4), tmp_path / "sized.mlpackage")


class GroupNormed(torch.nn.Module):
    """A feature extractor's GroupNorm (wav2vec2's first layer: groups = channels) and one over pairs of channels."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv1d(2, 8, 3)
        self.per_channel, self.paired = torch.nn.GroupNorm(8, 8), torch.nn.GroupNorm(4, 8, affine=False)
        with torch.no_grad():
            self.per_channel.weight.uniform_(0.5, 1.5), self.per_channel.bias.uniform_(-1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.paired(torch.nn.functional.gelu(self.per_channel(self.conv(x))))


@pytest.mark.parametrize("frontend", ["torchscript", "export"])
def test_group_norm_of_a_dynamic_batch(frontend: str, tmp_path: Path) -> None:
    module, x = GroupNormed().eval(), torch.randn(2, 2, 20)
    source = (torch.jit.trace(module, x) if frontend == "torchscript" else torch.export.export(
        module, (x,), dynamic_shapes=({0: torch.export.Dim("batch", max=8)},)).run_decompositions())

    with pytest.raises(Exception):  # noqa: B017 - coremltools writes the batch's symbol into a constant shape
        _convert_dynamic(source, (2, 20))
    _agrees_at_batches(source, module, (2, 20), tmp_path / "normed.mlpackage")
