"""The MIL reference interpreter: load a saved .mlpackage into a MIL Program without Apple's runtime and evaluate it op by op in NumPy.

What it proves: the package's program (its ops, their wiring, its stored and compressed weights,
its declared precision) computes what the PyTorch model computes, with each op evaluated by its MIL
definition: inputs upcast to float32, the op computed, the result rounded once to the dtype the
program declares (so an fp16 program is emulated in fp16 storage, op by op). What it does not:
Apple's compiler, its kernels, their accumulation order and precision, and where ops run (CPU, GPU,
Neural Engine) are not exercised. Its numbers are the MIL reference's, never Apple's runtime's.

An op type it has no implementation for (or an op variant it refuses) makes the whole program
`MissingReference`, found before anything runs: "not run", never a guess.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Iterator, Literal

from buildsys.formats.coreml.mil_registry import Args, OpImpl, ProgramState, Value, numpy_dtype, table
from buildsys.formats.runtime import CannotRun

if TYPE_CHECKING:
    import numpy as np
    from coremltools.converters.mil.mil import Block, Function, Operation, Program, Var
    from coremltools.proto import Model_pb2

FP16_MAX = 65504.0
#: What the interpreter is, in the words every report uses for numbers it produced.
LABEL = "MIL reference interpreter (NumPy), not Apple's Core ML runtime"

Finding = Literal["overflow", "non-finite", "underflow"]


class MissingReference(CannotRun):
    """The program uses op types (or op variants) the interpreter has no reference implementation for."""

    def __init__(self, missing: dict[str, str]):
        self.missing = dict(sorted(missing.items()))
        names = ", ".join(f"'{t}'" + (f" ({why})" if why else "") for t, why in self.missing.items())
        verb = "has" if len(self.missing) == 1 else "have"
        super().__init__(f"not run: op{'s' if len(self.missing) > 1 else ''} {names} {verb} no reference "
                         "implementation in the MIL interpreter",
                         hint="the numbers would be a guess; docs/coreml-reference.md lists the ops it implements")

    @property
    def reason(self) -> str:
        """The why without the "not run: " prefix, for a check's `not_run` field."""
        return self.what.removeprefix("not run: ")


@dataclass(frozen=True)
class Fp16Finding:
    """An intermediate that left fp16's range (or turned inf/NaN) at one op."""

    kind: Finding
    op: str          # the op's name in the program
    op_type: str
    output: str      # the output var's name
    module: str      # the PyTorch module it belongs to, from its weights' names ("" when unknown)
    largest: float   # largest magnitude computed in float32 before rounding (overflow), else 0
    count: int       # elements affected

    def __str__(self) -> str:
        where = f"{self.op_type} '{self.op}'" + (f" (module {self.module})" if self.module else "")
        if self.kind == "overflow":
            return (f"fp16 overflow at {where}: {self.count} value(s) up to {self.largest:.4g} exceed fp16's "
                    f"largest value {FP16_MAX:g}")
        if self.kind == "underflow":
            return f"fp16 underflow at {where}: all {self.count} non-zero value(s) round to 0"
        return f"{self.count} inf/NaN value(s) first appear at {where} (its inputs were finite)"

    def as_dict(self) -> dict[str, object]:
        return {"kind": self.kind, "op": self.op, "op_type": self.op_type, "output": self.output,
                "module": self.module, "largest": self.largest, "count": self.count, "text": str(self)}


@dataclass(frozen=True)
class Intermediate:
    """One op output of an evaluation, in program order: for per-layer localisation."""

    name: str        # the var's name (what the program calls this tensor)
    op: str
    op_type: str
    module: str
    value: "np.ndarray"


@dataclass
class Evaluation:
    """What one evaluation produced: outputs by name, every intermediate when asked, fp16 findings."""

    outputs: dict[str, "np.ndarray"]
    intermediates: list[Intermediate] = field(default_factory=list)
    findings: list[Fp16Finding] = field(default_factory=list)

    def value(self, name: str) -> "np.ndarray":
        for item in self.intermediates:
            if item.name == name:
                return item.value
        raise KeyError(f"no intermediate named '{name}' (evaluate with keep=True)")


