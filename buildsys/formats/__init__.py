"""Registry of formats, steps and runtimes, filled by discovering the format families.

Each subpackage of `buildsys.formats` is one format family (torch, onnx, tflite, coreml, serving):
its steps, the runtimes that check what they make, and its private helpers. `buildsys.nodes` holds
the steps of the nodes that are not formats (reference, check, bench). Every module of those
packages is imported on first use and registers what it defines, so adding a format is adding a
package (or a module to a family) with no list to edit elsewhere (docs/adding-a-format.md).
Modules import only pydantic and the standard library at top level, so discovery costs
milliseconds; toolchains are imported inside `Step._run` and `Runtime.load`.
"""

from __future__ import annotations

from buildsys.formats.base import Format, Step, StepContext, StepOptions
from buildsys.formats.registry import (formats, get_format, get_runtime, get_step, register, register_format,
                                       register_formats, register_runtime, register_variants, runtime_class, runtimes,
                                       steps)

__all__ = ["Format", "Step", "StepContext", "StepOptions", "register", "register_format", "register_formats",
           "register_runtime", "register_variants", "steps", "formats", "runtimes", "get_format", "get_step",
           "get_runtime", "runtime_class"]
