"""The converters of the rewrite matrix, each from a PyTorch module to an artifact run on this host.

Shared by benchmarks/rewrite_matrix.py (the before/after table) and benchmarks/op_matrix.py (each converter
alone, the anchor of the op matrix). Each `run_<converter>(module, args, work)` makes the artifact under `work`
with the converter's default call, runs it on `args` and returns every output as a NumPy array, in the module's
order; a refusal raises the converter's own exception, untouched (its text is what
buildsys.rewrites.for_refusal reads).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

def nchw(got: Any, shape: tuple[int, ...]) -> Any:
    """An output back in PyTorch's layout: onnx2tf hands rank ≥ 3 outputs back channels-last."""
    import numpy as np

    got = np.asarray(got)
    if got.shape != tuple(shape) and got.ndim == len(shape) >= 3 and np.moveaxis(got, -1, 1).shape == tuple(shape):
        return np.moveaxis(got, -1, 1)
    return got.reshape(shape)


def _numpy(args: tuple[Any, ...]) -> list[Any]:
    return [a.numpy() for a in args]


def output_count(module: Any, args: tuple[Any, ...]) -> int:
    """How many tensors `module(*args)` returns (a tuple or list of them, or one)."""
    import torch

    with torch.no_grad():
        out = module(*args)
    return len(out) if isinstance(out, (tuple, list)) else 1


def _onnx(module: Any, args: tuple[Any, ...], path: Path, dynamo: bool) -> Path:
    import torch

    names = [f"in{i}" for i in range(len(args))]
    outputs = [f"out{i}" for i in range(output_count(module, args))]
    if dynamo:
        program = torch.onnx.export(module, args, dynamo=True, input_names=names, output_names=outputs)
        program.save(str(path))
    else:
        torch.onnx.export(module, args, str(path), dynamo=False, opset_version=17, input_names=names,
                          output_names=outputs)
    return path


def _ort(path: Path, args: tuple[Any, ...]) -> list[Any]:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return list(session.run(None, {i.name: a for i, a in zip(session.get_inputs(), _numpy(args))}))


def run_onnx_legacy(module: Any, args: tuple[Any, ...], work: Path) -> list[Any]:
    return _ort(_onnx(module, args, work / "legacy.onnx", dynamo=False), args)


def run_onnx_dynamo(module: Any, args: tuple[Any, ...], work: Path) -> list[Any]:
    return _ort(_onnx(module, args, work / "dynamo.onnx", dynamo=True), args)


def run_coreml(module: Any, args: tuple[Any, ...], work: Path) -> list[Any]:
    import coremltools as ct
    import torch

    traced = torch.jit.trace(module, args, check_trace=False, strict=False)
    inputs = [ct.TensorType(name=f"in{i}", shape=tuple(a.shape)) for i, a in enumerate(args)]
    mlmodel = ct.convert(traced, inputs=inputs, convert_to="mlprogram",
                         compute_precision=ct.precision.FLOAT32, minimum_deployment_target=ct.target.iOS16)
    return _run_mil(mlmodel, args, work)


def run_coreml_export(module: Any, args: tuple[Any, ...], work: Path) -> list[Any]:
    """Core ML's other route: torch.export, decomposed to core ATen, then ct.convert of the program."""
    import coremltools as ct
    import torch

    program = torch.export.export(module, args, strict=False).run_decompositions()
    mlmodel = ct.convert(program, convert_to="mlprogram", compute_precision=ct.precision.FLOAT32,
                         minimum_deployment_target=ct.target.iOS16)
    return _run_mil(mlmodel, args, work)


def _run_mil(mlmodel: Any, args: tuple[Any, ...], work: Path) -> list[Any]:
    """Save a converted Core ML model and run it through the MIL reference interpreter: its outputs."""
    from buildsys.formats.coreml.mil import MilProgram

    path = work / "model.mlpackage"
    mlmodel.save(str(path))
    program = MilProgram.load(path)
    feeds = dict(zip(program.input_names, _numpy(args)))
    outputs = program.evaluate(feeds).outputs
    return [outputs[name] for name in program.output_names]


