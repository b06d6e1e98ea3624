"""What every PT2E quantizer in modelbuild shares: integer values are never quantized, scales are floored where
PyTorch floors them, and the histogram observer's range search runs in plain Python numbers.

A quantizer annotates by op pattern (an `add`, a `mul`, a `clamp`), whatever the values' dtype. A model
computes integers with the same ops: T5's and WavLM's relative-position buckets (`abs`, `*`, `+`, `min` on
int64 positions), index arithmetic before a gather. An observer on an int64 tensor fails at the first
calibration call ("histogram_cpu" not implemented for 'Long'), and quantizing an index to int8 would change
it. `float_values_only` drops, after a quantizer annotated the graph, every annotation of a value whose
dtype is not floating point: inputs read from such nodes and outputs of such nodes.

`HistogramObserver` (the activation observer of XNNPACK's and litert-torch's static int8) picks each range at
`convert_pt2e` by `_non_linear_param_search`: a loop of up to 100,000 steps of 1e-5 quantile, each indexing a
torch tensor from Python (about 10 µs an access). On MobileViT's 300 observers that took past a 5-minute step
budget, and every trial of the keep-float search pays it again. `fast_range_search` installs the same search over a
list of the same float32 values, compared exactly as torch compares them (the threshold rounded to float32 first):
the same bins, the same ranges, tens of times faster.

XNNPACK's and litert-torch's configs floor every observer's scale at 2^-12 (`eps`): a tensor whose range is under
2^-12 × 255 ≈ 0.06 is quantized coarser than 8 bits, and values under 1.2e-4 to zero. A classifier head initialised
small (timm scales EVA-02's by 1e-3: logits of ~7e-4) came out of the .pte as exact zeros, the simulated PT2E program
too, and in the model matrix five more architectures (MobileNetV3, ConvNeXt, EfficientNet, ViT, a Whisper encoder)
missed static int8 until a repair or the dynamic fallback. `finer_scales` lowers the floor to PyTorch's own observer
default, float32's epsilon; XNNPACK and LiteRT run the finer scales as the PT2E program simulates them. A scale that
small can ask XNNPACK for a requantization it refuses (an output far smaller than its inputs): where the runtime
cannot prepare the program, the step quantizes again at the quantizer's own 2^-12 and says so (`COARSE_FLOOR`).

Torch and torchao are imported inside the functions: the registry imports every module when modelbuild starts.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch


def _is_float(model: "torch.fx.GraphModule", node: object) -> bool:
    """Whether a node's value is floating point: its traced value, or for a constant the quantizer made (an
    operand scalar turned into a tensor attribute, which has no traced value) the tensor itself."""
    val = getattr(node, "meta", {}).get("val")
    if val is None and getattr(node, "op", None) == "get_attr":
        val = getattr(model, str(getattr(node, "target", "")), None)
    dtype = getattr(val, "dtype", None)
    return dtype is None or dtype.is_floating_point  # unknown: left as the quantizer annotated it


def float_values_only(model: "torch.fx.GraphModule") -> list[str]:
    """Drop the annotations of integer (and boolean) values in an annotated graph, in place; returns the names of
    the nodes whose annotation changed."""
    from torchao.quantization.pt2e.quantizer.quantizer import Q_ANNOTATION_KEY

    changed = []
    for node in model.graph.nodes:
        annotation = node.meta.get(Q_ANNOTATION_KEY)
        if annotation is None:
            continue
        integer_inputs = [arg for arg in annotation.input_qspec_map if not _is_float(model, arg)]
        integer_output = annotation.output_qspec is not None and not _is_float(model, node)
        if not integer_inputs and not integer_output:
            continue
        for arg in integer_inputs:
            del annotation.input_qspec_map[arg]
        if integer_output:
            annotation.output_qspec = None
        changed.append(node.name)
    return changed


def fast_range_search() -> None:
    """Install `_non_linear_param_search` (torchao's HistogramObserver) over Python floats; idempotent."""
    from torchao.quantization.pt2e.observer import HistogramObserver

    if getattr(HistogramObserver._non_linear_param_search, "modelbuild", False):
        return
    HistogramObserver.original_param_search = HistogramObserver._non_linear_param_search
    HistogramObserver._non_linear_param_search = _non_linear_param_search


def _non_linear_param_search(self: Any) -> "tuple[torch.Tensor, torch.Tensor]":
    """torchao's HistogramObserver._non_linear_param_search (caffe2's NormMinimization), step for step, with the
    cumulative histogram as a list of its float32 values and each quantile threshold rounded to float32 before
    the comparison, as `tensor < python_float` rounds it: the result is the original's, bin for bin."""
    import numpy as np
    import torch

    assert self.histogram.size()[0] == self.bins, "bins mismatch"
    bin_width = (self.max_val - self.min_val) / self.bins
    total = torch.sum(self.histogram).item()
    cumulative = torch.cumsum(self.histogram, dim=0).tolist()  # float32 values, exact as Python floats
    f32 = np.float32
    stepsize = 1e-5
    alpha, beta = 0.0, 1.0
    start_bin, end_bin = 0, self.bins - 1
    norm_min = float("inf")
    while alpha < beta:
        next_alpha, next_beta = alpha + stepsize, beta - stepsize
        low, high = float(f32(next_alpha * total)), float(f32(next_beta * total))
        left, right = start_bin, end_bin
        while left < end_bin and cumulative[left] < low:
            left += 1
        while right > start_bin and cumulative[right] > high:
            right -= 1
        next_start_bin, next_end_bin = start_bin, end_bin
        if (left - start_bin) > (end_bin - right):
            next_start_bin = left
            alpha = next_alpha
        else:
            next_end_bin = right
            beta = next_beta
        if next_start_bin == start_bin and next_end_bin == end_bin:
            continue
        norm = self._compute_quantization_error(next_start_bin, next_end_bin)
        if norm > norm_min:
            break
        norm_min = norm
        start_bin, end_bin = next_start_bin, next_end_bin
    return self.min_val + bin_width * start_bin, self.min_val + bin_width * (end_bin + 1)


_non_linear_param_search.modelbuild = True  # type: ignore[attr-defined]


#: The `scale_floor` fact of an artifact quantized again at its quantizer's own floor, the runtime having refused
#: the requantization a float32-epsilon scale implied.
COARSE_FLOOR = "2^-12 (XNNPACK could not prepare the program at float32's epsilon)"


def finer_scales(config: Any) -> Any:
    """A PT2E `QuantizationConfig` (XNNPACK's, litert-torch's) with every observer's scale floor (`eps`, 2^-12 in
    theirs) at float32's epsilon, PyTorch's own observers' floor (see the module doc)."""
    import dataclasses

    import torch

    def floored(spec: Any) -> Any:
        made = getattr(spec, "observer_or_fake_quant_ctr", None)
        partial = getattr(made, "p", None)  # with_args(...)'s functools.partial
        if partial is None or "eps" not in partial.keywords:
            return spec
        kwargs = {**partial.keywords, "eps": torch.finfo(torch.float32).eps}
        return dataclasses.replace(spec, observer_or_fake_quant_ctr=partial.func.with_args(**kwargs))

    return dataclasses.replace(config, input_activation=floored(config.input_activation),
                               output_activation=floored(config.output_activation), weight=floored(config.weight))
