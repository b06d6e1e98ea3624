"""The onnx-fp16 format: an ONNX model with float16 weights and arithmetic (float32 I/O by default)."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Optional, Union

from pydantic import Field

from buildsys.formats import register, register_format
from buildsys.formats.base import Format, SearchingOptions, Step, StepContext
from buildsys.formats.keep_float import searched
from buildsys.formats.onnx.optimized import FLOAT_ONNX

if TYPE_CHECKING:
    from buildsys.config.schema import Model

ONNX_FP16 = register_format(Format(
    name="onnx-fp16", family="onnx", precision="fp16", filename="model.onnx", runtime="onnxruntime",
    description="ONNX model converted to float16 (half the weight size; fast on GPUs and fp16-capable NPUs).",
))
_CHUNK = 64 << 20  # bytes of float32 converted at a time (a multiple of 4)


@register
class OnnxFp16FromOnnx(Step):
    """Convert an ONNX model's float32 tensors and ops to float16 (onnxruntime.transformers.float16)."""

    name = "onnx-fp16-from-onnx"
    version = 2  # 2: the share of weights in float16 measured on the file (quantized_weights), judged by its floor
    consumes = FLOAT_ONNX
    produces = "onnx-fp16"
    precision = "fp16"
    packages = ("onnxruntime", "onnx", "onnx-ir")
    toolchain = "onnx"
    description = "float16 conversion with ONNX Runtime's converter."
    #: Accuracy repair (docs/repair.md): tried after a route's fp16 check misses.
    repairs = {"keep-float": {"keep_float": "sensitive"}}
    committed_metrics = ("repair", "quantized_weights")  # quantized_weights: the share of weights in float16

    class Options(SearchingOptions):
        keep_io_types: bool = Field(
            default=True, description="Keep float32 inputs and outputs (Cast nodes at the edges), so callers "
            "need no change; false makes the graph's float inputs/outputs float16.")
        op_block_list: Optional[list[str]] = Field(
            default=None, description="Op types left in float32 (e.g. ['Softmax', 'LayerNormalization'] when they "
            "lose too much precision); unset uses the converter's default list.")
        keep_float: Union[Literal["sensitive"], tuple[str, ...]] = Field(
            default=(), description="Nodes (by ONNX node name) kept in float32 (the converter's node_block_list). "
            "'sensitive': measure each node's float16 cost on the calibration set and keep the fewest most "
            "sensitive ones in float32 that meet the target's tolerance (docs/repair.md); bounded, its result "
            "recorded in deploy.lock. Usually set by accuracy repair, not by hand.")

    @classmethod
    def data_used(cls, options: "OnnxFp16FromOnnx.Options") -> tuple[str, ...]:  # type: ignore[override]
        return searched(options)

    @classmethod
    def check_config(cls, model: "Model", options: "OnnxFp16FromOnnx.Options",  # type: ignore[override]
                     root: Path) -> str | None:
        if options.keep_float == "sensitive" and model.data.calibration is None:
            return ("keep_float 'sensitive' needs calibration data: add data.calibration to the model "
                    "(an .npz of representative inputs)")
        return None

    @classmethod
    def describe_facts(cls, facts: dict[str, Any]) -> list[str]:
        from buildsys.planning.repair import describe

        return describe(facts.get("repair"))

    def _run(self, ctx: StepContext[Options]) -> dict[str, Any]:
        import onnx

        from buildsys.formats.onnx.onnxfile import finish, load, save, uses_external_data

        convert = _converter()
        opts = ctx.options
        src = Path(str(ctx.input_path))
        external = uses_external_data(src)
        kwargs: dict[str, Any] = {"keep_io_types": opts.keep_io_types}
        was_float: set[str] = set()  # external float32 tensors, by name
        if opts.op_block_list is not None:
            kwargs["op_block_list"] = list(opts.op_block_list)
        if opts.keep_float and not external:
            return self._keep_float(ctx, convert, src, kwargs)
        try:
            if external:  # the graph alone: the side file is converted afterwards, streaming
                proto = onnx.shape_inference.infer_shapes(onnx.load(str(src), load_external_data=False))
                was_float = {t.name for t in _external_tensors(proto) if t.data_type == onnx.TensorProto.FLOAT}
                with _shapes_from_dims(convert):
                    converted = convert(proto, disable_shape_infer=True, **kwargs)
            else:
                converted = convert(load(src), **kwargs)
        except Exception as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise self.fail(ctx, f"float16 conversion failed: {type(exc).__name__}: {first}") from exc
        _sort_nodes(converted.graph)
        path = _save_streaming(converted, was_float, src.parent, ctx.out_dir) if external else \
            save(converted, ctx.out_dir, external=False)
        metrics = finish(self, ctx, path)
        halves = sum(1 for t in converted.graph.initializer if t.data_type == onnx.TensorProto.FLOAT16)
        return {**metrics, "float16_initializers": halves, "quantized_weights": _measured(self, path, metrics, opts)}


    def _keep_float(self, ctx: StepContext[Options], convert: Any, src: Path, kwargs: dict[str, Any]) -> dict[str, Any]:
        """keep_float: the nodes named (or found by the keep-float search, formats/onnx/sensitivity.py) in float32."""
        import shutil
        import tempfile

        from buildsys.formats.keep_float import NoRecipe, pinned
        from buildsys.formats.onnx.onnxfile import MODEL_FILE, finish, load, save
        from buildsys.formats.onnx.sensitivity import search

        def make(keep: list[str], only: list[str] | None, out: Path) -> None:
            model = load(src)
            blocked = keep if only is None else [n.name for n in model.graph.node if n.name and n.name not in only]
            converted = convert(model, node_block_list=blocked, **kwargs)
            _sort_nodes(converted.graph)
            save(converted, out.parent, external=False).rename(out)

        opts = ctx.options
        with tempfile.TemporaryDirectory(dir=ctx.out_dir, prefix=".work-") as work:
            if opts.keep_float == "sensitive":
                blocked = sys.modules[convert.__module__].DEFAULT_OP_BLOCK_LIST if opts.op_block_list is None \
                    else opts.op_block_list
                try:
                    metrics = search(self, ctx, make, src, Path(work) / MODEL_FILE, Path(work) / "search", "fp16",
                                     blocked)
                except NoRecipe as exc:
                    raise self.fail(ctx, f"keep_float 'sensitive': {exc}") from exc
            else:
                make(list(opts.keep_float), None, Path(work) / MODEL_FILE)
                metrics = {"repair": pinned(opts.keep_float, "fp16")}
            shutil.move(str(Path(work) / MODEL_FILE), str(ctx.out_dir / MODEL_FILE))
        return {**finish(self, ctx, ctx.out_dir / MODEL_FILE), **metrics,
                "quantized_weights": _measured(self, ctx.out_dir / MODEL_FILE, metrics, opts)}


