"""The TensorFlow SavedModel format: onnx2tf's conversion of the ONNX graph, plus the layout record.

onnx2tf moves channels last (NCHW → NHWC, NCL → NLC) because that is what TFLite kernels want.
What it did to each input and output is written to `layout.json` (see layout.py) next to the
SavedModel, and the TFLite steps copy that file along, so checks and manifests feed and read the
artifact correctly.
"""

from __future__ import annotations

import contextlib
import io
import json
import re
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Optional

from pydantic import Field, SerializationInfo, SerializerFunctionWrapHandler, model_serializer

from buildsys.formats import register, register_format
from buildsys.formats.base import TENSORFLOW_IMPORT_PROBES, Format, Step, StepContext, StepOptions, without_unset
from buildsys.formats.reproducible import canonical_saved_model, tensorflow_uids
from buildsys.lowering import Answer, Symptom
from buildsys.formats.tflite.layout import (
    LAYOUT_FILE,
    SIGNATURE,
    letters,
    match_perm,
    signature_key,
)

if TYPE_CHECKING:
    import numpy as np
    import onnx

    from buildsys.config.schema import Model

SAVED_MODEL = register_format(Format(
    name="saved_model", filename="saved_model", runtime="tensorflow",
    description="TensorFlow SavedModel (a directory) made by onnx2tf, channels last unless keep_layout; "
    "layout.json beside it says what happened to each input and output.",
))

def _onnx_dims(value: Any) -> list[int | str | None]:
    dims: list[int | str | None] = []
    for d in value.type.tensor_type.shape.dim:
        dims.append(d.dim_value if d.HasField("dim_value") else (d.dim_param or None))
    return dims


# --- the step ------------------------------------------------------------------------------------


