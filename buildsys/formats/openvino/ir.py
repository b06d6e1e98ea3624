"""What the OpenVINO steps and the runtime share: the IR's file names and a quiet toolchain.

Imports neither a step module nor the runtime (docs/adding-a-format.md), and nothing heavy at
module level.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

#: The IR is two files: the graph (XML) and its weights (raw bytes) next to it, same stem.
XML = "model.xml"
BIN = "model.bin"

#: rt_info entries that describe how the IR was made rather than what it computes: convert_model
#: records its arguments (the input file's name) under conversion_parameters. Removed before
#: saving so the bytes depend only on the model and the toolchain's version (which is in the key).
VOLATILE_RT_INFO = ("conversion_parameters",)


@contextmanager
def telemetry_off() -> Iterator[None]:
    """Run the block with OpenVINO's and NNCF's usage telemetry declined.

    Both send events to Google Analytics unless told otherwise (`import openvino` alone sends one,
    and so does every `convert_model`), and openvino-telemetry writes a client id under ~/intel: a
    build must neither phone home nor write outside its scratch directory. openvino-telemetry
    declines when it sees CI=true (`disable_in_ci`, checked at each of those calls), NNCF when
    NNCF_CI is set at its import. Set for the block only; the worker process outlives the step.
    """
    saved = {k: os.environ.get(k) for k in ("CI", "NNCF_CI")}
    os.environ["CI"] = "true"
    os.environ["NNCF_CI"] = "1"
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def cpu_config() -> dict[str, str]:
    """compile_model settings for checks and benches: float32 inference on every host.

    On CPUs with AVX512-BF16 or AMX the CPU plugin otherwise runs float models in bfloat16, so the
    same fp32 IR would pass its check on one host and miss it on another. The IR's own precision
    (fp16-compressed weights, int8 FakeQuantize) is honoured either way.
    """
    return {"INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": "LATENCY"}


#: OpenVINO's CPU plugin fuses chains of elementwise ops into JIT "snippets"; a long one (a special function's
#: series, written out by a rewrite) can need more registers than the ISA has, and compile_model fails with "Can't
#: allocate registers for a snippet". Without snippets the same program compiles and computes the same values.
SNIPPETS_EXHAUSTED = "allocate registers for a snippet"
NO_SNIPPETS = {"SNIPPETS_MODE": "DISABLE"}


def compile_cpu(core: Any, model: Any) -> tuple[Any, dict[str, str] | None]:
    """`model` (a path or an ov.Model) compiled for the CPU plugin with `cpu_config`, and the settings added
    beyond it (None: none): where the snippets' registers run out, it is compiled again without snippets, which
    an app must then ask for too (the check says so in a caveat)."""
    try:
        return core.compile_model(model, "CPU", cpu_config()), None
    except RuntimeError as exc:
        if SNIPPETS_EXHAUSTED not in str(exc):
            raise
        return core.compile_model(model, "CPU", {**cpu_config(), **NO_SNIPPETS}), dict(NO_SNIPPETS)
