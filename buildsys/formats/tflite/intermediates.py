"""A .tflite file's intermediate tensors for localisation: LiteRT keeps every tensor
(`experimental_preserve_all_tensors`) on its builtin kernels (the XNNPACK delegate would fuse them out of
sight), int8 tensors dequantized with their own scale and zero point.

litert-torch names tensors after the module scopes they came from (`…Sequential_layers/…Block_1/…Conv2d_conv`:
`names.from_class_scopes`); onnx2tf's names say nothing a module path can be read from
(`model/tf.nn.convolution/convolution`), so its probes are unnamed and matched by value
(buildsys.localise.compare). A 4-D tensor is offered in its own layout and transposed NHWC → NCHW, and
the shapes pick one.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np

    from buildsys.localise import Probe


def litert_intermediates(session: Any, feeds: dict[str, "np.ndarray"], modules: list[str]) -> list["Probe"]:
    """Every float (or dequantized int8) op output of the file a LiteRtSession (`session`: its input
    matching and layout encoding) was loaded from, in execution order, one sample per run."""
    import numpy as np

    from buildsys.localise import Probe
    from buildsys.localise.names import from_class_scopes

    count = len(next(iter(feeds.values())))
    runs = [_one(session, {n: v[s:s + 1] for n, v in feeds.items()}) for s in range(count)]
    probes = []
    for group in zip(*runs):
        name, op, value = group[0]
        if all(v.shape == value.shape for _, _, v in group):
            stacked = np.concatenate([v for _, _, v in group])
            module = from_class_scopes(name, modules)
            probes.append(Probe(name, op, module, stacked))
            if stacked.ndim == 4:
                probes.append(Probe(f"{name} (as NCHW)", op, module, np.ascontiguousarray(stacked.transpose(0, 3, 1, 2))))
    return probes


def _one(session: Any, feeds: dict[str, "np.ndarray"]) -> list[tuple[str, str, "np.ndarray"]]:
    import numpy as np
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    interpreter = Interpreter(model_path=str(session.path), experimental_preserve_all_tensors=True,
                              experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
    session._bind(interpreter)
    session.runner(**{t.key: t.encode(feeds[name]) for name, t in session.inputs.items()})
    details = {d["index"]: d for d in interpreter.get_tensor_details()}
    out: list[tuple[str, str, Any]] = []
    for op in interpreter._get_ops_details():
        for index in op["outputs"]:
            d = details.get(int(index))
            if d is None:
                continue
            value = np.asarray(interpreter.get_tensor(int(index)))
            scale, zero = d.get("quantization", (0.0, 0))
            if value.dtype.kind in "iu" and scale:
                value = (value.astype(np.float32) - zero) * scale
            if value.dtype.kind == "f" and value.ndim:
                out.append((d["name"], op["op_name"], value.astype(np.float32)))
    return out