@register
class SavedModelFromOnnx(Step):
    """Convert an ONNX graph to a TensorFlow SavedModel with onnx2tf, recording the layout it chose."""

    name = "saved-model-from-onnx"
    version = 6  # 2: canonical function uids and fingerprint: the same bytes from any worker and host; 3: layout.json
    # names the QuantizeLinear/DequantizeLinear an ONNX input already held (`quantized_source`, a QAT model);
    # 4: plain LSTMs as tf_keras LSTM layers at batch 1, which TFLite fuses (formats/tflite/recurrent.py); 5: what
    # static shapes make constant folded first (formats/onnx/shape_constants.py), a zero initial state dropped; 6: a
    # recurrent loop's signature at batch 1 (its TensorList ops lowered: one WHILE, not unrolled)
    consumes = ("onnx",)
    produces = "saved_model"
    packages = ("onnx2tf", "tensorflow", "tf-keras", "onnx", "onnx-graphsurgeon", "sng4onnx")
    extra = "tflite"
    toolchain = "tf"
    probed_imports = TENSORFLOW_IMPORT_PROBES
    # (no `unrolls`: a plain LSTM is TFLite's fused kernel; a GRU or RNN is a WHILE loop at batch 1, one body, not
    # written out frame by frame, which only the `enable_rnn_unroll` answer does)
    description = "onnx2tf.convert (no model saving by onnx2tf, no downloads), then a SavedModel whose signature " \
                  "is named after the ONNX inputs and outputs."

    class Options(StepOptions):
        keep_layout: bool = Field(
            default=False, description="Keep every 3-D to 5-D input channels first (NCL/NCHW/NCDHW) instead of "
            "moving channels last. onnx2tf then transposes inside the graph; useful when the app already "
            "holds channels-first buffers, usually slower on mobile CPUs.")
        batch_size: Optional[int] = Field(
            default=None, ge=1, description="Fix a dynamic batch axis to this size (onnx2tf's batch_size). Some "
            "graphs convert only with static shapes; unset keeps the batch dynamic.")
        disable_group_convolution: bool = Field(
            default=False, description="Lower grouped convolutions to split + concat (onnx2tf option) for "
            "runtimes or delegates without grouped convolution support.")
        enable_rnn_unroll: bool = Field(
            default=False, description="Unroll RNN/GRU/LSTM over the static sequence length (onnx2tf's "
            "enable_rnn_unroll) instead of a TensorFlow while loop, whose TensorList ops (tf.TensorListReserve) the "
            "TFLite converter cannot lower; also turns off the fused LSTM (a plain forward LSTM is otherwise one "
            "UNIDIRECTIONAL_SEQUENCE_LSTM at batch 1: formats/tflite/recurrent.py). Set by the planner when the TFLite "
            "converter refuses them (docs/lowering.md).")
        dynamic_batch: bool = Field(
            default=False, description="Keep the signature's batch dynamic where the model has a recurrent layer. "
            "Unset, a model with an LSTM, GRU or RNN gets a batch-1 signature: TFLite's converter fuses a plain LSTM "
            "and lowers the while loop onnx2tf makes of the others only at a static batch. Set, the LSTM is not "
            "fused and the loop's TensorList ops are refused, which the planner answers by unrolling the layer over "
            "the frames (a larger file that takes any batch).")
        disable_strict_mode: bool = Field(
            default=False, description="Skip onnx2tf's strict-mode accuracy correction (disable_strict_mode): the "
            "brute-force trials of transpositions of a binary op's operands, which can run for many minutes and GB on "
            "high-rank tensors. The checks still compare every output with PyTorch.")
        param_replacement_file: Optional[str] = Field(
            default=None, description="onnx2tf's parameter replacement JSON (param_replacement_file; path relative to "
            "deploy.yaml): per-node fixes of onnx2tf's layout choices (a constant's or an input's transposition) for a "
            "node it converts wrongly. Its contents enter the key.")

        omitted_when_unset = ("enable_rnn_unroll", "dynamic_batch", "disable_strict_mode", "param_replacement_file")

        @model_serializer(mode="wrap")
        def _without_unset(self, handler: SerializerFunctionWrapHandler, info: SerializationInfo) -> Any:
            return without_unset(self, handler(self))

    symptoms = (
        Symptom((r"correction_process_for_accuracy_errors", r"obtaining_an_inverted_pattern_for_brute_force"),
                Answer.of("onnx2tf no-strict", {"disable_strict_mode": True}, why="onnx2tf was stopped in strict "
                          "mode's brute-force transposition trials; without strict mode it skips them")),
        Symptom((r"do not broadcast", r"Dimensions must be equal",
                 r"Output tensors of a Functional model must be the output of a TensorFlow"),
                Answer.of("litert-torch", via=("pt2",), why="onnx2tf's channels-last layout inference mismatched an op's "
                          "operands; litert-torch lowers the torch.export program in the model's own layout")),
    )

    @classmethod
    def files_used(cls, options: "SavedModelFromOnnx.Options") -> tuple[str, ...]:  # type: ignore[override]
        return (options.param_replacement_file,) if options.param_replacement_file else ()

    @classmethod
    def check_config(cls, model: "Model", options: "SavedModelFromOnnx.Options",  # type: ignore[override]
                     root: Path) -> str | None:
        """Layouts onnx2tf cannot honour: it assumes axis 1 of a 3-D to 5-D input holds the channels."""
        spatial = [i for i in model.inputs if 3 <= len(i.shape) <= 5]
        if options.keep_layout and not spatial:
            names = ", ".join(f"{i.name} {i.shape}" for i in model.inputs)
            return f"keep_layout: onnx2tf keeps the layout of 3-D to 5-D inputs only, and this model has none ({names})"
        for inp in spatial:
            if inp.layout and inp.layout.find("C") not in (-1, 1):
                return (f"input '{inp.name}' is declared {inp.layout}, but onnx2tf reads axis 1 of a "
                        f"{len(inp.shape)}-D input as its channels and would transpose the wrong axes; export the "
                        f"model channels-first ({'N' + 'C' + inp.layout.replace('N', '').replace('C', '')}) for TFLite")
        return None

    def _run(self, ctx: StepContext[Options]) -> dict[str, Any]:
        import onnx

        opts = ctx.options
        from buildsys.formats.onnx.shape_constants import fold_static_shapes

        proto = onnx.load(str(ctx.input_path), load_external_data=True)  # a model.onnx.data side file too
        folded = fold_static_shapes(proto)  # onnx2tf refuses some constants it would have to compute (an Expand)
        out = ctx.out_dir / SAVED_MODEL.filename
        # onnx2tf rewrites its input file in place (op naming, shape inference): it gets a private copy,
        # in a hidden folder of out_dir that is gone before the step returns.
        with tempfile.TemporaryDirectory(dir=ctx.out_dir, prefix=".work-") as work:
            copy = Path(work) / "model.onnx"
            onnx.save_model(proto, str(copy))
            with tensorflow_uids() as uids:
                keras_model, fused = self._convert(ctx, opts, proto, copy, Path(work))
                # a fused LSTM needs a static batch, the only form TFLite's converter fuses: 1 unless batch_size says
                # (fixed here, not in onnx2tf, whose layout inference differs at a static batch); so does a recurrent
                # layer onnx2tf writes as a while loop: the converter lowers its TensorList ops only at a static batch
                # (a Conv1d + GRU over 90 frames: one WHILE, 82.1 KB, instead of unrolled, 363.9 KB)
                looped = not opts.enable_rnn_unroll and any(n.op_type in ("GRU", "RNN", "LSTM") for n in proto.graph.node)
                static_batch = bool(fused or looped) and not opts.batch_size and not opts.dynamic_batch
                record = self._save(ctx, keras_model, proto, out, moves=not opts.keep_layout,
                                    batch=1 if static_batch else None)
        canonical_saved_model(out, uids["start"], uids["end"])  # the same bytes from any worker, any host
        from buildsys.formats.torch.qat import onnx_qdq

        learned = onnx_qdq(Path(str(ctx.input_path)))
        if learned:  # QDQ with learned scales (a QAT model): the int8 step must not re-calibrate it
            record["quantized_source"] = learned
        (ctx.out_dir / LAYOUT_FILE).write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
        moved = [i["name"] for i in record["inputs"] if i["perm"] != sorted(i["perm"])]
        return {"bytes": sum(f.stat().st_size for f in out.rglob("*") if f.is_file()),
                **({"fused_lstm": fused} if fused else {}), **({"static_batch": 1} if static_batch else {}),
                **({"static_shape_nodes_folded": folded} if folded else {}),
                **({"caveats": [_batch_one(self)]} if static_batch and _dynamic_batch(proto) else {}),
                "channels_last_inputs": moved,
                "layouts": {i["name"]: i["layout"] for i in record["inputs"]}}

    def _convert(self, ctx: StepContext[Options], opts: Options, proto: "onnx.ModelProto", path: Path,
                 work: Path) -> tuple[Any, list[str]]:
        """onnx2tf's Keras model of the ONNX file, and the LSTM nodes it holds as fused-kernel layers (recurrent.py)."""
        import onnx2tf
        import tf_keras

        from buildsys.formats.tflite.recurrent import fused_lstm

        # Keras numbers layer names per process; a fresh session gives the same names (and the same
        # SavedModel bytes) whether this is the worker's first conversion or its tenth.
        tf_keras.backend.clear_session()
        keep = [i.name for i in proto.graph.input if 3 <= len(i.type.tensor_type.shape.dim) <= 5]
        log = io.StringIO()
        fusing: contextlib.AbstractContextManager[list[str]] = \
            contextlib.nullcontext([]) if opts.enable_rnn_unroll or opts.dynamic_batch else fused_lstm()  # its own cell
        try:
            with _no_downloads(ctx), _min_padded_pools(), contextlib.redirect_stdout(log), fusing as fused:
                model = onnx2tf.convert(
                    input_onnx_file_path=str(path),
                    output_folder_path=str(work / "onnx2tf"),
                    disable_model_save=True,  # the SavedModel is written below; skip its tflite files
                    output_signaturedefs=True,  # sanitizes '/'-prefixed op names a SavedModel rejects
                    not_use_onnxsim=True,  # onnxsim runs as a subprocess and is not a dependency
                    non_verbose=True,
                    verbosity="error",
                    batch_size=opts.batch_size,
                    keep_ncw_or_nchw_or_ncdhw_input_names=keep if opts.keep_layout and keep else None,
                    disable_group_convolution=opts.disable_group_convolution,
                    enable_rnn_unroll=opts.enable_rnn_unroll,
                    disable_strict_mode=opts.disable_strict_mode,
                    param_replacement_file=str(ctx.root / opts.param_replacement_file) if opts.param_replacement_file else "",
                )
        except (Exception, SystemExit) as exc:  # onnx2tf calls sys.exit(1) on some failures
            raise self.fail(ctx, _onnx2tf_failure(exc, proto, log.getvalue())) from exc
        finally:
            sys.stdout.write(log.getvalue())  # keep onnx2tf's own messages in the node's log
        if model is None:
            raise self.fail(ctx, "onnx2tf returned no model: " + _last_error(log.getvalue()))
        return model, fused

    def _save(self, ctx: StepContext[Options], model: Any, proto: "onnx.ModelProto", out: Path, moves: bool,
              batch: int | None = None) -> dict[str, Any]:
        """Write the SavedModel with one signature keyed by the ONNX names, and return the layout record.

        `moves`: whether onnx2tf was asked to move channels last; the shapes confirm it per tensor. `batch`: the
        signature's batch, where the model's is dynamic.
        """
        import tensorflow as tf
        import tf_keras

        inits = {t.name for t in proto.graph.initializer}
        in_names = [i.name for i in proto.graph.input if i.name not in inits]
        out_names = [o.name for o in proto.graph.output]
        values = {v.name: v for v in [*proto.graph.input, *proto.graph.output]}
        if len(model.inputs) != len(in_names) or len(model.outputs) != len(out_names):
            raise self.fail(ctx, f"onnx2tf made a model with {len(model.inputs)} input(s) and {len(model.outputs)} "
                                 f"output(s) from an ONNX graph with {len(in_names)} and {len(out_names)}")
        in_keys = [signature_key(n) for n in in_names]
        out_keys = [signature_key(n) for n in out_names]

        def serve(*inputs: Any) -> dict[str, Any]:
            result = model(inputs)
            result = list(result) if isinstance(result, (list, tuple)) else [result]
            return dict(zip(out_keys, result))

        archive = tf_keras.export.ExportArchive()
        archive.track(model)
        shapes = [[batch or t.shape[0], *t.shape[1:]] if t.shape.rank else list(t.shape) for t in model.inputs]
        archive.add_endpoint(name=SIGNATURE, fn=serve, input_signature=[
            tf.TensorSpec(shape, t.dtype, key) for shape, t, key in zip(shapes, model.inputs, in_keys)])
        try:
            with contextlib.redirect_stdout(sys.stderr):  # ExportArchive prints a summary to stdout
                archive.write_out(str(out))
        except Exception as exc:
            raise self.fail(ctx, f"the SavedModel could not be written: {type(exc).__name__}: "
                                 f"{_first_line(exc)}") from exc
        specs = {i.name: i for i in ctx.model.inputs}
        record: dict[str, Any] = {"signature": SIGNATURE, "inputs": [], "outputs": []}
        for name, key, tensor, tf_shape in zip(in_names, in_keys, model.inputs, shapes):
            onnx_shape = _onnx_dims(values[name])
            spec = specs.get(name)
            perm = match_perm(onnx_shape, tf_shape, moved=moves and 3 <= len(tf_shape) <= 5)
            axes = letters(spec.layout if spec else None, len(perm))
            declared = list(spec.shape) if spec else onnx_shape
            record["inputs"].append({
                "name": name, "key": key, "perm": perm, "dtype": tensor.dtype.name,
                "source_layout": axes, "layout": "".join(axes[p] for p in perm),
                "shape": [declared[p] if not isinstance(tf_shape[i], int) else tf_shape[i] for i, p in enumerate(perm)],
            })
        for name, key, tensor in zip(out_names, out_keys, model.outputs):
            tf_shape = list(tensor.shape)
            perm = match_perm(_onnx_dims(values[name]), tf_shape, moved=False)
            record["outputs"].append({"name": name, "key": key, "perm": perm, "shape": tf_shape})
        return record


