"""An ONNX artifact's intermediate tensors for localisation: every node output that maps to a PyTorch
module becomes a graph output of a copy of the model, run in ONNX Runtime on the CPU provider.

Module paths come from the dynamo exporter's `pkg.torch.onnx.name_scopes` metadata where a node has it,
else from the legacy exporter's scoped node names (`/layers/layers.0/conv/Conv`), which quantization
keeps in the names of the nodes it adds (`…/Conv_quant`). OpenVINO reads the same names back
(buildsys.formats.openvino.intermediates).
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np

    from buildsys.localise import Probe


def node_module(node: object, modules: list[str]) -> str:
    """The module path of an ONNX node (NodeProto), or ""."""
    from buildsys.localise.names import from_name_scopes, from_scope

    for prop in getattr(node, "metadata_props", []):
        if prop.key == "pkg.torch.onnx.name_scopes":
            found = from_name_scopes(prop.value, modules)
            if found:
                return found
    return from_scope(getattr(node, "name", ""), modules)


def onnx_intermediates(path: Path, feeds: dict[str, "np.ndarray"], modules: list[str]) -> list["Probe"]:
    """Run a copy of the model at `path` whose graph outputs are every mapped node's outputs.

    The copy is written to a temporary directory beside links to the artifact's side files (external
    weights), so a model over protobuf's 2 GB limit is never serialized whole."""
    import numpy as np
    import onnx
    import onnxruntime as ort

    from buildsys.localise import Probe

    proto = onnx.load(str(path), load_external_data=False)
    graph = proto.graph
    declared = {o.name for o in graph.output}
    owners: dict[str, tuple[str, str]] = {}
    for node in graph.node:
        module = node_module(node, modules)
        if not module:
            continue
        for name in node.output:
            if name:
                owners[name] = (node.op_type, module)
                if name not in declared:
                    graph.output.append(onnx.ValueInfoProto(name=name))
    with tempfile.TemporaryDirectory(prefix="modelbuild-localise-") as tmp:
        for side in Path(path).parent.iterdir():
            if side.name != Path(path).name:
                (Path(tmp) / side.name).symlink_to(side.resolve())
        copy = Path(tmp) / Path(path).name
        onnx.save(proto, str(copy))
        options = ort.SessionOptions()
        options.log_severity_level = 3
        session = ort.InferenceSession(str(copy), options, providers=["CPUExecutionProvider"])
        types = {i.name: i.type for i in session.get_inputs()}
        ready = {name: np.ascontiguousarray(value, dtype=np.float16 if types.get(name) == "tensor(float16)" else None)
                 for name, value in feeds.items() if name in types}
        names = [o.name for o in session.get_outputs() if o.name in owners]
        values = session.run(names, ready)
    return [Probe(name, owners[name][0], owners[name][1], np.asarray(value, dtype=np.float32))
            for name, value in zip(names, values)
            if isinstance(value, np.ndarray) and value.dtype.kind == "f"]