def _measured(step: Step, path: Path, metrics: dict[str, Any], options: Any) -> dict[str, Any]:
    """The share of the file's weights stored in float16 (formats/quantized_weights.py), the layers a repair or
    keep_float kept in float32 named as such: what the target's fp16 floor judges."""
    from buildsys.formats.onnx.weights import measure
    from buildsys.formats.quantized_weights import kept_float

    return measure(path, step.precision, kept_float(metrics, options))


def _external_tensors(proto: Any) -> list[Any]:
    from onnx.external_data_helper import _get_all_tensors, uses_external_data

    return [t for t in _get_all_tensors(proto) if uses_external_data(t)]


@contextmanager
def _shapes_from_dims(convert: Any) -> Iterator[None]:
    """Let the converter run on a graph whose weights stay in the side file.

    It marks each initializer it converts float16 (converting data only where the proto holds
    some) and builds a value_info from the tensor's data, which an external tensor has not; the
    dims say the same.
    """
    from onnx import helper

    module: Any = sys.modules[convert.__module__]  # its make_value_info_from_tensor is swapped below
    original = module.make_value_info_from_tensor
    module.make_value_info_from_tensor = lambda t: helper.make_tensor_value_info(t.name, t.data_type, list(t.dims))
    try:
        yield
    finally:
        module.make_value_info_from_tensor = original


