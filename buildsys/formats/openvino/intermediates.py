"""An OpenVINO IR's intermediate tensors for localisation: every op whose friendly name maps to a PyTorch
module gets its outputs added as model outputs, compiled on the CPU plugin like the check's session.

OpenVINO keeps the ONNX node names it converted from as friendly names (`/layers/layers.0/conv/Conv`,
and `…/Conv/WithoutBiases` for the convolution it splits from its bias add), and NNCF names its
FakeQuantize ops after the op they follow, so `names.from_scope` reads both.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np

    from buildsys.localise import Probe

_SKIP = {"Parameter", "Constant", "Result"}


def openvino_intermediates(path: Path, feeds: dict[str, "np.ndarray"], modules: list[str]) -> list["Probe"]:
    """Run the IR at `path` with every mapped op's float outputs added as outputs, in topological order."""
    import numpy as np

    from buildsys.formats.openvino.ir import compile_cpu, telemetry_off
    from buildsys.localise import Probe
    from buildsys.localise.names import from_scope

    with telemetry_off():
        import openvino as ov

    core = ov.Core()
    model = core.read_model(str(path))
    owners: list[tuple[str, str, str]] = []  # (friendly name, op type, module) per added output
    ports = []
    for op in model.get_ordered_ops():
        if op.get_type_name() in _SKIP:
            continue
        module = from_scope(op.get_friendly_name(), modules)
        if not module:
            continue
        for index, output in enumerate(op.outputs()):
            feeds_result = any(t.get_node().get_type_name() == "Result" for t in output.get_target_inputs())
            if output.get_element_type().is_real() and not feeds_result:
                ports.append(output)
                owners.append((f"{op.get_friendly_name()}:{index}", op.get_type_name(), module))
    declared = len(model.outputs)
    if ports:
        model.add_outputs(ports)
    compiled, _ = compile_cpu(core, model)
    request = compiled.create_infer_request()
    inputs = {}
    for port in compiled.inputs:
        name = next((n for n in sorted(port.get_names()) if n in feeds), None)
        if name is not None:
            inputs[name] = np.ascontiguousarray(feeds[name], dtype=port.get_element_type().to_dtype())
    results = request.infer(inputs)
    probes = []
    for index, (tensor, op_type, module) in enumerate(owners):  # added outputs follow the declared ones
        value = np.array(results[compiled.outputs[declared + index]], copy=True)
        probes.append(Probe(tensor, op_type, module, value.astype(np.float32)))
    return probes
