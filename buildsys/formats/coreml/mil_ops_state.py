"""Reference implementations of MIL's state ops (iOS18 stateful programs): read_state, coreml_update_state.

A state input is a `State` the caller owns and passes to every evaluation (mil.py `evaluate(...,
states=)`), so it persists across calls as Core ML's `MLState` does. `read_state` returns a copy of
its value; `coreml_update_state` (what coremltools writes for the builder's `write_state`: it also
returns the value written) replaces it with the new value rounded to the state's dtype (Core ML
states are float16), so the next read sees exactly what a float16 buffer holds.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from buildsys.formats.coreml.mil_registry import Args, State, op

if TYPE_CHECKING:
    import numpy as np

    Array = np.ndarray


def _state(a: Args, name: str) -> State:
    value = a.values.get(name)
    if not isinstance(value, State):
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
