"""Core ML outputs given the shapes PyTorch gives them, where coremltools' translation changed them.

coremltools sometimes gets an output's rank wrong while its values are right: a reduction to a scalar that is then
unsqueezed comes out [1, 1, 1, 1] where torch says [1] (masked.std, index_reduce's prod on OpInfo's samples), so
an app reading the documented shape breaks and the check rightly fails the artifact. The values are all there
(the same count), in torch's order, so where a converted program's output has static dims, a different shape than
torch's output on the same inputs and the same size, the program ends in a reshape to torch's shape. Programs
with flexible input shapes are left as they are (their output shapes are symbolic: nothing to compare).
"""

from __future__ import annotations

from math import prod
from typing import TYPE_CHECKING, Any, Mapping, Sequence

if TYPE_CHECKING:
    import numpy as np


def torch_output_shapes(module: Any, program_inputs: Mapping[str, Sequence[int]], names: Sequence[str],
                        example: Mapping[str, "np.ndarray"]) -> list[tuple[int, ...]] | None:
    """The shapes of `module`'s outputs (a TorchScript module or an ExportedProgram) on the example's inputs cut to
    the converted program's static input shapes; None where an input shape is not static or the example cannot be
    cut to it (nothing is compared then)."""
    import torch

    args = []
    for name in names:
        shape, array = program_inputs.get(name), example.get(name)
        if shape is None or array is None or any(not isinstance(n, int) for n in shape) or array.ndim != len(shape) \
                or any(n > have for n, have in zip(shape, array.shape)):
            return None
        args.append(torch.from_numpy(array[tuple(slice(0, n) for n in shape)].copy()))
    run = module.module() if hasattr(module, "graph_signature") else module
    with torch.no_grad():
        out = run(*args)
    leaves = out if isinstance(out, (tuple, list)) else (out,)
    return [tuple(int(n) for n in t.shape) for t in leaves if isinstance(t, torch.Tensor)]


def program_input_shapes(mlmodel: Any) -> dict[str, tuple[Any, ...]]:
    """The converted ML program's input shapes by name (symbolic dims as MIL's symbols)."""
    program = getattr(mlmodel, "_mil_program", None)
    if program is None:
        return {}
    return {name: tuple(var.shape) for name, var in program.functions["main"].inputs.items()}


def mismatched(mlmodel: Any, wanted: Sequence[tuple[int, ...]]) -> dict[int, tuple[int, ...]]:
    """Output index → torch's shape, for each static output of the program whose shape differs from torch's with
    the same number of values."""
    program = getattr(mlmodel, "_mil_program", None)
    if program is None:
        return {}
    outputs = program.functions["main"].outputs
    if len(outputs) != len(wanted):
        return {}
    out = {}
    for i, (var, shape) in enumerate(zip(outputs, wanted)):
        have = tuple(var.shape)
        if any(not isinstance(n, int) for n in have) or have == shape or prod(have) != prod(shape) or var.op is None:
            continue
        out[i] = shape
    return out


def reshaped(mlmodel: Any, fixes: Mapping[int, tuple[int, ...]], **convert: Any) -> Any:
    """`mlmodel` whose outputs at `fixes` end in a reshape to the given shapes (same names), converted again from
    its ML program with `convert`'s arguments (its compute precision already applied: float32 adds no casts)."""
    import coremltools as ct
    import numpy as np
    from coremltools.converters.mil import Builder as mb
    from coremltools.converters.mil.mil.scope import ScopeInfo, ScopeSource

    program = mlmodel._mil_program
    main = program.functions["main"]
    outputs = list(main.outputs)
    with main:
        for i, shape in fixes.items():
            var = outputs[i]
            name = var.name
            var.name = f"{name}_as_converted"
            scopes = [ScopeInfo(source=k, data=v) for k, v in var.op.scopes.items()
                      if k != ScopeSource.COREMLTOOLS_GRAPH_PASS]  # the frontend's scopes, which validation needs
            with mb.scope(*scopes):
                outputs[i] = mb.reshape(x=var, shape=np.array(shape, dtype=np.int32), name=name)
    main.set_outputs(outputs)
    return ct.convert(program, convert_to="mlprogram", compute_precision=ct.precision.FLOAT32, **convert)
