"""The web formats: an ONNX model (fp32, fp16 or int8) packaged for ONNX Runtime Web in a browser.

The artifact directory (see `artifact.py`) holds `model.onnx`, `model.js` and `signature.json`. The
step checks what ONNX Runtime Web's wasm backend cannot run and says so at build time rather than in
a user's browser: operators from custom domains, an IR version newer than the pinned release loads,
inputs or outputs of a type an ort.Tensor cannot carry, and a model past protobuf's 2 GB. It repairs
what it can: weights in a model.onnx.data side file are embedded, because a page fetches one URL
and onnxruntime-web only reads side files when the caller passes them explicitly.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from buildsys.formats import register_formats, register_variants
from buildsys.formats.base import Format, Step, StepContext, StepOptions
from buildsys.formats.web import artifact

if TYPE_CHECKING:
    import onnx

_LAYOUT = ("ONNX Runtime Web artifact: {} with model.js (an ES-module loader: load(url), predict(model, "
           "inputs)) and signature.json, checked in headless Chromium on the wasm backend.")
WEB = register_formats(Format.variants(
    "web", {
        "fp32": _LAYOUT.format("model.onnx"),
        "fp16": _LAYOUT.format("model.onnx (float16 weights and arithmetic)"),
        "int8": _LAYOUT.format("model.onnx (int8-quantized)"),
    }, filename=artifact.MODEL_FILE, runtime="ort-web-chromium"))

#: protobuf's limit on one serialized message: past it a model needs external data, which a page
#: would have to fetch and hand to onnxruntime-web itself (and wasm32 memory is 4 GB in all).
MAX_BYTES = 2**31 - 1


@register_variants({"fp32": "onnx", "fp16": "onnx-fp16", "int8": "onnx-int8"})
class WebFromOnnx(Step):
    """Package an ONNX model (fp32, fp16 or int8) for ONNX Runtime Web: one-file model, loader, signature."""

    produces = "web"
    packages = ("onnx",)
    toolchain = "onnx"
    version = 1
    shipped_files = artifact.LOADER_PARTS
    description = "ONNX model checked against ONNX Runtime Web's wasm backend, with model.js and signature.json."
    Options = StepOptions

    def _run(self, ctx: StepContext[StepOptions]) -> dict[str, Any]:
        import onnx

        from buildsys.formats.onnx.onnxfile import finish, save, uses_external_data

        src = Path(str(ctx.input_path))
        embedded = uses_external_data(src)
        proto = onnx.load(str(src), load_external_data=True)  # the side file's tensors move into the proto
        problems = web_problems(proto)
        if problems:
            raise self.fail(ctx, "ONNX Runtime Web cannot run this model: " + "; ".join(problems))
        path = save(proto, ctx.out_dir, external=False)
        metrics = finish(self, ctx, path)
        (ctx.out_dir / artifact.LOADER_FILE).write_bytes(artifact.loader())
        sig = signature(proto, ctx)
        (ctx.out_dir / artifact.SIGNATURE_FILE).write_text(json.dumps(sig, indent=2) + "\n", encoding="utf-8")
        return {**metrics, "embedded_external_data": embedded,
                "loader_bytes": (ctx.out_dir / artifact.LOADER_FILE).stat().st_size,
                "inputs": {i["name"]: i["type"] for i in sig["inputs"]}}


def web_problems(proto: onnx.ModelProto) -> list[str]:
    """What keeps onnxruntime-web's wasm backend from loading or feeding `proto` (empty: nothing)."""
    problems: list[str] = []
    if proto.ir_version > artifact.MAX_IR_VERSION:
        problems.append(f"IR version {proto.ir_version} is newer than onnxruntime-web {artifact.ORT_WEB_VERSION} loads "
                        f"({artifact.MAX_IR_VERSION}): export it with an older onnx/torch or a lower opset")
    foreign = sorted({n.domain for n in _all_nodes(proto.graph)} - set(artifact.DOMAINS) - set(_local_functions(proto)))
    if foreign:
        ops = sorted({f"{n.domain}::{n.op_type}" for n in _all_nodes(proto.graph) if n.domain in foreign})
        problems.append(f"operators of custom domains ({', '.join(ops[:5])}) have no kernels in the browser "
                        "(custom-op libraries cannot be loaded there)")
    inits = {t.name for t in proto.graph.initializer}
    for role, values in (("input", [v for v in proto.graph.input if v.name not in inits]),
                         ("output", list(proto.graph.output))):
        for value in values:
            kind = value.type.WhichOneof("value")
            elem = value.type.tensor_type.elem_type if kind == "tensor_type" else None
            if elem not in artifact.TENSOR_TYPES:
                import onnx

                what = onnx.TensorProto.DataType.Name(elem) if elem else (kind or "untyped")
                problems.append(f"{role} '{value.name}' is {what}, which an ort.Tensor cannot carry to the wasm "
                                f"backend (supported: {', '.join(sorted(set(artifact.TENSOR_TYPES.values())))})")
    size = proto.ByteSize()
    if size > MAX_BYTES:
        problems.append(f"the model is {size / 2**30:.1f} GB: past the 2 GB a browser can load as one ONNX file "
                        "(quantize it, e.g. format web-int8)")
    return problems


def _all_nodes(graph: onnx.GraphProto) -> list[onnx.NodeProto]:
    """Every node, subgraphs (If/Loop/Scan bodies) included."""
    nodes = []
    for node in graph.node:
        nodes.append(node)
        for attr in node.attribute:
            for sub in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs):
                nodes += _all_nodes(sub)
    return nodes


def _local_functions(proto: onnx.ModelProto) -> list[str]:
    """Domains of model-local functions: ONNX Runtime inlines them, so they need no kernels."""
    return [f.domain for f in proto.functions]


def signature(proto: onnx.ModelProto, ctx: StepContext[StepOptions]) -> dict[str, Any]:
    """signature.json: every graph input and output with its ort.Tensor type and shape.

    Shapes come from the graph (what the file accepts): a fixed dim is a number, a dynamic one the
    signature's axis name (else the graph's symbol, else null)."""
    specs = {i.name: list(i.shape) for i in ctx.model.inputs}  # outputs declare no shape in deploy.yaml
    inits = {t.name for t in proto.graph.initializer}

    def describe(value: Any) -> dict[str, Any]:
        dims = value.type.tensor_type.shape.dim
        named = specs.get(value.name) or []
        shape: list[Any] = []
        for i, dim in enumerate(dims):
            if dim.HasField("dim_value"):
                shape.append(dim.dim_value)
            else:
                want = named[i] if i < len(named) and isinstance(named[i], str) else None
                shape.append(want or (dim.dim_param if dim.HasField("dim_param") else None))
        return {"name": value.name, "type": artifact.TENSOR_TYPES[value.type.tensor_type.elem_type], "shape": shape}

    return {"inputs": [describe(v) for v in proto.graph.input if v.name not in inits],
            "outputs": [describe(v) for v in proto.graph.output]}
