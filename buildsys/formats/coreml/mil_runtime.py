"""The "coreml-mil" runtime: .mlpackage files run through the MIL reference interpreter (any OS), labelled as not Apple's runtime.

It feeds a package exactly as `CoreMLSession` does on macOS (image inputs become their 8-bit pixels,
which the program's own preprocessing ops scale and shift; float16 I/O is cast), evaluates the
chosen function op by op (`mil.py`), and collects fp16 findings (overflow, inf/NaN, underflow) by
op and PyTorch module over every sample it ran. Its numbers say what the program computes under
MIL's definitions, not what Apple's compiler and kernels compute on a device: reports must say
"MIL reference" wherever they show them (`LABEL`, `diagnostics()`).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from buildsys.formats import register_runtime
from buildsys.formats.coreml.runtime import PackageSession
from buildsys.formats.runtime import CannotRun, Runtime

if TYPE_CHECKING:
    import numpy as np

    from buildsys.config.schema import Model
    from buildsys.formats.coreml.mil import Fp16Finding, MilProgram
    from buildsys.localise import Probe

#: The words a check's status adds to "passed" when these numbers passed: "passed (MIL reference, not
#: Apple's runtime)".
STATUS = "MIL reference, not Apple's runtime"
#: What the numbers of this runtime are not: said next to them in every report.
NOT_EXERCISED = ("Apple's compiler, its kernels, their accumulation order and precision, and compute-unit "
                 "placement (CPU / GPU / Neural Engine) are not exercised")


class MilSession(PackageSession):
    """A package's function evaluated by the MIL reference interpreter, fed like Core ML feeds it."""

    def __init__(self, program: "MilProgram", model: "Model", facts: dict[str, Any]):
        super().__init__(model, facts)
        self.program = program
        self.compute_precision: str = facts.get("compute_precision", "")
        self.samples = 0
        self._findings: dict[tuple[str, str, str], "Fp16Finding"] = {}

    def ready(self, feeds: dict[str, "np.ndarray"]) -> dict[str, "np.ndarray"]:
        """The feeds as Core ML sees them: an 8-bit image becomes its pixels, as floats."""
        import numpy as np

        from buildsys.formats.coreml.runtime import image_pixels

        ready: dict[str, np.ndarray] = {}
        for name, array in feeds.items():
            if name in self.images:
                ready[name] = np.stack([image_pixels(sample, self.scale, self.bias) for sample in array])
            else:
                ready[name] = np.asarray(array)
        return ready

    def run(self, feeds: dict[str, "np.ndarray"]) -> list["np.ndarray"]:
        import numpy as np

        result = self.program.evaluate(self.ready(feeds))
        self.samples += len(next(iter(feeds.values())))
        for finding in result.findings:
            self._merge(finding)
        return [np.asarray(result.outputs[n], dtype=np.float32) for n in self.output_names]

    def _merge(self, finding: "Fp16Finding") -> None:
        from dataclasses import replace

        key = (finding.kind, finding.op, finding.output)
        seen = self._findings.get(key)
        self._findings[key] = finding if seen is None else replace(
            seen, largest=max(seen.largest, finding.largest), count=seen.count + finding.count)

    @property
    def fp16_findings(self) -> list["Fp16Finding"]:
        """fp16 findings over every sample run so far, one per (kind, op, output)."""
        return list(self._findings.values())

    def findings(self) -> list[dict[str, object]]:
        """The fp16 findings for the check: an overflow or an inf/NaN that an op made from finite inputs
        fails it (the Neural Engine computes in fp16); an underflow is reported only. A program that computes in
        float32 is not run in fp16 anywhere: an inf it makes where the reference interpreter made one too is the
        program's own (a branch a `where` then discards, as an unrolled recurrence's unused terms), reported only;
        one that reaches an output fails the output's comparison."""
        fp32 = self.compute_precision == "float32"
        return [{**f.as_dict(), "fails": f.kind == "overflow" or (f.kind != "underflow" and not fp32)}
                for f in self.fp16_findings]

    def diagnostics(self) -> dict[str, Any]:
        """What a check adds to its metrics next to the numbers (key "reference"): what computed them,
        what that does not exercise, and the fp16 findings by op and module."""
        from buildsys.formats.coreml.mil import LABEL

        return {"status": STATUS, "interpreter": LABEL, "not_exercised": NOT_EXERCISED, "function": self.program.function_name,
                "compute_precision": self.compute_precision, "ops": sum(self.program.op_counts().values()),
                "samples": self.samples, "fp16_findings": [f.as_dict() for f in self.fp16_findings]}


@register_runtime
class CoreMLReference(Runtime):
    """Core ML packages through the MIL reference interpreter (NumPy; any OS): not Apple's runtime."""

    name = "coreml-mil"
    packages = ("coremltools", "numpy")
    label = STATUS
    not_exercised = NOT_EXERCISED

    requires, extra = ("coremltools",), "coreml"

    def load(self, path: Path, model: "Model", root: Path, function: str | None = None) -> MilSession:
        """A session on `function` of the package (default: its default function, else "main").
        Raises MissingReference (a CannotRun: the check says "not run") naming every op type the
        interpreter has no implementation for, before anything runs."""
        why = self.unavailable()
        if why:
            raise CannotRun(why)
        from buildsys.formats.coreml.mil import MilProgram
        from buildsys.formats.coreml.runtime import inspect_mlpackage

        program = MilProgram.load(Path(path), function)
        program.require_all()
        return MilSession(program, model, inspect_mlpackage(Path(path)))

    def intermediates(self, path: Path, model: "Model", root: Path, feeds: dict[str, "np.ndarray"],
                      modules: list[str]) -> "list[Probe]":
        """Every op output the interpreter computes (all are visible here). An op that reads named
        weights (coremltools names them after state-dict keys) is mapped to their module; the others
        (activations, and weights a conversion fused, such as a Conv with its BatchNorm: `const_0`)
        stay unnamed and are matched by value (buildsys.localise.compare)."""
        import numpy as np

        from buildsys.formats.coreml.mil import _module_from_weights
        from buildsys.localise import Probe
        from buildsys.localise.names import from_underscored

        session = self.load(path, model, root)
        direct = {op.name: _module_from_weights(op) for op in session.program.operations()}
        result = session.program.evaluate(session.ready(feeds), keep=True)
        probes = []
        for item in result.intermediates:
            module = from_underscored(direct.get(item.op, ""), modules)
            if item.value.dtype.kind == "f":
                probes.append(Probe(item.name, item.op_type, module, np.asarray(item.value, dtype=np.float32)))
        return probes

    def inspect(self, path: Path, model: "Model", fmt: str) -> dict | None:
        """The same structural facts and problems as the "coreml" runtime's inspection."""
        from buildsys.formats.coreml.runtime import CoreML

        return CoreML().inspect(path, model, fmt)