def _save_streaming(proto: Any, was_float: set[str], src_dir: Path, out_dir: Path) -> Path:
    """Write model.onnx + model.onnx.data, reading each external tensor from the source side file in
    chunks and halving those the converter marked float16: memory stays at one chunk."""
    import numpy as np
    from onnx import TensorProto, helper

    from buildsys.formats.onnx.onnxfile import MODEL_FILE, SIDE_FILE

    halve = sys.modules[_converter().__module__].convert_np_to_float16  # the converter's own clamping
    with open(out_dir / SIDE_FILE, "wb") as out:
        for tensor in _external_tensors(proto):
            info = {e.key: e.value for e in tensor.external_data}
            to_half = tensor.data_type == TensorProto.FLOAT16 and tensor.name in was_float
            count = int(np.prod(tensor.dims, dtype=np.int64))
            if to_half:
                left = count * 4
            else:
                left = int(info.get("length", count * helper.tensor_dtype_to_np_dtype(tensor.data_type).itemsize))
            out.write(b"\0" * (-out.tell() % 4096))  # page-aligned, as onnx writes big tensors (mmap)
            offset = out.tell()
            with open(src_dir / info["location"], "rb") as f:
                f.seek(int(info.get("offset", 0)))
                while left > 0:
                    chunk = f.read(min(left, _CHUNK))
                    if not chunk:
                        raise ValueError(f"tensor '{tensor.name}': the side file ends early")
                    left -= len(chunk)
                    out.write(halve(np.frombuffer(chunk, dtype=np.float32)).tobytes() if to_half else chunk)
            del tensor.external_data[:]
            tensor.data_location = TensorProto.EXTERNAL
            for key, value in (("location", SIDE_FILE), ("offset", offset), ("length", out.tell() - offset)):
                tensor.external_data.add(key=key, value=str(value))
    path = out_dir / MODEL_FILE
    path.write_bytes(proto.SerializeToString())  # the graph only: every big tensor points into the side file
    return path


def _sort_nodes(graph: Any) -> None:
    """Order nodes topologically in place: the converter appends the Casts it adds for float32 I/O at
    the end of the node list, which the ONNX checker rejects (ONNX Runtime itself would re-sort).

    onnx-ir's sort is linear in nodes + values and stable (an already ordered graph keeps its
    order). Its IR wraps the initializers without copying them; only the top-level order is taken
    back, and the node protos (which hold no initializers) are copied into it unchanged.
    """
    import onnx_ir as ir

    view = ir.serde.deserialize_graph(graph)
    position = {id(node): i for i, node in enumerate(view)}
    try:
        view.sort()
    except ValueError:  # a cycle: leave the order alone and let the checker name the problem
        return
    order = [position[id(node)] for node in view]
    if order == sorted(order):
        return
    nodes = list(graph.node)
    ordered = [type(n)() for n in nodes]
    for copy, i in zip(ordered, order):
        copy.CopyFrom(nodes[i])
    del graph.node[:]
    graph.node.extend(ordered)


def _converter() -> Any:
    """ONNX Runtime's copy of the converter, else onnxconverter-common's (same function, same options)."""
    try:
        from onnxruntime.transformers.float16 import convert_float_to_float16
    except ImportError:
        try:
            from onnxconverter_common.float16 import convert_float_to_float16
        except ImportError:
            from buildsys.errors import MissingToolchain

            raise MissingToolchain("onnxruntime", "server", "float16 conversion (onnx-fp16-from-onnx)") from None
    return convert_float_to_float16
