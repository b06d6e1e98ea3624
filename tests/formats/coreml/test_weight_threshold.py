"""buildsys.formats.coreml.weights.threshold_for: an int8 Core ML package of a small model, whose layers under
coremltools' 2048-element threshold hold much of its weights, compresses them too (a Conv1d + GRU sensor model shipped
52 % int8 under an int8 name at 2048); a model whose large layers dominate keeps coremltools' threshold; a threshold
the target sets is kept."""

from __future__ import annotations

import numpy as np
import pytest

ct = pytest.importorskip("coremltools")
torch = pytest.importorskip("torch")

pytestmark = pytest.mark.coreml


class Sensor(torch.nn.Module):
    """A 1,440-weight convolution, a 4,096-weight linear and a 768-weight head: a third of it under 2048."""

    def __init__(self, wide: bool = False) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv1d(9, 32, 5, padding=2)
        self.body = torch.nn.Linear(32, 128)
        # 65,536 more weights: the small ones fall to 3 %
        self.wide = torch.nn.Sequential(torch.nn.Linear(128, 512), torch.nn.ReLU()) if wide else torch.nn.Identity()
        self.head = torch.nn.Linear(512 if wide else 128, 6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.conv(x)).mean(-1)
        return self.head(self.wide(torch.relu(self.body(h))))


def _program(wide: bool) -> object:
    x = torch.zeros(1, 9, 90)
    mlmodel = ct.convert(torch.jit.trace(Sensor(wide).eval(), x), convert_to="mlprogram", skip_model_load=True,
                         minimum_deployment_target=ct.target.iOS16,
                         inputs=[ct.TensorType(name="x", shape=tuple(x.shape), dtype=np.float32)])
    return mlmodel


def test_a_small_model_compresses_its_small_layers_and_a_large_one_keeps_coremltools_threshold() -> None:
    from coremltools.optimize.coreml import OpLinearQuantizerConfig, OptimizationConfig, linear_quantize_weights

    from buildsys.formats.coreml.weights import (DEFAULT_THRESHOLD, SMALL_MODEL_THRESHOLD, measure_program,
                                                 threshold_for)

    small = _program(wide=False)
    threshold = threshold_for(small._mil_program, None)  # type: ignore[attr-defined]
    assert threshold == SMALL_MODEL_THRESHOLD and threshold_for(small._mil_program, 4096) == 4096  # type: ignore[attr-defined]
    compressed = linear_quantize_weights(small, OptimizationConfig(global_config=OpLinearQuantizerConfig(
        mode="linear_symmetric", dtype="int8", weight_threshold=threshold)))
    held = measure_program(compressed._mil_program, "int8", threshold)
    assert held["share"] == 1.0, held  # every weight layer in int8 (its biases are not weight layers)
    at_default = measure_program(linear_quantize_weights(small, OptimizationConfig(global_config=OpLinearQuantizerConfig(
        mode="linear_symmetric", dtype="int8", weight_threshold=DEFAULT_THRESHOLD)))._mil_program, "int8",
        DEFAULT_THRESHOLD)
    assert at_default["share"] < 0.75, at_default  # what coremltools' threshold alone ships

    assert threshold_for(_program(wide=True)._mil_program, None) == DEFAULT_THRESHOLD  # type: ignore[attr-defined]
