"""The table of MIL op implementations the reference interpreter knows, and the view each op reads its inputs through.

An implementation is a NumPy function registered under one or more MIL op types with `@op(...)`.
It reads its inputs from `Args` (float tensors arrive as float32 whatever their declared type,
integers as int32/int64, strings and flags as Python values) and returns one array per output,
computed in float32; the interpreter (`mil.py`) rounds each output once to the dtype the program
declares for it. That is the whole fp16 emulation: upcast, compute, round once.

An implementation that covers only some variants of its op (an LSTM without cell clipping, an
interpolation mode it does not know) names the others in `refuse`, which the interpreter asks
before it executes anything, so an unsupported variant is "not run", like an unknown op.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Collection, TypeVar, Union

if TYPE_CHECKING:
    import numpy as np
    from coremltools.converters.mil.mil import Block, Operation, Var

    Array = np.ndarray
    Result = Union[np.ndarray, tuple[np.ndarray, ...]]

class ProgramState:
    """One state of a stateful program (iOS18 `StateType`): a buffer that persists across evaluations.

    The caller owns it and passes it to every evaluation; `read_state` copies `value` out and
    `coreml_update_state` replaces it, rounded to the state's dtype (Core ML states are float16)."""

    def __init__(self, value: "np.ndarray"):
        self.value = value


#: A MIL input value as the interpreter holds it: a tensor, a Python scalar or string, a tuple of
#: those (variadic inputs such as concat's `values`), or a ProgramState (a stateful program's state input).
Value = Union["np.ndarray", str, int, float, bool, tuple["np.ndarray", ...], ProgramState, None]
T = TypeVar("T")


class Args:
    """An op's inputs by name, with typed accessors (floats upcast to float32)."""

    def __init__(self, op: "Operation", values: dict[str, Value],
                 runner: "Callable[[Block, list[Value]], list[Value]] | None" = None):
        self.op = op
        self.values = values
        self._runner = runner

    def run_block(self, block: "Block", inputs: list[Value]) -> list[Value]:
        """Evaluate a nested block (a loop body, a branch) with its inputs bound to `inputs`."""
        if self._runner is None:
            raise RuntimeError(f"{self.op.op_type} '{self.op.name}' needs the interpreter to run its blocks")
        return self._runner(block, inputs)

    def has(self, name: str) -> bool:
        """Whether the program gives this (optional) input."""
        return self.values.get(name) is not None

    def tensor(self, name: str) -> "Array":
        """A tensor input; float types upcast to float32, integers and bools kept."""
        import numpy as np

        value = self.values.get(name)
        if value is None:
            raise self._missing(name)
        array = np.asarray(value)
        if array.dtype.kind == "f" and array.dtype != np.float32:
            return array.astype(np.float32)
        return array

    def optional(self, name: str) -> "Array | None":
        return self.tensor(name) if self.has(name) else None

    def tensors(self, name: str) -> list["Array"]:
        """A variadic input (concat's `values`, stack's `values`) as a list of tensors."""
        import numpy as np

        value = self.values.get(name)
        items = value if isinstance(value, tuple) else (value,)
        return [np.asarray(v).astype(np.float32) if np.asarray(v).dtype.kind == "f" else np.asarray(v)
                for v in items]

    def integer(self, name: str, default: int | None = None) -> int:
        return self._or_default(name, default, int)

    def integers(self, name: str, default: list[int] | None = None) -> list[int]:
        return self._or_default(name, None if default is None else list(default),
                                lambda t: [int(v) for v in t.reshape(-1)])

    def number(self, name: str, default: float | None = None) -> float:
        return self._or_default(name, default, float)

    def _or_default(self, name: str, default: T | None, read: "Callable[[Array], T]") -> T:
        """`read` of the tensor input `name`, else `default` (a KeyError where there is none)."""
        if self.has(name):
            return read(self.tensor(name))
        if default is None:
            raise self._missing(name)
        return default

    def _missing(self, name: str) -> KeyError:
        return KeyError(f"{self.op.op_type} '{self.op.name}' has no input '{name}'")

    def flag(self, name: str, default: bool = False) -> bool:
        return bool(self.tensor(name)) if self.has(name) else default

    def flags(self, name: str, rank: int) -> list[bool]:
        return [bool(v) for v in self.tensor(name).reshape(-1)] if self.has(name) else [False] * rank

    def text(self, name: str, default: str = "") -> str:
        value = self.values.get(name)
        return default if value is None else str(value)

    def out_dtype(self, index: int = 0) -> "np.dtype":
        """The NumPy dtype the program declares for output `index` (for ops whose result type is data)."""
        return numpy_dtype(self.op.outputs[index])


def numpy_dtype(var: "Var") -> "np.dtype":
    """The NumPy dtype of a MIL tensor or scalar Var (fp16 → float16, int32 → int32, bool → bool, …)."""
    import numpy as np
    from coremltools.converters.mil.mil import types

    return np.dtype(types.nptype_from_builtin(var.dtype))


@dataclass(frozen=True)
class OpImpl:
    """One implemented op type: its function, and what variants it refuses (a reason, or None)."""

    op_type: str
    fn: Callable[[Args], "Result"]
    refuse: Callable[["Operation"], str | None] | None = None
    module: str = ""


_OPS: dict[str, OpImpl] = {}

F = Callable[[Args], "Result"]


def op(*op_types: str, refuse: Callable[["Operation"], str | None] | None = None) -> Callable[[F], F]:
    """Decorator: register `fn` as the implementation of these MIL op types."""

    def deco(fn: F) -> F:
        for name in op_types:
            if name in _OPS:
                raise ValueError(f"two reference implementations of MIL op '{name}'")
            _OPS[name] = OpImpl(name, fn, refuse, fn.__module__)
        return fn

    return deco


def table() -> dict[str, OpImpl]:
    """Every registered implementation by op type (the op modules register themselves on import)."""
    return _OPS


def refuse_other(key: str, default: str, values: Collection[str], what: str = "") -> Callable[["Operation"], str | None]:
    """The `refuse` of an op implemented for some values of its const input `key` only (`default` where the
    program does not set it): any other is refused as '<what (the op type if not given)> <key> <value>'."""

    def refuse(operation: "Operation") -> str | None:
        value = const_value(operation, key) or default
        return None if value in values else f"{what or operation.op_type} {key} {value}"

    return refuse


def const_value(op: "Operation", name: str) -> object:
    """The value of a const input of `op` as the program stores it (None when absent or not const);
    for `refuse` hooks, which run before anything executes."""
    var = op.inputs.get(name)
    return None if var is None or isinstance(var, (list, tuple)) else var.val