@contextlib.contextmanager
def _no_downloads(ctx: StepContext) -> Iterator[None]:
    """Replace onnx2tf's sample-image download with the model's own example inputs.

    onnx2tf fetches 20 COCO images from GitHub whenever every input looks like a small-batch RGB
    image, and uses them for its shape-estimation dummy inference. A build must never reach the
    network, so the model's example data (channels last, repeated to 20 samples) stands in.
    """
    import numpy as np

    modules = [sys.modules.get("onnx2tf.onnx2tf"), sys.modules.get("onnx2tf.utils.common_functions")]

    def own_samples() -> "np.ndarray":
        example = ctx.example()
        for inp in ctx.model.inputs:
            batch = example.inputs[inp.name]
            if batch.ndim == 4 and batch.shape[1] in (3, 4):
                nhwc = np.transpose(batch[:, :3].astype(np.float32), (0, 2, 3, 1))
                return np.concatenate([nhwc] * -(-20 // len(nhwc)), axis=0)[:20]
        return np.random.default_rng(ctx.model.seed).random((20, 128, 128, 3), dtype=np.float32)

    saved = [(m, getattr(m, "download_test_image_data")) for m in modules if m is not None
             and hasattr(m, "download_test_image_data")]
    for module, _ in saved:
        setattr(module, "download_test_image_data", own_samples)
    try:
        yield
    finally:
        for module, original in saved:
            setattr(module, "download_test_image_data", original)


@contextlib.contextmanager
def _min_padded_pools() -> Iterator[None]:
    """Pad max pooling with the input's own minimum instead of the float32 minimum.

    ONNX max pooling with ceil_mode or asymmetric pads becomes pad + max_pool in TF, and onnx2tf
    pads with -3.4e38. Full-int8 calibration then records that constant in the padded tensor's range
    (PADV2 shares its input's scale), every activation from there on collapses to one level, and
    XNNPACK refuses the graph. Padding with min(x) gives the same maxima in float (every window holds
    a real value ≥ min(x)) and a range calibration can use. onnx2tf 1.28 pads with 0 when asked
    for int8, which changes results after PReLU; this leaves results exact.
    """
    import importlib

    import numpy as np
    import tensorflow as tf

    module: Any = importlib.import_module("onnx2tf.ops.MaxPool")  # its `tf` global is swapped below

    class _PadWithMinimum:
        def __getattr__(self, name: str) -> Any:
            return getattr(tf, name)

        @staticmethod
        def pad(tensor: Any, paddings: Any, mode: str = "CONSTANT", constant_values: Any = 0, name: Any = None) -> Any:
            dtype = getattr(tensor, "dtype", None)
            if mode.upper() == "CONSTANT" and dtype is not None and getattr(dtype, "is_floating", False) and \
                    isinstance(constant_values, (float, np.floating)) and constant_values == dtype.min:
                constant_values = tf.reduce_min(tensor)
            return tf.pad(tensor, paddings, mode=mode, constant_values=constant_values, name=name)

    original = getattr(module, "tf", None)
    if original is not tf:  # a future onnx2tf that no longer pads here: leave it alone
        yield
        return
    module.tf = _PadWithMinimum()
    try:
        yield
    finally:
        module.tf = original


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else ""


def _last_error(log: str) -> str:
    """The last 'ERROR:' line onnx2tf printed (colour codes removed), or a pointer to the log."""
    lines = [re.sub(r"\x1b\[[0-9;]*m", "", line).strip() for line in log.splitlines()]
    errors = [line[len("ERROR:"):].strip() for line in lines if line.startswith("ERROR:") and len(line) > 7]
    useful = [e for e in errors if not e.startswith(("input_onnx_file_path", "Read this", "Alternatively",
                                                      "If the input OP", "Also, for models", "The trace log"))]
    return useful[-1] if useful else "see the node's log"


def _onnx2tf_failure(exc: BaseException, proto: "onnx.ModelProto", log: str) -> str:
    """One line naming the ONNX op (type and node) onnx2tf failed on, and why."""
    node_name = getattr(exc, "onnx_op_name", None)
    missing = re.search(r"(\w+) OP is not yet implemented", log)
    if missing or isinstance(exc, ModuleNotFoundError) and "onnx2tf.ops." in str(exc):
        op = missing.group(1) if missing else str(exc).rsplit(".", 1)[-1].strip("'\"")
        return f"onnx2tf does not support the ONNX op {op} (node {node_name or '?'})"
    if node_name:
        original = re.sub("^wa/", "/", str(node_name))
        types = {n.name: n.op_type for n in proto.graph.node}
        op_type = types.get(original) or types.get(original.replace("__", ":")) or "?"
        why = f"{type(exc).__name__}: {_first_line(exc)}" if _first_line(exc) else type(exc).__name__
        shapes = re.search(r"Dimensions must be equal.*?input shapes: ([^\n]+?)\.?$", str(exc), re.MULTILINE)
        if shapes:  # the cause, which the first line does not say
            why = f"operands {shapes.group(1)} do not broadcast (onnx2tf's channels-last layout inference)"
        return f"onnx2tf could not convert the ONNX op {op_type} (node {original}): {why[:300]}"
    if isinstance(exc, SystemExit):
        return f"onnx2tf stopped: {_last_error(log)}"
    return f"onnx2tf failed: {type(exc).__name__}: {_first_line(exc)[:300]}"


def _dynamic_batch(proto: "onnx.ModelProto") -> bool:
    """Whether an input of the ONNX graph has a symbolic first axis (the model's deploy.yaml said `batch`)."""
    dims = [i.type.tensor_type.shape.dim for i in proto.graph.input if i.type.tensor_type.shape.dim]
    return any(d[0].HasField("dim_param") or not d[0].HasField("dim_value") for d in dims)


def _batch_one(step: Step) -> dict[str, str]:
    """What the summary row says of a dynamic batch fixed at 1 for a recurrent layer."""
    from buildsys.status import Caveat, CaveatKind

    return Caveat(CaveatKind.DEGRADED, "batch fixed at 1",
                  "TFLite's converter fuses an LSTM and lowers a recurrent loop only at a static batch; set "
                  "options: {saved_model: {dynamic_batch: true}} for any batch (the layer unrolled over the frames)",
                  step.name).as_dict()
