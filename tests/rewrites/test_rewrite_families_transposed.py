"""The conv-transpose rewrite (buildsys/rewrites/transposed.py) against torch: 1-, 2- and 3-D, every stride,
padding (also past the kernel's reach, which crops), output_padding, dilation and groups, batched and unbatched,
float32 and float64; no transposed convolution left in any graph; and a transposed convolution whose weight is
an input converted by coremltools, which refuses it as it is, agreeing with torch in the MIL interpreter."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from buildsys import rewrites
from tests.helpers.rewrite_checks import assert_equivalent, check, randn
from tests.helpers.rewrite_ops import Fn

CONFIGS = [  # stride, padding, output_padding, groups, dilation
    (1, 0, 0, 1, 1), (2, 0, 0, 1, 1), (2, 1, 1, 1, 1), (3, 2, 2, 1, 2), (2, 1, 0, 2, 1), (2, 3, 0, 1, 1),
    (2, 4, 1, 2, 2),
]


@pytest.mark.parametrize("dims", [1, 2, 3])
@pytest.mark.parametrize("config", CONFIGS, ids=str)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_matches_torch(dims: int, config: Any, dtype: torch.dtype) -> None:
    stride, padding, output_padding, groups, dilation = config
    spatial = (5, 4, 3)[:dims]
    x, w = randn(2, 4, *spatial, dtype=dtype), randn(4, 6 // groups, *(3,) * dims, seed=1, dtype=dtype)
    bias = randn(6, seed=2, dtype=dtype)
    fn = getattr(F, f"conv_transpose{dims}d")
    got = rewrites.apply(Fn(lambda x, w, b: fn(x, w, b, stride, padding, output_padding, groups, dilation)),
                         ["conv-transpose"])(x, w, bias)
    assert_equivalent(got, fn(x, w, bias, stride, padding, output_padding, groups, dilation),
                      1e-5 if dtype == torch.float32 else 1e-12)
    unbatched = rewrites.apply(Fn(lambda x, w: fn(x, w, None, stride, padding, output_padding, groups, dilation)),
                               ["conv-transpose"])(x[0], w)
    assert_equivalent(unbatched, fn(x[0], w, None, stride, padding, output_padding, groups, dilation), 1e-5)


def test_modules_and_graphs() -> None:
    deconv = torch.nn.ConvTranspose2d(3, 5, 4, stride=2, padding=1).eval()
    x = randn(1, 3, 6, 7)
    with torch.no_grad():
        assert_equivalent(rewrites.apply(deconv, ["conv-transpose"])(x), deconv(x), 1e-5)
    check(lambda x, w: F.conv_transpose1d(x, w, stride=2, padding=1), "conv-transpose", randn(1, 2, 8),
          randn(2, 3, 3, seed=1), graphs=True)


def test_a_weight_given_at_run_time_converts_to_core_ml(tmp_path: Path) -> None:
    ct = pytest.importorskip("coremltools")
    from buildsys.formats.coreml.frontend import frontend_patches
    from buildsys.formats.coreml.mil import MilProgram

    class HyperDecoder(torch.nn.Module):  # a hypernetwork's upsampler: its kernel made from a code at run time
        def __init__(self) -> None:
            super().__init__()
            torch.manual_seed(0)
            self.make = torch.nn.Linear(4, 3 * 2 * 3)

        def forward(self, x: torch.Tensor, code: torch.Tensor) -> torch.Tensor:
            kernel = self.make(code).reshape(3, 2, 3)
            return F.conv_transpose1d(x, kernel, stride=2, padding=1, output_padding=1)

    model, x, code = HyperDecoder().eval(), randn(1, 3, 10), randn(4, seed=3)
    inputs = [ct.TensorType(name="x", shape=tuple(x.shape)), ct.TensorType(name="code", shape=tuple(code.shape))]

    def convert(module: torch.nn.Module) -> Any:
        with frontend_patches():
            return ct.convert(torch.jit.trace(module, (x, code)), convert_to="mlprogram", inputs=inputs,
                              skip_model_load=True, compute_precision=ct.precision.FLOAT32,
                              minimum_deployment_target=ct.target.iOS16)

    with pytest.raises(ValueError, match="weight must be const"):
        convert(model)
    convert(rewrites.apply(model, ["conv-transpose"])).save(str(tmp_path / "m.mlpackage"))
    program = MilProgram.load(tmp_path / "m.mlpackage")
    got = program.evaluate({"x": x.numpy(), "code": code.numpy()}).outputs[program.output_names[0]]
    with torch.no_grad():
        np.testing.assert_allclose(got, model(x, code).numpy(), rtol=1e-5, atol=1e-5)
