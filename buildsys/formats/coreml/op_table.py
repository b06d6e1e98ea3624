"""coremltools' op table: the ATen ops its torch frontend converts, declared for op coverage (planning.coverage)."""

from __future__ import annotations

from buildsys.formats.base import OpTable
from buildsys.formats.registry import register_op_table


def torch_frontend_ops() -> list[str]:
    """The ATen op names coremltools' torch frontend converts (its TorchScript and torch.export frontends look them
    up), with the translations modelbuild adds to it for every conversion (formats/coreml/frontend.py)."""
    from coremltools.converters.mil.frontend.torch.ops import _TORCH_OPS_REGISTRY

    from buildsys.formats.coreml.frontend import frontend_patches

    with frontend_patches():
        return sorted(_TORCH_OPS_REGISTRY.name_to_func_mapping)




register_op_table(OpTable("coremltools", ("coremltools", "torch"), f"{__name__}:torch_frontend_ops",
                           "coremltools' torch frontend registry", version=5))
