"""`sparsity:` on the float OpenVINO formats: magnitude pruning of the IR's constant weights.

NNCF 3.4's `nncf.prune` (magnitude and regularization-based) inserts masks into a PyTorch module for training
and refuses every other backend, so post-training pruning of an IR is done here on the graph: each float
Constant that feeds the weight input (port 1) of a Convolution, GroupConvolution, MatMul or a transposed
convolution, directly or through a Convert, is replaced by a pruned copy (`prune_search.magnitude_prune`).

OpenVINO's IR has no sparse storage: model.bin holds the zeros like any other value, so the artifact is as large
as the dense one and only a compressed copy (zip, a container layer) is smaller; the metrics record the deflate
size of model.bin to show that. The CPU plugin's CPU_SPARSE_WEIGHTS_DECOMPRESSION_RATE packs sparse weights at
compile time, but only int8 weights of fully-connected layers on CPUs with AMX (4th-generation Xeon and later):
it does nothing for these float IRs, and modelbuild does not set it.
"""

from __future__ import annotations

import tempfile
import zlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np
    import openvino

    from buildsys.formats.base import Step, StepContext

#: Operations whose input 1 is a weight.
WEIGHT_OPS = ("Convolution", "GroupConvolution", "MatMul", "ConvolutionBackpropData", "GroupConvolutionBackpropData")


def prune_ir(model: "openvino.Model", ratio: float, threshold: int) -> dict[str, Any]:
    """Prune `model`'s float weights (those with at least `threshold` elements) in place to `ratio`; returns the
    facts: tensors pruned and the share of zeros measured over them."""
    import numpy as np
    import openvino.opset13 as ops

    from buildsys.formats.prune_search import magnitude_prune, zero_share

    pruned: list[np.ndarray] = []
    for op in model.get_ordered_ops():
        if op.get_type_name() != "Constant" or not _feeds_weight(op):
            continue
        values = op.get_data()
        if values.dtype not in (np.float32, np.float16) or values.size < max(threshold, 1):
            continue
        weights = magnitude_prune(values, ratio)
        replacement = ops.constant(weights)
        replacement.set_friendly_name(op.get_friendly_name())
        op.output(0).replace(replacement.output(0))
        pruned.append(weights)
    return {"pruned_tensors": len(pruned), "measured_sparsity": zero_share(pruned)}


def _feeds_weight(op: Any) -> bool:
    for target in op.output(0).get_target_inputs():
        consumer = target.get_node()
        if consumer.get_type_name() in WEIGHT_OPS and target.get_index() == 1:
            return True
        if consumer.get_type_name() == "Convert" and _feeds_weight(consumer):  # a decompression Convert
            return True
    return False


def prune_model(step: "Step", ctx: "StepContext", model: "openvino.Model", fp16: bool) -> dict[str, Any]:
    """Prune the converted `model` in place at `sparsity` (or the ratio `auto` finds); returns the facts."""
    opts = ctx.options
    search: dict[str, Any] = {}
    ratio = opts.sparsity
    if ratio == "auto":
        ratio, search = _auto(step, ctx, model, fp16)
    facts = prune_ir(model, ratio, opts.weight_threshold)
    if not facts["pruned_tensors"]:
        raise step.fail(ctx, f"sparsity: no convolution or matrix-product weight has weight_threshold "
                             f"({opts.weight_threshold}) elements or more, so nothing was pruned; lower "
                             "weight_threshold or remove sparsity")
    return {"sparsity": ratio, **facts, **({"sparsity_search": search} if search else {})}


def deflated(bin_path: Path) -> int:
    """Size of model.bin deflated (zlib level 6, what zip uses): where the zeros of a pruned IR pay off."""
    return len(zlib.compress(bin_path.read_bytes(), 6))


def _auto(step: "Step", ctx: "StepContext", dense: "openvino.Model", fp16: bool) -> tuple[float, dict[str, Any]]:
    """`sparsity: auto`: each candidate saved and run by the CPU plugin against the model's PyTorch module."""
    import openvino as ov

    from buildsys.formats.openvino.ir import XML
    from buildsys.formats.openvino.runtime import OpenVinoRuntime
    from buildsys.formats.prune_search import search, session_outputs
    from buildsys.formats.torch.loading import load_module

    batch = ctx.data("validation")
    module = load_module(ctx.model, ctx.root, name=ctx.model_name, step=step.name)

    def save(model: "openvino.Model", out: Path) -> Path:
        out.mkdir(parents=True, exist_ok=True)
        ov.save_model(model, str(out / XML), compress_to_fp16=fp16)
        return out / XML

    def prune(ratio: float, out: Path) -> Path:
        candidate = dense.clone()
        prune_ir(candidate, ratio, ctx.options.weight_threshold)
        return save(candidate, out)

    def evaluate(path: Path) -> Any:
        assert batch is not None  # check_config requires it
        return session_outputs(OpenVinoRuntime().load(path, ctx.model, ctx.root), ctx.model, batch)

    with tempfile.TemporaryDirectory(prefix="sparsity-") as tmp:
        work = Path(tmp)
        return search(step, ctx, module, prune, evaluate, save(dense, work / "dense"), work)