def implementations() -> dict[str, OpImpl]:
    """Every implemented op type (importing the op modules registers them)."""
    import importlib

    for part in ("", "_compressed", "_image", "_nn", "_recurrent", "_reduce", "_state", "_tensor"):
        importlib.import_module(f"buildsys.formats.coreml.mil_ops{part}")
    return table()


def load_program(path: Path) -> tuple["Program", "Model_pb2.Model"]:
    """The package's MIL Program (weights read from its blob files) and its protobuf spec, without Core ML."""
    import coremltools as ct
    from coremltools.converters.mil.frontend.milproto.load import load

    model = ct.models.MLModel(str(path), skip_model_load=True)
    spec = model.get_spec()
    if spec.WhichOneof("Type") != "mlProgram":
        raise CannotRun(f"'{Path(path).name}' is a {spec.WhichOneof('Type')} model, not an ML Program: the MIL "
                        "interpreter runs ML Programs only")
    program = load(spec, specification_version=spec.specificationVersion, file_weights_dir=model.weights_dir)
    return program, spec


class MilProgram:
    """One function of a loaded ML Program, ready to evaluate on NumPy inputs."""

    def __init__(self, program: "Program", function: str = "main"):
        if function not in program.functions:
            raise CannotRun(f"the package has no function '{function}' (it has {', '.join(sorted(program.functions))})")
        self.program = program
        self.function_name = function
        self.function: "Function" = program.functions[function]
        self._modules: dict[str, str] = {}
        self._constants: dict[str, tuple[Value, bool]] = {}
        self._dtypes: dict[str, "np.dtype | None"] = {}
        #: compressed weights (constexpr_* outputs) by op name, decoded at the first evaluation
        self.decoded: dict[str, list[tuple[Value, bool]]] = {}

    @classmethod
    def load(cls, path: Path, function: str | None = None) -> "MilProgram":
        """Load `path` and pick `function` (default: the package's default function, else "main")."""
        program, spec = load_program(path)
        default = spec.description.defaultFunctionName or "main"
        return cls(program, function or default)

    @property
    def functions(self) -> list[str]:
        return sorted(self.program.functions)

    @property
    def input_names(self) -> list[str]:
        return list(self.function.inputs)

    @property
    def output_names(self) -> list[str]:
        return [v.name for v in self.function.outputs]

    def operations(self) -> Iterator["Operation"]:
        """Every op of the function, nested blocks included, in program order."""
        yield from _walk(self.function)

    def op_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for operation in self.operations():
            counts[operation.op_type] = counts.get(operation.op_type, 0) + 1
        return dict(sorted(counts.items()))

    def missing(self) -> dict[str, str]:
        """Op types without an implementation ("" as the reason) or with a refused variant (its reason)."""
        impls = implementations()
        missing: dict[str, str] = {}
        for operation in self.operations():
            kind = operation.op_type
            if kind == "const" or kind in missing:
                continue
            impl = impls.get(kind)
            if impl is None:
                missing[kind] = ""
            elif impl.refuse is not None:
                why = impl.refuse(operation)
                if why:
                    missing[kind] = why
        return missing

    def require_all(self) -> None:
        """Raise MissingReference naming every op type that cannot run, before anything runs."""
        missing = self.missing()
        if missing:
            raise MissingReference(missing)

    @property
    def state_names(self) -> list[str]:
        """The function's state inputs (iOS18 `StateType`): fed through `evaluate(states=)`, not `feeds`."""
        from buildsys.formats.coreml.mil_ops_state import state_inputs

        return state_inputs(self.function)

    def new_states(self) -> dict[str, ProgramState]:
        """Zeroed buffers for every state input, in its declared shape and dtype (mil_ops_state.py)."""
        from buildsys.formats.coreml.mil_ops_state import zeroed_states
        return zeroed_states(self.function)

    def evaluate(self, feeds: dict[str, "np.ndarray"], keep: bool = False,
                 states: dict[str, ProgramState] | None = None) -> Evaluation:
        """Run the function on `feeds` (by input name; cast to each input's declared dtype). keep: also
        return every op output in program order (`Evaluation.intermediates`). states: a stateful program's
        state buffers (`new_states()`), updated by its coreml_update_state ops: they carry over to the next call."""
        import numpy as np

        self.require_all()
        stateful = self.state_names
        if sorted(feeds) != sorted(n for n in self.function.inputs if n not in stateful):
            raise CannotRun(f"function '{self.function_name}' takes inputs "
                            f"{[n for n in self.input_names if n not in stateful]}, got {sorted(feeds)}")
        if sorted(states or {}) != sorted(stateful):
            raise CannotRun(f"function '{self.function_name}' has states {stateful}, got {sorted(states or {})}")
        run = _Run(self, keep)
        for name, var in self.function.inputs.items():
            run.env[name] = states[name] if states and name in stateful else np.asarray(feeds[name]).astype(numpy_dtype(var))
        run.block(self.function)
        outputs = {v.name: np.asarray(run.env[v.name]) for v in self.function.outputs}
        return Evaluation(outputs, run.intermediates, run.findings)

    def constant(self, operation: "Operation") -> tuple[Value, bool]:
        """A const op's value as the interpreter holds it, and whether it is all finite (read once)."""
        import numpy as np

        name = operation.outputs[0].name
        if name not in self._constants:
            value = _const(operation.outputs[0].val)
            finite = not (isinstance(value, np.ndarray) and value.dtype.kind == "f" and not np.isfinite(value).all())
            self._constants[name] = (value, finite)
        return self._constants[name]

    def dtype_of(self, var: "Var") -> "np.dtype | None":
        """The NumPy dtype a var is declared with (None for lists and strings)."""
        if var.name not in self._dtypes:
            try:
                self._dtypes[var.name] = numpy_dtype(var)
            except Exception:  # coremltools raises assorted errors for non-tensor types
                self._dtypes[var.name] = None
        return self._dtypes[var.name]

    def module_of(self, operation: "Operation") -> str:
        """The PyTorch module an op belongs to, read from the names of the weights it consumes
        (coremltools names them after the state-dict key: `encoder_layer_0_fc1_weight_to_fp16`), or,
        for an op without weights (an activation, a residual add), from the nearest op upstream that
        has some (at most three ops back). Dots became underscores: `encoder_layer_0_fc1` is
        `encoder.layer.0.fc1` (or `encoder_layer.0…`: the names alone cannot tell). "" when unknown."""
        if operation.name not in self._modules:
            found, frontier = "", [operation]
            for _ in range(4):
                found = next((m for m in map(_module_from_weights, frontier) if m), "")
                if found:
                    break
                frontier = [v.op for op in frontier for v in _flat(op.inputs.values())
                            if v.op is not None and v.op.op_type != "const"]
            self._modules[operation.name] = found
        return self._modules[operation.name]


