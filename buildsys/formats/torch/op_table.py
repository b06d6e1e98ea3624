"""PyTorch's decomposition tables as an op table: the ops a refusal's decomposition answer can lower
(`Step.answers`, docs/lowering.md). Information for the planner, not a converter: no step accepts by it."""

from __future__ import annotations

from buildsys.formats.base import OpTable
from buildsys.formats.registry import register_op_table

register_op_table(OpTable("decomposable", ("torch",), "buildsys.lowering.decompose:decomposable_ops",
                          "PyTorch's decomposition tables (information: what decompose can lower)"))
