"""What the ExecuTorch steps and runtime agree on: the method name and how to tell the runtime is missing.

Neutral ground: the steps (`program.py`) and the runtime (`runtime.py`) both import it, it imports neither.
"""

from __future__ import annotations

import importlib.util
from typing import Any

from buildsys.errors import not_installed
from buildsys.formats.base import OpTable
from buildsys.formats.registry import register_op_table

#: The one method every .pte made here exposes (torch.export's entry point keeps its name).
METHOD = "forward"
#: The id ExecuTorch gives the XNNPACK backend inside a program's delegate table.
XNNPACK = "XnnpackBackend"


def executorch_unavailable() -> str | None:
    """Why ExecuTorch cannot build or run here, or None (checked without importing it)."""
    return not_installed(["executorch"] if importlib.util.find_spec("executorch") is None else [], "executorch")


def runtime_kernels() -> frozenset[str]:
    """The operator kernels the ExecuTorch runtime linked into its Python bindings has registered
    (`aten::add.out`, `dim_order_ops::_clone_dim_order.out`…): the runtime the check loads a .pte in."""
    import executorch.runtime  # noqa: F401 - registers what the check's runtime registers
    from executorch.extension.pybindings import portable_lib

    return frozenset(portable_lib._get_operator_names())


def missing_kernels(operators: list[tuple[str, str]], kernels: frozenset[str]) -> list[str]:
    """The program's non-delegated operators ((name, overload) of its execution plan) that have no kernel in
    `kernels`, as `aten::_embedding_bag.out`: a .pte holding one fails to load (error 0x14, missing operator)."""
    names = {f"{name}.{overload}" if overload else name for name, overload in operators}
    return sorted(n for n in names if n not in kernels)


def kernel_refusal(plan: Any) -> str | None:
    """Why a lowered program (its execution plan) must not be delivered: the non-delegated operators the
    runtime has no kernel for, named now rather than as "error 0x14" when the check loads the .pte; None
    when every operator has one."""
    missing = missing_kernels([(op.name, op.overload) for op in plan.operators], runtime_kernels())
    if not missing:
        return None
    return (f"the program's operator{'s' if len(missing) > 1 else ''} {', '.join(missing)} "
            f"{'have' if len(missing) > 1 else 'has'} no kernel in the ExecuTorch runtime and "
            "XNNPACK did not take it: the .pte would fail to load (error 0x14, missing operator)")


#: Portable kernels that run only some ranks (ExecuTorch 1.5 `kernels/portable/cpu`): the edge op's name → the
#: input ranks it runs, and the ATen op a model calls at the other ranks (what a refusal names, and what the
#: `volumetric` rewrite removes). Its kernel is registered, so kernel_refusal does not see it: the .pte loads, then
#: fails at run time with error 0x12 (InvalidArgument).
PORTABLE_RANKS = {"convolution": ((3, 4), "aten::conv3d")}


def portable_rank_refusal(graph_module: Any) -> str | None:
    """Why a lowered edge program must not be delivered: an operator left to a portable kernel (not delegated) at
    an input rank that kernel does not run; None otherwise."""
    for node in graph_module.graph.nodes:
        name = getattr(node.target, "__name__", "").removeprefix("aten.").split(".")[0]  # 'aten.convolution.default'
        if node.op != "call_function" or name not in PORTABLE_RANKS:
            continue
        value = node.args[0].meta.get("val") if node.args and hasattr(node.args[0], "meta") else None
        ranks, called = PORTABLE_RANKS[name]
        if value is not None and value.dim() not in ranks:
            return (f"the ExecuTorch runtime's portable {name} kernel runs {' and '.join(f'{r - 2}-D' for r in ranks)} "
                    f"inputs only and XNNPACK did not take this {value.dim() - 2}-D one ({called}, node {node.name}): "
                    "the .pte would fail at run time (error 0x12)")
    return None


def fill(feeds: dict[str, Any], n: int) -> dict[str, Any]:
    """`feeds` with exactly `n` samples: cut, or padded by cycling through its own samples (a .pte has the
    static batch it was exported with; the int8 step's calibration and its repair search feed it so)."""
    import numpy as np

    out = {}
    for key, value in feeds.items():
        if len(value) < n:
            value = np.concatenate([value] * -(-n // max(len(value), 1)), axis=0)
        out[key] = np.ascontiguousarray(value[:n])
    return out


def kernel_ops() -> list[str]:
    """The ATen ops the ExecuTorch runtime in the Python bindings has kernels for."""
    return sorted({name.split("::", 1)[1].split(".", 1)[0] for name in runtime_kernels() if name.startswith("aten::")})




def xnnpack_ops() -> list[str]:
    """The edge ops XNNPACK's partitioner has a config for (information: what it may delegate)."""
    from executorch.backends.xnnpack.partition.config import ALL_PARTITIONER_CONFIGS

    # Each config names the one edge op it may delegate (`addmm.default`); it may still decline a node (a
    # dtype, a shape), so this is what XNNPACK can take, not what it will.
    return sorted({config.target_name.split(".", 1)[0] for config in ALL_PARTITIONER_CONFIGS})




register_op_table(OpTable("executorch", ("executorch", "torch"), f"{__name__}:kernel_ops",
                           "the ExecuTorch runtime's kernels",
                           ranks=tuple((op, ranks, called) for op, (ranks, called) in PORTABLE_RANKS.items())))
register_op_table(OpTable("xnnpack", ("executorch", "torch"), f"{__name__}:xnnpack_ops",
                           "XNNPACK's partitioner configs (information: what it may delegate)"))


def standard_strides(program: Any) -> Any:
    """`program` with every weight, buffer and lifted constant that has a stride of 0 (a broadcast view, or a size-1
    dim NumPy strided 0: `np.arange(n)[:, None]`) copied to standard strides, in place. ExecuTorch's emitter
    serializes strides and refuses 0 ("0 in strides is not supported for ExecuTorch"); the values are the same."""
    import torch

    for table in (program.state_dict, program.constants):
        for name, value in list(table.items()):
            if isinstance(value, torch.Tensor) and 0 in value.stride():
                copied = value.clone(memory_format=torch.contiguous_format)
                table[name] = torch.nn.Parameter(copied, value.requires_grad) \
                    if isinstance(value, torch.nn.Parameter) else copied
    return program


def loads(buffer: bytes) -> bool:
    """Whether the ExecuTorch runtime loads the program's method (its delegates initialised: XNNPACK refuses a
    requantization it has no kernel for there, not when the program is lowered)."""
    from executorch.runtime import Runtime

    try:
        Runtime.get().load_program(buffer).load_method(METHOD)
    except Exception:  # noqa: BLE001 - the runtime's refusal is the answer, whatever its type
        return False
    return True