_SUFFIXES = re.compile(r"(_to_fp16|_to_fp32|_palettized|_quantized|_sparsified|_dequantized|_cast_fp16|_cast_fp32)+$")


def _module_from_weights(operation: "Operation") -> str:
    """The module prefix of the first weight-like const input (`fc_weight_to_fp16` → `fc`), or ""."""
    for name, var in operation.inputs.items():
        if name not in ("weight", "weight_ih", "gamma", "x", "y") or isinstance(var, (list, tuple)):
            continue
        producer = var.op
        if producer is None or not (producer.op_type == "const" or producer.op_type.startswith("constexpr_")):
            continue
        match = re.match(r"(?:p_)?(.+?)_(weight|weight_ih_l\d+|gamma|bias)$", _SUFFIXES.sub("", var.name))
        if match:
            return match.group(1)
    return ""


def _walk(block: "Block | Function") -> Iterator["Operation"]:
    for operation in block.operations:
        yield operation
        for nested in operation.blocks:
            yield from _walk(nested)


class _Run:
    """The state of one evaluation: values by var name, what was kept, what was found."""

    def __init__(self, program: MilProgram, keep: bool):
        self.program = program
        self.keep = keep
        self.env: dict[str, Value] = {}
        self.finite: dict[str, bool] = {}
        self.intermediates: list[Intermediate] = []
        self.findings: list[Fp16Finding] = []
        self.impls = implementations()

    def block(self, block: "Block | Function", inputs: list[Value] | None = None) -> list[Value]:
        """Evaluate a block's ops; a nested block (loop body, branch) gets its inputs bound first."""
        if inputs is not None:
            for var, value in zip(block.inputs, inputs):
                self.env[var.name] = value
        for operation in block.operations:
            self.op(operation)
        return [self.env[v.name] for v in block.outputs]

    def lookup(self, var: "Var | list[Var] | tuple[Var, ...]") -> Value:
        if isinstance(var, (list, tuple)):
            return tuple(self.lookup(v) for v in var)  # type: ignore[misc]
        if var.name in self.env:
            return self.env[var.name]
        if var.op is not None and var.op.op_type == "const":
            return _const(var.val)
        raise RuntimeError(f"MIL var '{var.name}' is read before any op produced it")

    def op(self, operation: "Operation") -> None:
        import numpy as np

        if operation.op_type == "const":
            name = operation.outputs[0].name
            self.env[name], self.finite[name] = self.program.constant(operation)
            return
        weights = operation.op_type.startswith("constexpr_")  # decoded once, then held like a const
        if weights and operation.name in self.program.decoded:
            for var, (value, finite) in zip(operation.outputs, self.program.decoded[operation.name]):
                self.env[var.name], self.finite[var.name] = value, finite
            return
        values = {name: self.lookup(var) for name, var in operation.inputs.items()}
        args = Args(operation, values, runner=self.block)
        with np.errstate(all="ignore"):
            raw = self.impls[operation.op_type].fn(args)
        results = raw if isinstance(raw, tuple) else (raw,)
        inputs_finite = all(self.finite.get(v.name, True) for v in _flat(operation.inputs.values()))
        for var, result in zip(operation.outputs, results):
            self.env[var.name] = value = self.round(operation, var, result, inputs_finite)
            if self.keep and not weights and isinstance(value, np.ndarray):
                self.intermediates.append(Intermediate(var.name, operation.name, operation.op_type,
                                                       self.program.module_of(operation), value))
        if weights:
            self.program.decoded[operation.name] = [(self.env[v.name], self.finite.get(v.name, True))
                                                    for v in operation.outputs]

    def round(self, operation: "Operation", var: "Var", result: Value, inputs_finite: bool) -> Value:
        """Round `result` once to the var's declared dtype, noting where fp16 loses it."""
        import numpy as np

        dtype = self.program.dtype_of(var)
        if dtype is None:  # lists, strings: not tensors, nothing to round
            return result
        array = np.asarray(result)
        if dtype.kind != "f":
            return array.astype(dtype)
        exact = array.astype(np.float32)
        out = exact.astype(dtype)
        self.finite[var.name] = finite = bool(np.isfinite(out).all())
        if dtype == np.float16:
            self.check_fp16(operation, var, exact, out)
        if not finite and inputs_finite:
            computed = int((~np.isfinite(exact)).sum())  # inf/NaN of the float32 result itself
            if computed:
                self.note("non-finite", operation, var, 0.0, computed)
        return out

    def check_fp16(self, operation: "Operation", var: "Var", exact: "np.ndarray", out: "np.ndarray") -> None:
        import numpy as np

        magnitude = np.abs(exact)
        beyond = np.isfinite(exact) & (magnitude > FP16_MAX)
        if beyond.any():
            self.note("overflow", operation, var, float(magnitude[beyond].max()), int(beyond.sum()))
        nonzero = int(np.count_nonzero(exact))
        if nonzero and not np.count_nonzero(out):
            self.note("underflow", operation, var, 0.0, nonzero)

    def note(self, kind: Finding, operation: "Operation", var: "Var", largest: float, count: int) -> None:
        self.findings.append(Fp16Finding(kind, operation.name, operation.op_type, var.name,
                                         self.program.module_of(operation), largest, count))


def _flat(items: object) -> Iterator["Var"]:
    for item in items:  # type: ignore[attr-defined]
        if isinstance(item, (list, tuple)):
            yield from item
        else:
            yield item


def _const(value: object) -> Value:
    """A const op's value as the interpreter holds it: arrays as arrays, scalars as 0-d arrays, strings as str."""
    import numpy as np

    if isinstance(value, (str, bytes)):
        return value.decode() if isinstance(value, bytes) else value
    if isinstance(value, np.ndarray) and value.dtype.kind in "US":
        return str(value.reshape(-1)[0]) if value.size == 1 else value
    return np.asarray(value)
