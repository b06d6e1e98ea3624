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

    from buildsys.formats.executorch.pattern_passes import pattern_passes_where_they_can_match
    from buildsys.formats.torch.provenance import shared_provenance

    # dozens of FX passes: their provenance copies were a sixth of the lowering's time; two build their patterns
    # at a first lowering, needed only where the graph holds their op (pattern_passes.py)
    with shared_provenance(), pattern_passes_where_they_can_match(), torch.no_grad():
        return _lowered(step, ctx, program)


def _lowered(step: Step, ctx: StepContext, program: Any) -> tuple[bytes, dict[str, Any]]:
    from executorch.exir import to_edge_transform_and_lower

    from buildsys.formats.executorch.contract import XNNPACK, kernel_refusal, portable_rank_refusal, standard_strides

    try:
        edge = to_edge_transform_and_lower(standard_strides(program), partitioner=partitioners(program))
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


def partitioners(program: Any) -> list[Any]:
    """XNNPACK's partitioners for a program, in the order ExecuTorch's own exports use them: a program quantized
    per call (PT2E's dynamic scheme: a `choose_qparams` node before each int8 layer) first gives every dynamically
    quantized layer a delegate of its own (XnnpackDynamicallyQuantizedPartitioner, per-op), then the rest of the
    graph to the control-flow-aware XnnpackPartitioner.

    One partitioner alone folds a dynamic layer into whatever delegate surrounds it, and XNNPACK then cannot run
    some of those delegates: a dynamically quantized convolution that reads a permute + reshape (MobileViTv2's
    unfolded patches) loads, then fails every call with "Propagating input shapes failed:
    xnn_status_invalid_parameter"; YOLO26n's dynamic .pte failed every call too, and MambaOut's did not lower
    ("Weight and Input should both be quantized"). Partitioned this way all three run and pass (docs/coverage.md).
    Static and float programs hold no `choose_qparams` and are partitioned as before (byte-identical .pte)."""
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackDynamicallyQuantizedPartitioner

    from buildsys.formats.executorch.recurrent import control_flow_xnnpack_partitioner

    whole = control_flow_xnnpack_partitioner()
    return [XnnpackDynamicallyQuantizedPartitioner(), whole] if quantized_per_call(program) else [whole]


def quantized_per_call(program: Any) -> bool:
    """Whether a program (ExportedProgram or GraphModule) quantizes activations as it runs: PT2E's dynamic scheme
    computes each int8 layer's input range with a `choose_qparams` op."""
    graph = getattr(program, "graph_module", program).graph
    return any(node.op == "call_function" and "choose_qparams" in str(node.target) for node in graph.nodes)


def first_line(exc: BaseException) -> str:
    """`Type: first meaningful line` of an exception (ExecuTorch's errors run to dozens of lines)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return f"{type(exc).__name__}: {lines[0][:300] if lines else ''}".rstrip(": ")
