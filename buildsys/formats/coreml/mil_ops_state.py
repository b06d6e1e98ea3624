"""Reference implementations of MIL's state ops (iOS18 stateful programs): read_state, coreml_update_state.

A state input is a `ProgramState` the caller owns and passes to every evaluation (mil.py `evaluate(...,
states=)`), so it persists across calls as Core ML's `MLState` does. `read_state` returns a copy of
its value; `coreml_update_state` (what coremltools writes for the builder's `write_state`: it also
returns the value written) replaces it with the new value rounded to the state's dtype (Core ML
states are float16), so the next read sees exactly what a float16 buffer holds.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from buildsys.formats.coreml.mil_registry import Args, ProgramState, op

if TYPE_CHECKING:
    import numpy as np
    from coremltools.converters.mil.mil import Function

    Array = np.ndarray


def state_inputs(function: "Function") -> list[str]:
    """The names of a function's state inputs, in order."""
    from coremltools.converters.mil.mil.types.type_state import is_state

    return [name for name, var in function.inputs.items() if is_state(var.sym_type)]


def zeroed_states(function: "Function") -> dict[str, ProgramState]:
    """Zeroed buffers for every state input, in each state's declared shape and dtype (what a fresh
    `MLState` holds on a device is unspecified; the caller zeroes it, as the LLM runtimes do)."""
    import numpy as np
    from coremltools.converters.mil.mil import types

    out = {}
    for name in state_inputs(function):
        wrapped = function.inputs[name].sym_type.wrapped_type()
        out[name] = ProgramState(np.zeros(wrapped.get_shape(), dtype=np.dtype(types.nptype_from_builtin(wrapped.get_primitive()))))
    return out


def _state(a: Args, name: str) -> ProgramState:
    value = a.values.get(name)
    if not isinstance(value, ProgramState):
        raise RuntimeError(f"{a.op.op_type} '{a.op.name}': input '{name}' is not a state (pass the program's states "
                           "to evaluate(states=...))")
    return value


@op("read_state")
def read_state(a: Args) -> "Array":
    return _state(a, "input").value.copy()


@op("coreml_update_state")
def coreml_update_state(a: Args) -> "Array":
    import numpy as np

    state = _state(a, "state")
    value = a.tensor("value")
    if value.shape != state.value.shape:
        raise RuntimeError(f"coreml_update_state '{a.op.name}': value of shape {value.shape} for a state of shape "
                           f"{state.value.shape}")
    state.value = np.asarray(value).astype(state.value.dtype)
    return value
