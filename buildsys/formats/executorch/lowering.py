"""An exported program lowered to an ExecuTorch .pte: XNNPACK's delegate where it can run, the portable kernels
elsewhere, and the refusals of a program the runtime could not load (shared by the .pte steps and the decoder
LM's ExecuTorch step)."""

from __future__ import annotations

from typing import Any

from buildsys.formats.base import Step, StepContext
from buildsys.formats.executorch.delegation import QuantizedOutsideDelegate, quantized_outside_delegates


def lower(step: Step, ctx: StepContext, program: Any) -> tuple[bytes, dict[str, Any]]:
    """An exported program handed to the XNNPACK delegate where it can run and serialized for the portable
    kernels (to_edge_transform_and_lower, to_executorch): the .pte's bytes, and how many delegate calls and
    which portable operators it holds. A lowering that fails, or an operator the runtime has no kernel for,
    fails the step.

    Runs without autograd: a .pte is an inference program, and with grad enabled every pass that meets a scan
    loop (a recurrent layer, formats/executorch/recurrent.py) re-derives the loop's backward graph, because the
    weights it closes over require grad. Sequencer2D's 36 loops, export → lowering → serialization: 57 + 132 + 29 s
    with autograd, 19 + 63 + 15 s without. Programs without control flow lower to the same bytes either way."""
    import torch

    from buildsys.formats.torch.provenance import shared_provenance

    # dozens of FX passes: their provenance copies were a sixth of the lowering's time
    with shared_provenance(), torch.no_grad():
        return _lowered(step, ctx, program)


def _lowered(step: Step, ctx: StepContext, program: Any) -> tuple[bytes, dict[str, Any]]:
    from executorch.exir import to_edge_transform_and_lower

    from buildsys.formats.executorch.contract import XNNPACK, kernel_refusal, portable_rank_refusal, standard_strides
    from buildsys.formats.executorch.recurrent import control_flow_xnnpack_partitioner

    try:
        edge = to_edge_transform_and_lower(standard_strides(program), partitioner=[control_flow_xnnpack_partitioner()])
    except Exception as exc:
        raise step.fail(ctx, f"lowering to ExecuTorch failed: {first_line(exc)}") from exc
    outside = quantized_outside_delegates(edge.exported_program().graph_module)
    if outside:
        raise QuantizedOutsideDelegate(outside)
    standard_strides(edge.exported_program())  # what the edge passes folded into constants too
    try:
        lowered = edge.to_executorch()
    except Exception as exc:
        raise step.fail(ctx, f"lowering to ExecuTorch failed: {first_line(exc)}") from exc
    plan = lowered.executorch_program.execution_plan[0]
    refusal = kernel_refusal(plan) or portable_rank_refusal(edge.exported_program().graph_module)
    if refusal:
        raise step.fail(ctx, refusal)
    delegated = sum(1 for d in plan.delegates if d.id == XNNPACK)
    portable = sorted({op.name for op in plan.operators})
    return bytes(lowered.buffer), {"xnnpack_delegates": delegated, "portable_operators": portable}


def first_line(exc: BaseException) -> str:
    """`Type: first meaningful line` of an exception (ExecuTorch's errors run to dozens of lines)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return f"{type(exc).__name__}: {lines[0][:300] if lines else ''}".rstrip(": ")
