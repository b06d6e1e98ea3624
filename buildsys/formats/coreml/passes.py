"""The MIL pass pipeline of every Core ML conversion: coremltools' default passes, then modelbuild's own, each a
registered graph pass (coremltools' PassPipeline takes them by name)."""

from __future__ import annotations

from typing import Any, Callable


def pipeline(recurrent_weights_fp16: bool) -> Any:
    """coremltools' default pipeline, then `high_rank` (rank-6 reshape / transpose chains with a dynamic size
    folded to rank ≤ 5), `broadcast_constants` (a constant that repeats along an axis its reader broadcasts stored
    once), `uniform_constants` (a buffer of one value computed by a `fill`, not stored), then, where asked,
    `recurrent_fp16` (an iOS 16 float16 package's recurrent weights stored in float16)."""
    import coremltools as ct

    from buildsys.formats.coreml import broadcast_constants, high_rank, recurrent_fp16, uniform_constants

    chosen = ct.PassPipeline()
    _register(high_rank.PASS_NAME, high_rank.fold_block)
    chosen.append_pass(high_rank.PASS_NAME)
    _register(broadcast_constants.PASS_NAME, broadcast_constants.store_once_block)
    chosen.append_pass(broadcast_constants.PASS_NAME)
    _register(uniform_constants.PASS_NAME, uniform_constants.fill_block)
    chosen.append_pass(uniform_constants.PASS_NAME)
    if recurrent_weights_fp16:
        _register(recurrent_fp16.PASS_NAME, recurrent_fp16.store_block)
        chosen.append_pass(recurrent_fp16.PASS_NAME)
    return chosen


def _register(qualified: str, per_block: Callable[[Any], int]) -> None:
    """Register with coremltools (idempotent) a graph pass named `qualified` ('namespace::name') that applies
    `per_block` to each function of the program (it returns how many ops it changed) and, where any changed, drops
    the ops left unused."""
    from coremltools.converters.mil.mil.passes.graph_pass import AbstractGraphPass
    from coremltools.converters.mil.mil.passes.pass_registry import PASS_REGISTRY, register_pass

    namespace, name = qualified.split("::")

    class BlockPass(AbstractGraphPass):
        def apply(self, prog: Any) -> None:
            if sum(per_block(f) for f in prog.functions.values()):
                PASS_REGISTRY["common::dead_code_elimination"](prog)

    register_pass(namespace=namespace, override=True, name=name)(BlockPass)

