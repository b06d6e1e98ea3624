"""The MIL pass pipeline of every Core ML conversion: coremltools' default passes, then modelbuild's own, each a
registered graph pass (coremltools' PassPipeline takes them by name)."""

from __future__ import annotations

from typing import Any


def pipeline(recurrent_weights_fp16: bool) -> Any:
    """coremltools' default pipeline, then `uniform_constants` (a buffer of one value computed by a `fill`, not
    stored), then, where asked, `recurrent_fp16` (an iOS 16 float16 package's recurrent weights stored in float16)."""
    import coremltools as ct

    from buildsys.formats.coreml import recurrent_fp16, uniform_constants

    chosen = ct.PassPipeline()
    uniform_constants.register()
    chosen.append_pass(uniform_constants.PASS_NAME)
    if recurrent_weights_fp16:
        recurrent_fp16.register()
        chosen.append_pass(recurrent_fp16.PASS_NAME)
    return chosen