def run_executorch(module: Any, args: tuple[Any, ...], work: Path) -> list[Any]:
    import torch
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower
    from executorch.runtime import Runtime

    program = torch.export.export(module, args, strict=False)
    edge = to_edge_transform_and_lower(program, partitioner=[XnnpackPartitioner()])
    path = work / "model.pte"
    path.write_bytes(edge.to_executorch().buffer)
    method = Runtime.get().load_program(path).load_method("forward")
    return [t.numpy() for t in method.execute(list(args))]


def run_litert(module: Any, args: tuple[Any, ...], work: Path) -> list[Any]:
    import litert_torch

    path = work / "model.tflite"
    litert_torch.convert(module, args).export(str(path))
    return _tflite(path, args)


def _natural(name: str) -> list[Any]:
    """Sort key that puts out2 before out10."""
    import re

    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


def _tflite(path: Path, args: tuple[Any, ...]) -> list[Any]:
    """Run a .tflite file on `args`. With a signature (both converters write one), inputs and outputs go by
    name in natural order (in0…, args_0…; out0…, output_0…), which is the module's: the interpreter's own
    tensor order is not."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(path))
    if interpreter.get_signature_list():
        runner = interpreter.get_signature_runner()
        details = runner.get_input_details()
        names = sorted(details, key=_natural)
        result = runner(**{n: a.astype(details[n]["dtype"]) for n, a in zip(names, _numpy(args))})
        return [result[k] for k in sorted(result, key=_natural)]
    inputs = interpreter.get_input_details()
    for detail, value in zip(inputs, _numpy(args)):
        interpreter.resize_tensor_input(detail["index"], value.shape)
    interpreter.allocate_tensors()
    for detail, value in zip(inputs, _numpy(args)):
        interpreter.set_tensor(detail["index"], value.astype(detail["dtype"]))
    interpreter.invoke()
    return [interpreter.get_tensor(d["index"]) for d in interpreter.get_output_details()]


def run_openvino(module: Any, args: tuple[Any, ...], work: Path) -> list[Any]:
    import openvino as ov

    from buildsys.formats.openvino.ir import cpu_config

    try:
        path = _onnx(module, args, work / "dynamo.onnx", dynamo=True)
    except Exception:
        path = _onnx(module, args, work / "legacy.onnx", dynamo=False)
    compiled = ov.Core().compile_model(ov.convert_model(str(path)), "CPU", cpu_config())  # f32, as the check runs it
    result = compiled(_numpy(args))
    return [result[i] for i in range(len(compiled.outputs))]


def run_openvino_torch(module: Any, args: tuple[Any, ...], work: Path) -> list[Any]:
    """OpenVINO's own PyTorch frontend: `openvino.convert_model(module, example_input=args)`, on the CPU plugin."""
    import openvino as ov

    from buildsys.formats.openvino.ir import cpu_config

    compiled = ov.Core().compile_model(ov.convert_model(module, example_input=args), "CPU", cpu_config())
    result = compiled(_numpy(args))
    return [result[i] for i in range(len(compiled.outputs))]


def run_onnx2tf(module: Any, args: tuple[Any, ...], work: Path) -> list[Any]:
    import onnx2tf

    path = _onnx(module, args, work / "legacy.onnx", dynamo=False)
    onnx2tf.convert(input_onnx_file_path=str(path), output_folder_path=str(work / "tf"),
                    non_verbose=True, keep_shape_absolutely_input_names=[f"in{i}" for i in range(len(args))])
    return _tflite(work / "tf" / "legacy_float32.tflite", args)


RUNNERS: dict[str, Callable[[Any, tuple[Any, ...], Path], list[Any]]] = {
    "onnx-legacy": run_onnx_legacy, "onnx-dynamo": run_onnx_dynamo, "coreml": run_coreml,
    "coreml-export": run_coreml_export, "executorch": run_executorch, "litert": run_litert,
    "openvino": run_openvino, "openvino-torch": run_openvino_torch, "onnx2tf": run_onnx2tf}
