"""The resampling family (buildsys/rewrites/resample.py): F.interpolate in every mode and the antialiased upsample
functions as one constant matrix per spatial axis, against torch over 1-, 2- and 3-D inputs, up and down, sizes and
scale factors (recomputed or not), align_corners, antialias, in two dtypes; no resampling op left in any graph,
under torch.jit.trace and torch.export alike; a dynamic size and an integer input refused."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from buildsys import rewrites
from buildsys.rewrites import RewriteNotApplicable
from tests.helpers.rewrite_checks import check, randn
from tests.helpers.rewrite_ops import Fn

DTYPES = [torch.float32, torch.float64]
#: mode → (input shape, keyword arguments) cases: up and down, sizes and scale factors, corner conventions.
CASES = {
    "nearest": [((2, 3, 7), {"size": 11}), ((1, 2, 5, 6), {"scale_factor": (1.7, 0.6)}),
                ((1, 2, 3, 4, 5), {"size": (2, 6, 3)})],
    "nearest-exact": [((2, 3, 7), {"size": 4}), ((1, 2, 5, 6), {"scale_factor": 2.5})],
    "linear": [((2, 3, 7), {"size": 12, "align_corners": True}), ((2, 3, 9), {"scale_factor": 0.45})],
    "bilinear": [((1, 2, 5, 6), {"size": (9, 4)}), ((1, 2, 8, 8), {"scale_factor": 0.3, "antialias": True}),
                 ((1, 2, 5, 6), {"scale_factor": 1.6, "align_corners": True, "recompute_scale_factor": True})],
    "bicubic": [((1, 2, 5, 6), {"size": (9, 4), "align_corners": True}),
                ((1, 2, 9, 9), {"size": (4, 5), "antialias": True}), ((2, 1, 4, 4), {"scale_factor": 2.0})],
    "trilinear": [((1, 2, 3, 4, 5), {"size": (5, 2, 7)}), ((1, 1, 4, 4, 4), {"scale_factor": 0.5})],
    "area": [((2, 3, 10), {"size": 4}), ((1, 2, 7, 9), {"size": (3, 5)})],
}


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("mode", list(CASES))
def test_every_interpolation_mode_matches_torch(mode: str, dtype: torch.dtype) -> None:
    for shape, options in CASES[mode]:
        check(lambda x: F.interpolate(x, mode=mode, **options), "resample", randn(*shape, seed=7, dtype=dtype))


def test_the_antialiased_upsample_functions_called_directly_match_torch() -> None:
    x = randn(2, 3, 10, 20, seed=8)
    for name in ("_upsample_bilinear2d_aa", "_upsample_bicubic2d_aa"):
        for upsample in (getattr(torch._C._nn, name), getattr(torch.ops.aten, name)):  # OpInfo calls the latter
            check(lambda v: upsample(v, [3, 7], False, None), "resample", x, graphs=True)
            check(lambda v: upsample(v, None, True, [1.7, 0.4]), "resample", x)
        # the default overload: an output size, and per-axis scales for the coordinates
        check(lambda v: getattr(torch.ops.aten, name).default(v, [17, 8], False, 1.7, 0.4), "resample", x)


@pytest.mark.parametrize(("mode", "options"), [("nearest-exact", {"size": (3, 9)}),
                                               ("bicubic", {"scale_factor": 0.5, "antialias": True}),
                                               ("bilinear", {"size": (7, 3), "antialias": True})])
def test_no_resampling_op_is_left_in_any_graph(mode: str, options: dict) -> None:
    check(lambda x: F.interpolate(x, mode=mode, **options), "resample", randn(1, 2, 6, 6, seed=9), graphs=True)


def test_a_dynamic_size_and_an_integer_input_are_refused() -> None:
    with pytest.raises(RewriteNotApplicable, match="uint8"):
        rewrites.apply(Fn(lambda x: F.interpolate(x, size=5)), ["resample"])(torch.zeros(1, 1, 3, dtype=torch.uint8))
    module = rewrites.apply(Fn(lambda x: F.interpolate(x, scale_factor=2.0, mode="bicubic")), ["resample"])
    batch = torch.export.Dim("batch")
    with pytest.raises(Exception, match="dynamic"):  # the spatial size is dynamic: the matrices depend on it
        torch.export.export(module, (randn(1, 1, 4, 4),), dynamic_shapes=({3: batch},), strict=False)


def test_an_exported_program_with_the_rewrite_saves_and_loads(tmp_path) -> None:
    """The matrices are computed with no grad-mode switch: torch.export records one as a wrap_with_set_grad_enabled
    node, and a saved program holding it does not load (SpecViolationError; YOLO's upsampling on litert-torch's
    and ExecuTorch's routes)."""
    module = rewrites.apply(Fn(lambda x: F.interpolate(x, scale_factor=2.0)), ["resample"])
    x = randn(1, 2, 4, 4, seed=3)
    program = torch.export.export(module, (x,), strict=False)
    assert not [n for n in program.graph.nodes if "grad" in str(n.target)]
    torch.export.save(program, tmp_path / "p.pt2")
    torch.testing.assert_close(torch.export.load(tmp_path / "p.pt2").module()(x), F.interpolate(x, scale_factor=2.0))
