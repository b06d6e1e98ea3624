"""coremltools' torch frontends (TorchScript and torch.export) with modelbuild's patches
(buildsys/formats/coreml/frontend.py): models the unpatched frontends refuse convert, and the converted program
agrees with PyTorch in the MIL interpreter."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

ct = pytest.importorskip("coremltools")
torch = pytest.importorskip("torch")

from buildsys.formats.coreml.frontend import frontend_patches  # noqa: E402
from buildsys.formats.coreml.mil import MilProgram  # noqa: E402

pytestmark = pytest.mark.coreml


class PatchGrid(torch.nn.Module):
    """Patches counted from the input's size, kept a tensor while tracing as transformers' `torch_int` does
    (MobileViT's unfolding): the trace's `int()` of that count reaches coremltools as a (1,)-shaped constant."""

    def __init__(self, patch: int):
        super().__init__()
        self.patch = patch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        width, p = x.shape[-1], self.patch
        padded = (torch.ceil(width / p) * p).to(torch.int64) if torch.jit.is_tracing() else math.ceil(width / p) * p
        patches = padded // p
        x = torch.nn.functional.interpolate(x, size=(int(padded), int(padded)), mode="bilinear")
        return x.reshape(x.shape[0] * x.shape[1], int(patches), p, int(patches), p).mean((2, 4)).reshape(x.shape[0], -1)


def _convert(module: torch.nn.Module, example: torch.Tensor) -> object:
    return _fp32(torch.jit.trace(module.eval(), example), {"x": tuple(example.shape)})


def _fp32(source: object, inputs: dict[str, tuple[int, ...]]) -> object:
    """A trace or an ExportedProgram converted to an unloaded float32 ML program (iOS 16), float32 inputs by name."""
    return ct.convert(source, convert_to="mlprogram", skip_model_load=True, compute_precision=ct.precision.FLOAT32,
                      minimum_deployment_target=ct.target.iOS16,
                      inputs=[ct.TensorType(name=n, shape=shape, dtype=np.float32) for n, shape in inputs.items()])


def _mil(mlmodel: object, path: Path) -> MilProgram:
    """The package saved at `path`, loaded for the MIL reference interpreter."""
    mlmodel.save(str(path))  # type: ignore[attr-defined]
    return MilProgram.load(path)


@pytest.mark.parametrize("size,patch", [(10, 4), (16, 4), (9, 2)])
def test_a_size_counted_in_tensors_converts_and_agrees(tmp_path: Path, size: int, patch: int) -> None:
    example = torch.randn(2, 3, size, size)
    with pytest.raises(TypeError, match="only 0-dimensional arrays"):  # coremltools as it is, with NumPy 2
        _convert(PatchGrid(patch), example)
    with frontend_patches():
        mlmodel = _convert(PatchGrid(patch), example)
    program = _mil(mlmodel, tmp_path / "grid.mlpackage")
    got = program.evaluate({"x": example.numpy()}).outputs[program.output_names[0]]
    with torch.no_grad():
        want = PatchGrid(patch)(example).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_the_patches_are_only_in_place_for_the_conversion() -> None:
    from coremltools.converters.mil.frontend.torch.torch_op_registry import _TORCH_OPS_REGISTRY

    table = _TORCH_OPS_REGISTRY.name_to_func_mapping
    before = {name: table[name] for name in ("int", "bool", "prelu", "where", "where.self", "clamp", "clip")}
    from coremltools.converters.mil import Builder as mb

    builder = {name: mb.__dict__[name] for name in ("conv", "conv_transpose")}
    with frontend_patches():
        assert all(table[name] is not fn for name, fn in before.items())
        assert all(mb.__dict__[name] is not op for name, op in builder.items())
    assert {name: table[name] for name in before} == before
    assert {name: mb.__dict__[name] for name in builder} == builder


class Blend(torch.nn.Module):
    """torch.lerp with a Python weight: its core ATen decomposition picks the coefficient with a where over 0-d
    tensors (|w| < 0.5), which coremltools broadcasts to an empty shape and refuses."""

    def __init__(self, weight: float):
        super().__init__()
        self.weight = weight
        self.a, self.b = torch.nn.Linear(3, 5), torch.nn.Linear(3, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.lerp(self.a(x), self.b(x), self.weight)


@pytest.mark.parametrize("weight", [0.3, 0.8])
def test_a_where_of_scalars_from_the_export_frontend_converts_and_agrees(tmp_path: Path, weight: float) -> None:
    torch.manual_seed(0)
    module, example = Blend(weight).eval(), torch.randn(2, 4, 3)
    program = torch.export.export(module, (example,)).run_decompositions()

    def convert() -> object:
        return _fp32(program, {"x": tuple(example.shape)})

    with pytest.raises(ValueError, match="got 0 values"):  # coremltools as it is
        convert()
    with frontend_patches():
        mlmodel = convert()
    mil = _mil(mlmodel, tmp_path / "blend.mlpackage")
    got = mil.evaluate({"x": example.numpy()}).outputs[mil.output_names[0]]
    with torch.no_grad():
        np.testing.assert_allclose(got, module(example).numpy(), rtol=1e-5, atol=1e-6)


class Bounded(torch.nn.Module):
    """torch.clamp between tensor bounds (a learned range, a per-channel limit); `which` picks the bounds given."""

    def __init__(self, which: str):
        super().__init__()
        self.which = which

    def forward(self, x: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
        if self.which == "both":
            return torch.clamp(x, lo, hi)
        return torch.clamp(x, min=lo) if self.which == "min" else torch.clamp(x, max=hi)


@pytest.mark.parametrize("frontend", ["torchscript", "export"])
@pytest.mark.parametrize("which", ["both", "min", "max"])
def test_a_clamp_between_tensors_agrees_where_the_bounds_cross(tmp_path: Path, frontend: str, which: str) -> None:
    torch.manual_seed(0)
    x, lo, hi = (torch.randn(2, 3, 4) for _ in range(3))  # lo > hi in about half the elements
    module = Bounded(which).eval()
    source = (torch.jit.trace(module, (x, lo, hi)) if frontend == "torchscript"
              else torch.export.export(module, (x, lo, hi)).run_decompositions())

    def convert() -> object:
        return _fp32(source, {n: (2, 3, 4) for n in ("x", "lo", "hi")})

    def evaluate(mlmodel: object, name: str) -> np.ndarray:
        mil = _mil(mlmodel, tmp_path / f"{name}.mlpackage")
        feeds = {n: t.numpy() for n, t in zip(mil.input_names, (x, lo, hi))}
        return np.asarray(mil.evaluate(feeds).outputs[mil.output_names[0]])

    with torch.no_grad():
        want = module(x, lo, hi).numpy()
    if which == "both":  # coremltools as it is: max(min(x, hi), lo)
        assert not np.allclose(evaluate(convert(), "unpatched"), want)
    with frontend_patches():
        got = evaluate(convert(), "patched")
    np.testing.assert_allclose(got, want, rtol=0, atol=0)


class ComputedBias(torch.nn.Module):
    """A conv whose bias is computed from the input (a conditioning vector's projection) and a transposed conv
    whose bias is a model input: MIL wants a constant bias."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv, self.up = torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ConvTranspose2d(4, 2, 2, stride=2)
        self.project = torch.nn.Linear(3, 4)

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        condition = self.project(x.mean((0, 2, 3)))  # [4]
        y = torch.nn.functional.conv2d(x, self.conv.weight, condition, padding=1)
        return torch.nn.functional.conv_transpose2d(torch.relu(y), self.up.weight, bias, stride=2)


@pytest.mark.parametrize("frontend", ["torchscript", "export"])
def test_a_conv_with_a_computed_bias_converts_and_agrees(tmp_path: Path, frontend: str) -> None:
    x, bias = torch.randn(1, 3, 6, 6), torch.randn(2)
    module = ComputedBias().eval()
    source = (torch.jit.trace(module, (x, bias)) if frontend == "torchscript"
              else torch.export.export(module, (x, bias)).run_decompositions())

    def convert() -> object:
        return _fp32(source, {"x": (1, 3, 6, 6), "bias": (2,)})

    with pytest.raises(ValueError, match="bias must be const"):  # coremltools as it is
        convert()
    with frontend_patches():
        mlmodel = convert()
    mil = _mil(mlmodel, tmp_path / "bias.mlpackage")
    got = mil.evaluate(dict(zip(mil.input_names, (x.numpy(), bias.numpy())))).outputs[mil.output_names[0]]
    with torch.no_grad():
        np.testing.assert_allclose(got, module(x, bias).numpy(), rtol=1e-5, atol=1e-5)


class Diagonal(torch.nn.Module):
    def __init__(self, offset: int, dim1: int, dim2: int) -> None:
        super().__init__()
        self.args = (offset, dim1, dim2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.diagonal(x, *self.args) * 2


@pytest.mark.parametrize("frontend", ["torchscript", "export"])
@pytest.mark.parametrize("shape,args", [((5, 3), (0, 0, 1)), ((2, 5, 5), (0, -2, -1)), ((2, 3, 4, 6), (1, -2, -1)),
                                        ((2, 3, 4, 6), (-2, -1, 1)), ((3, 4, 5), (2, 0, -1))])
def test_a_diagonal_at_any_offset_and_dims_is_torchs(tmp_path: Path, frontend: str, shape: tuple[int, ...],
                                                     args: tuple[int, int, int]) -> None:
    """coremltools refuses all but offset 0 over dims 0 and 1, and there returns the band, not the diagonal."""
    x, module = torch.randn(*shape), Diagonal(*args).eval()
    source = torch.jit.trace(module, (x,)) if frontend == "torchscript" else \
        torch.export.export(module, (x,)).run_decompositions()

    def convert() -> object:
        return _fp32(source, {"x": shape})

    if args == (0, 0, 1) and frontend == "export":  # coremltools as it is: the band_part matrix, not the diagonal
        mlmodel = convert()
        band = _mil(mlmodel, tmp_path / "band.mlpackage")
        assert band.evaluate({"x": x.numpy()}).outputs[band.output_names[0]].shape == shape
    else:  # (the trace frontend's offset and dims are MIL values, which its `offset == 0` test never matches)
        with pytest.raises(NotImplementedError, match="Only offset == 0"):
            convert()
    with frontend_patches():
        mlmodel = convert()
    mil = _mil(mlmodel, tmp_path / "diagonal.mlpackage")
    got = mil.evaluate({"x": x.numpy()}).outputs[mil.output_names[0]]
    np.testing.assert_array_equal(got, module(x).numpy())


class Queries(torch.nn.Module):
    """A DETR-style decoder start: zeros_like of the query embeddings fed to a linear layer, plus a mask of new_ones
    (float, and integer counted) as Hugging Face encoders make."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.value = torch.nn.Linear(6, 6)

    def forward(self, queries: torch.Tensor) -> torch.Tensor:
        start = self.value(torch.zeros_like(queries)) + self.value(torch.ones_like(queries))
        mask = queries.new_ones(queries.shape[:2])
        counted = queries.new_ones((queries.shape[0], 3), dtype=torch.long).sum(-1, keepdim=True)
        scale = queries.new_ones(())  # 0-d, as BERT's extended attention mask makes one
        return (start + self.value(queries)) * mask.unsqueeze(-1) * scale + counted.unsqueeze(-1).float()


@pytest.mark.parametrize("frontend", ["torchscript", "export"])
def test_like_factories_keep_their_dtype_and_new_ones_converts(tmp_path: Path, frontend: str) -> None:
    x, module = torch.randn(2, 4, 6), Queries().eval()
    source = torch.jit.trace(module, (x,)) if frontend == "torchscript" else \
        torch.export.export(module, (x,)).run_decompositions()

    def convert() -> object:
        return _fp32(source, {"queries": (2, 4, 6)})

    with pytest.raises(Exception, match="new_ones|dtype int32|0-dimensional"):  # coremltools as it is
        convert()
    with frontend_patches():
        mlmodel = convert()
    mil = _mil(mlmodel, tmp_path / "queries.mlpackage")
    got = mil.evaluate({"queries": x.numpy()}).outputs[mil.output_names[0]]
    with torch.no_grad():
        np.testing.assert_allclose(got, module(x).numpy(), rtol=1e-5, atol=1e-5)


class Reciprocal(torch.nn.Module):
    """1 / x over small and large magnitudes (a normaliser, a rotation's 1 / √(1 + t²))."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 1.0 / x


@pytest.mark.parametrize("frontend", ["torchscript", "export"])
def test_a_reciprocal_is_exact_not_offset_by_an_epsilon(tmp_path: Path, frontend: str) -> None:
    example = torch.tensor([[0.002, -0.01, 0.05, 1.0, -3.0, 250.0]])
    module = Reciprocal().eval()
    source = torch.jit.trace(module, example) if frontend == "torchscript" else \
        torch.export.export(module, (example,)).run_decompositions()

    def evaluate(name: str) -> np.ndarray:
        mil = _mil(_fp32(source, {"x": tuple(example.shape)}), tmp_path / name)
        return mil.evaluate({"x": example.numpy()}).outputs[mil.output_names[0]]

    want = module(example).numpy()
    assert np.abs(evaluate("as-is.mlpackage") / want - 1).max() > 0.04  # coremltools as it is: 1 / (x + 1e-4)
    with frontend_patches():
        got = evaluate("patched.mlpackage")
    np.testing.assert_allclose(got, want, rtol=1e-6)
