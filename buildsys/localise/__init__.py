"""Per-layer localisation: where an artifact's intermediates leave PyTorch's, by nn.Module path.

`localise` is the one entry point (the check calls it when an output misses its tolerance; accuracy
repair calls it for per-layer sensitivity): it runs the PyTorch module with forward hooks on the
reference inputs (`capture.py`), asks the artifact's runtime for its intermediates with their names
mapped to module paths (`Runtime.intermediates`, per format family; `names.py`), and compares them
layer by layer with the metric the check missed (`compare.py`). Runtimes that cannot show their
intermediates raise NotLocalisable saying why.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from buildsys.formats.runtime import NotLocalisable
from buildsys.localise.compare import Criterion, LayerRow, Localisation, Probe, compare_layers

if TYPE_CHECKING:
    import numpy as np
    import torch

    from buildsys.config.schema import Model

__all__ = ["Criterion", "LayerRow", "Localisation", "NotLocalisable", "Probe", "localise"]

#: Samples localisation runs: enough to see a fault, cheap on the failing path.
SAMPLES = 4


def localise(artifact: Path, runtime: str, module: "torch.nn.Module", inputs: dict[str, "np.ndarray"],
             model: "Model", root: Path = Path("."), tolerance: dict[str, Any] | None = None, fmt: str = "",
             samples: int = SAMPLES) -> Localisation:
    """Compare `artifact`, run in `runtime` (a runtime name: "onnxruntime", "openvino", "litert",
    "coreml-mil"; or a format name, "onnx-int8", for its runtime, Core ML's stand-in off macOS), with
    `module` layer by layer on the first `samples` of `inputs` (by input name, samples first); `model`
    is the signature (input order, a fixed batch). `tolerance` (one output's resolved limits) picks the metric and the limit a layer must meet;
    without it every layer is reported by max_rel and none is called the first divergence.

    Returns a Localisation: per-module rows (module path, its class, the artifact's op and tensor, the
    errors), `first` (the first module beyond the limit in PyTorch's order) and `worst` (the module that
    adds the most error). Raises NotLocalisable where the runtime cannot show intermediates."""
    import numpy as np
    import torch

    from buildsys.formats import get_runtime
    from buildsys.formats.runtime import fixed_batch
    from buildsys.localise.capture import module_outputs

    runtime, fmt = _runtime_of(runtime, fmt)
    count = min(samples, len(next(iter(inputs.values()))))
    order, reference, types = module_outputs(module, tuple(
        torch.from_numpy(np.ascontiguousarray(inputs[i.name][:count])) for i in model.inputs))
    probes: list[Probe] = []
    parts: list[list[Probe]] = []
    step = 1 if fixed_batch(model) == 1 else count  # a fixed-size first axis takes one sample per run
    for s in range(0, count, step):
        feeds = {name: np.asarray(value[s:s + step]) for name, value in inputs.items()}
        parts.append(get_runtime(runtime).intermediates(Path(artifact), model, Path(root), feeds, list(types)))
    for group in zip(*parts):
        first = group[0]
        if first.value.ndim and all(p.value.shape == first.value.shape for p in group):  # not a scalar
            probes.append(Probe(first.tensor, first.op, first.module, np.concatenate([p.value for p in group])))
    return compare_layers(probes, reference, order, types, Criterion.from_tolerance(tolerance), fmt or runtime, count)


def _runtime_of(name: str, fmt: str) -> tuple[str, str]:
    """(runtime, format label) for a runtime or a format name: a format runs in its runtime, or in that
    runtime's stand-in where it cannot run here (Core ML off macOS: the MIL reference interpreter)."""
    from buildsys.formats import formats, get_format, get_runtime

    if name not in formats():
        return name, fmt or name
    runtime = get_format(name).runtime
    if runtime is None:
        raise NotLocalisable(f"localisation not available for {name}: the format has no runtime")
    stand_in = get_runtime(runtime).stand_in
    if get_runtime(runtime).unavailable() and stand_in:
        runtime = stand_in
    return runtime, fmt or name
