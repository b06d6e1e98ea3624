"""The "openvino" runtime: OpenVINO IR on OpenVINO's CPU plugin, in float32 inference precision."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path
from typing import TYPE_CHECKING, Any

from buildsys.errors import StepError
from buildsys.formats import get_format, register_runtime
from buildsys.formats.openvino.ir import compile_cpu, cpu_config, telemetry_off
from buildsys.status import Caveat, CaveatKind
from buildsys.formats.runtime import Runtime, Session, fixed_batch, loading

if TYPE_CHECKING:
    import numpy as np

    from buildsys.config.schema import Model
    from buildsys.localise import Probe


class OpenVinoSession(Session):
    """A compiled model fed by input name; outputs come back in the signature's order."""

    path: Path | None = None  # the IR it was compiled from, and the settings added to `cpu_config` (use_threads)
    extra: dict[str, str] | None = None

    def use_threads(self, threads: int | None) -> int | None:
        """The CPU plugin fixes its streams' threads at compile time: compile the IR again with `threads`."""
        if threads is None or self.path is None:
            return None
        import openvino as ov

        config = {**cpu_config(), **(self.extra or {}), "INFERENCE_NUM_THREADS": threads}
        self.__init__(ov.Core().compile_model(str(self.path), "CPU", config), self.model)  # type: ignore[misc]
        return threads

    def __init__(self, compiled: Any, model: Model):
        self.compiled = compiled
        self.request = compiled.create_infer_request()
        self.model = model
        self.inputs: dict[str, Any] = {}
        declared = {i.name for i in model.inputs}
        for port in compiled.inputs:
            name = next((n for n in sorted(port.get_names()) if n in declared), None)
            if name is None:
                raise StepError(f"the OpenVINO model's input {port.get_any_name()!r} is not in the signature "
                                f"({', '.join(sorted(declared))})")
            self.inputs[name] = port.get_element_type().to_dtype()
        # An IR converted with fixed shapes (dynamic_axes: false upstream) takes one sample per call.
        fixed_one = any(p.get_partial_shape().rank.is_static and p.get_partial_shape()[0].is_static
                        and p.get_partial_shape()[0].get_length() == 1 for p in compiled.inputs)
        self.max_batch = 1 if fixed_one else fixed_batch(model)
        by_name = {n: port for port in compiled.outputs for n in port.get_names()}
        wanted = [o.name for o in model.outputs]
        if all(n in by_name for n in wanted):
            self.outputs = [by_name[n] for n in wanted]
        else:  # a foreign IR without the signature's names: graph order
            self.outputs = list(compiled.outputs)[: len(wanted)]
            if len(self.outputs) < len(wanted):
                raise StepError(f"the OpenVINO model has {len(compiled.outputs)} output(s) but the signature "
                                f"declares {len(wanted)}")

    def run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        import numpy as np

        ready = {name: np.ascontiguousarray(feeds[name], dtype=dtype) for name, dtype in self.inputs.items()}
        results = self.request.infer(ready)
        # The request owns its output buffers and reuses them on the next call: copy.
        return [np.array(results[port], copy=True) for port in self.outputs]


class OpenVinoCpu(Runtime):
    """What the runtimes on OpenVINO's CPU plugin share (the tensor one here, the decoder LM one in formats/llm):
    the openvino module, installed by the `openvino` extra and imported with telemetry declined."""

    requires, extra = ("openvino",), "openvino"

    def preimport(self) -> None:
        """Import the toolchain with telemetry declined (a bench's warm-up import would otherwise send
        a usage event)."""
        self.openvino()

    @staticmethod
    def openvino() -> Any:
        """The openvino module: `import openvino` itself sends a usage event unless declined."""
        with telemetry_off():
            import openvino
        return openvino


@register_runtime
class OpenVinoRuntime(OpenVinoCpu):
    """OpenVINO's CPU plugin (float32 inference precision, the same numerics on every x86/ARM host)."""

    name = "openvino"

    def load(self, path: Path, model: Model, root: Path) -> Session:
        ov = self.openvino()
        path = Path(path)
        if not path.with_suffix(".bin").exists():
            raise StepError(f"the OpenVINO IR '{path.name}' has no weights file {path.with_suffix('.bin').name} next to it")
        with loading(f"OpenVINO could not load '{path.name}'"):
            compiled, extra = compile_cpu(ov.Core(), str(path))
        session = OpenVinoSession(compiled, model)
        session.path, session.extra = path, extra
        if extra:
            session.note(Caveat(CaveatKind.DEGRADED, f"compiled with {extra}",
                                "OpenVINO's CPU plugin could not allocate registers for a fused elementwise snippet of "
                                f"this program; it runs compiled with {extra}, which an app must pass to "
                                "compile_model too", self.name))
        return session

    def intermediates(self, path: Path, model: Model, root: Path, feeds: dict[str, np.ndarray],
                      modules: list[str]) -> list[Probe]:
        from buildsys.formats.openvino.intermediates import openvino_intermediates

        return openvino_intermediates(path, feeds, modules)

    def inspect(self, path: Path, model: Model, fmt: str) -> dict | None:
        """Facts read from model.xml with the standard library, so they hold without OpenVINO: the
        I/O names, the weights' element types and the FakeQuantize count each precision promises."""
        try:
            root = ET.parse(path).getroot()
        except (OSError, ET.ParseError) as exc:
            return {"facts": {}, "problems": [f"model.xml cannot be read: {exc}"]}
        layers = root.find("layers")
        types: dict[str, int] = {}
        consts: dict[str, int] = {}
        params: list[str] = []
        declared = {i.name for i in model.inputs}
        for layer in layers if layers is not None else []:
            kind = layer.get("type", "")
            types[kind] = types.get(kind, 0) + 1
            if kind == "Const":
                data = layer.find("data")
                et = data.get("element_type", "?") if data is not None else "?"
                consts[et] = consts.get(et, 0) + 1
            elif kind == "Parameter":  # tensor names sit on the output port; the layer name is a fallback
                # A port has every name its tensor had: an input whose first op OpenVINO folded into it (a Cast)
                # also carries that op's output name, in any order, so the signature's name is looked for
                port = layer.find("output/port")
                names = [n.strip() for n in (port.get("names", "") if port is not None else "").split(",") if n.strip()]
                params.append(next((n for n in names if n in declared), names[0] if names else layer.get("name", "")))
        facts = {"inputs": params, "fake_quantize": types.get("FakeQuantize", 0), "constants": consts}
        problems = []
        missing = [i.name for i in model.inputs if i.name not in params]
        if params and len(missing) == len(model.inputs):
            problems.append(f"the IR's inputs [{', '.join(params)}] are none of the signature's "
                            f"[{', '.join(i.name for i in model.inputs)}]")
        precision = get_format(fmt).precision
        if precision == "int8" and not facts["fake_quantize"] and not (consts.get("i8") or consts.get("u8")):
            problems.append("an int8 IR with neither FakeQuantize layers nor int8 weights: nothing was quantized")
        if precision == "fp16" and not consts.get("f16"):
            problems.append("an fp16 IR without float16 constants: the weights were not compressed")
        if precision == "fp32" and consts.get("f16"):
            problems.append(f"a float32 IR with {consts['f16']} float16 constants (saved with compress_to_fp16)")
        return {"facts": facts, "problems": problems}
