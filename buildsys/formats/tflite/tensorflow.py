"""The "tensorflow" runtime: SavedModels (made by onnx2tf) run through their serving signature.

Sessions take feeds in the model's own (source) layout and return outputs in it, like every other
runtime: the layout record next to the SavedModel (layout.json, written by the SavedModel step)
says how each input is transposed on the way in (NCHW → NHWC) and each output on the way back,
exactly as the LiteRT runtime reads it for the .tflite files converted from the same SavedModel.

Inputs and outputs are matched to the signature by key: the SavedModel step keys the signature by
the ONNX names (sanitized by `signature_key`), which are the model's. A foreign SavedModel without
a record is matched by name, else by position for inputs, and must then have a single output or
outputs named after the model's (a signature's outputs are a dict: there is no order to fall back on).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from buildsys.errors import StepError
from buildsys.formats import register_runtime
from buildsys.formats.runtime import Runtime, Session, first_line, fixed_batch
from buildsys.formats.tflite.litert import layout_session

if TYPE_CHECKING:
    import numpy as np

    from buildsys.config.schema import Model

class TensorFlowSession(Session):
    """The `serving_default` function of a loaded SavedModel, fed in the source layout."""

    def __init__(self, path: Path, model: "Model", record: dict[str, Any] | None):
        import tensorflow as tf

        from buildsys.formats.tflite.layout import SIGNATURE

        self.path = path
        try:
            self.loaded = tf.saved_model.load(str(path))
        except Exception as exc:
            raise StepError(f"TensorFlow could not load the SavedModel '{path.name}': {type(exc).__name__}: "
                            f"{first_line(exc)} (rebuild it, or give a directory written by "
                            "tf.saved_model.save)") from exc
        signatures = dict(self.loaded.signatures)
        if SIGNATURE not in signatures:
            raise StepError(f"the SavedModel '{path.name}' has no '{SIGNATURE}' signature (it has "
                            f"[{', '.join(signatures)}]); export it with signatures={{'{SIGNATURE}': ...}}")
        self.function = signatures[SIGNATURE]
        _, kwargs = self.function.structured_input_signature
        inputs = {key: (spec.dtype.name, _dims(spec.shape)) for key, spec in kwargs.items()}
        outputs = {key: (spec.dtype.name, _dims(spec.shape)) for key, spec in self.function.structured_outputs.items()}
        self.inputs = match_inputs(model, record, inputs, path)
        self.outputs = match_outputs(model, record, outputs, path)
        firsts = {inputs[key][1][0] if inputs[key][1] else 1 for key, _, _ in self.inputs.values()}
        # A fixed first axis (the SavedModel step's batch_size) takes exactly that many samples per
        # call; short chunks are padded and the padding dropped from the outputs, as in LiteRT.
        self.fixed = next(iter(firsts)) if len(firsts) == 1 and None not in firsts else None
        self.max_batch = self.fixed or fixed_batch(model)

    def run(self, feeds: dict[str, "np.ndarray"]) -> list["np.ndarray"]:
        import numpy as np
        import tensorflow as tf

        from buildsys.formats.tflite.layout import from_artifact, to_artifact

        count = len(next(iter(feeds.values())))
        pad = self.fixed - count if self.fixed and count < self.fixed else 0
        ready = {}
        for name, (key, dtype, perm) in self.inputs.items():
            array = feeds[name]
            if pad:
                array = np.concatenate([array, np.repeat(array[-1:], pad, axis=0)], axis=0)
            ready[key] = tf.constant(np.ascontiguousarray(to_artifact(array, perm), dtype=dtype))
        try:
            result = self.function(**ready)
        except Exception as exc:  # tf.errors.* (a shape the graph cannot take, an op failing)
            raise StepError(f"TensorFlow failed to run the SavedModel '{self.path.name}': {type(exc).__name__}: "
                            f"{first_line(exc)}") from exc
        outs = [from_artifact(np.asarray(result[key]), perm) for key, perm in self.outputs]
        return [o[:count] for o in outs] if pad else outs

    def close(self) -> None:
        # The loaded object owns the restored variables; dropping it lets them be freed.
        self.loaded = None
        self.function = None


def match_inputs(model: "Model", record: dict[str, Any] | None, inputs: dict[str, tuple[str, list[int | None]]],
                 path: Path) -> dict[str, tuple[str, str, list[int]]]:
    """Model input name → (signature key, dtype to feed, permutation source → artifact layout).

    The record's key first, then the sanitized name, then (same count) the position.
    """
    from buildsys.formats.tflite.layout import guess_perm, signature_key

    records = {r["name"]: r for r in (record or {}).get("inputs", [])}
    keys = list(inputs)
    out = {}
    for i, inp in enumerate(model.inputs):
        rec = records.get(inp.name, {})
        key = next((k for k in (rec.get("key"), inp.name, signature_key(inp.name)) if k in inputs), None)
        if key is None:
            if len(keys) != len(model.inputs):
                raise StepError(f"the SavedModel '{path.name}' has inputs [{', '.join(keys)}] but deploy.yaml "
                                f"declares [{', '.join(i.name for i in model.inputs)}]; rebuild it from this model")
            key = keys[i]
        dtype, shape = inputs[key]
        perm = rec.get("perm") or guess_perm(list(inp.shape), [-1 if d is None else d for d in shape])
        out[inp.name] = (key, dtype, perm)
    return out


def match_outputs(model: "Model", record: dict[str, Any] | None, outputs: dict[str, tuple[str, list[int | None]]],
                  path: Path) -> list[tuple[str, list[int]]]:
    """(signature key, permutation source → artifact layout) per model output, in model order."""
    from buildsys.formats.tflite.layout import signature_key

    by_name = {r["name"]: r for r in (record or {}).get("outputs", [])}
    found: list[tuple[str, list[int]]] = []
    for spec in model.outputs:
        rec = by_name.get(spec.name, {})
        key = next((k for k in (rec.get("key"), spec.name, signature_key(spec.name)) if k in outputs), None)
        if key is None and len(outputs) == len(model.outputs) == 1:
            key = next(iter(outputs))
        if key is None:
            raise StepError(f"the SavedModel '{path.name}' has outputs [{', '.join(outputs)}] but deploy.yaml "
                            f"declares [{', '.join(o.name for o in model.outputs)}]; rebuild it from this model")
        found.append((key, rec.get("perm") or list(range(len(outputs[key][1])))))
    return found


def read_signature(path: Path) -> dict[str, dict[str, tuple[str, list[int | None]]]] | None:
    """The serving signature as written in saved_model.pb: {"inputs"|"outputs": {key: (dtype, shape)}}.

    Reads the protobuf only (no variables restored, no function traced). None: no such signature.
    Raises StepError when saved_model.pb is missing or unreadable.
    """
    import tensorflow as tf
    from tensorflow.core.protobuf import saved_model_pb2

    from buildsys.formats.tflite.layout import SIGNATURE

    pb = Path(path) / "saved_model.pb"
    proto = saved_model_pb2.SavedModel()
    try:
        proto.ParseFromString(pb.read_bytes())
    except Exception as exc:  # OSError, DecodeError
        raise StepError(f"'{pb}' cannot be read as a SavedModel: {type(exc).__name__}: {first_line(exc)}; "
                        "rebuild the artifact") from exc
    for graph in proto.meta_graphs:
        if SIGNATURE in graph.signature_def:
            sig = graph.signature_def[SIGNATURE]

            def side(infos: Any) -> dict[str, tuple[str, list[int | None]]]:
                return {key: (tf.dtypes.as_dtype(info.dtype).name,
                              [None if d.size < 0 else int(d.size) for d in info.tensor_shape.dim])
                        for key, info in sorted(infos.items())}

            return {"inputs": side(sig.inputs), "outputs": side(sig.outputs)}
    return None


def signature_problems(model: "Model", record: dict[str, Any] | None,
                       signature: dict[str, dict[str, tuple[str, list[int | None]]]]) -> list[str]:
    """Where the serving signature disagrees with the model's declared one (names, dtypes, shapes)."""
    from buildsys.formats.tflite.layout import guess_perm, signature_key

    problems = []
    inputs, outputs = signature["inputs"], signature["outputs"]
    records = {r["name"]: r for r in (record or {}).get("inputs", [])}
    used = set()
    for inp in model.inputs:
        rec = records.get(inp.name, {})
        key = next((k for k in (rec.get("key"), inp.name, signature_key(inp.name)) if k in inputs), None)
        if key is None:
            problems.append(f"input '{inp.name}' is not in the serving signature (its inputs are "
                            f"[{', '.join(inputs)}])")
            continue
        used.add(key)
        dtype, shape = inputs[key]
        if not _same_kind(inp.dtype, dtype):
            problems.append(f"input '{inp.name}' is {dtype} in the SavedModel, deploy.yaml declares {inp.dtype}")
        if len(shape) != len(inp.shape):
            problems.append(f"input '{inp.name}' has {len(shape)} axes in the SavedModel, deploy.yaml declares "
                            f"{len(inp.shape)} {_show(list(inp.shape))}")
            continue
        perm = rec.get("perm") or guess_perm(list(inp.shape), [-1 if d is None else d for d in shape])
        # Fixed in both and different: a real mismatch. A fixed axis against a named (dynamic) one is
        # the step's batch_size option; a dynamic axis accepts whatever is declared.
        wrong = [(axis, inp.shape[p], shape[axis]) for axis, p in enumerate(perm)
                 if isinstance(inp.shape[p], int) and shape[axis] is not None and inp.shape[p] != shape[axis]]
        if wrong:
            moved = f" (channels last: {_show([inp.shape[p] for p in perm])})" if perm != sorted(perm) else ""
            problems.append(f"input '{inp.name}' is {_show(shape)} in the SavedModel, deploy.yaml declares "
                            f"{_show(list(inp.shape))}{moved}")
    extra = [k for k in inputs if k not in used]
    if extra and not problems:
        problems.append(f"the SavedModel has inputs [{', '.join(extra)}] that deploy.yaml does not declare")
    by_name = {r["name"]: r for r in (record or {}).get("outputs", [])}
    for spec in model.outputs:
        rec = by_name.get(spec.name, {})
        key = next((k for k in (rec.get("key"), spec.name, signature_key(spec.name)) if k in outputs), None)
        if key is None:  # the session would take a lone output anyway; the artifact still is not this model's
            problems.append(f"output '{spec.name}' is not in the serving signature (its outputs are "
                            f"[{', '.join(outputs)}])")
    if len(outputs) != len(model.outputs):
        problems.append(f"the serving signature has {len(outputs)} output(s), deploy.yaml declares "
                        f"{len(model.outputs)}")
    return problems


@register_runtime
class TensorFlow(Runtime):
    """TensorFlow itself, running a SavedModel's serving signature (the reference for its TFLite files)."""

    name = "tensorflow"
    no_intermediates = "a SavedModel's functions show only their signature outputs to modelbuild"
    requires, extra = ("tensorflow",), "tflite"

    def load(self, path: Path, model: "Model", root: Path) -> Session:
        return layout_session(TensorFlowSession, path, model)

    def inspect(self, path: Path, model: "Model", fmt: str) -> dict | None:
        """The serving signature read from saved_model.pb (no variables restored): its inputs and outputs
        by key with dtype and shape, against the model's names, dtypes and shapes (moved channels last
        where layout.json says so)."""
        if self.unavailable():
            return None
        from buildsys.formats.tflite.layout import SIGNATURE, read_layout

        path = Path(path)
        record = read_layout(path.parent)
        try:
            signature = read_signature(path)
        except StepError as exc:  # reported as the check's problem; the numeric run will say it too
            return {"facts": {"signature": None}, "problems": [exc.what]}
        if signature is None:
            return {"facts": {"signature": None},
                    "problems": [f"the SavedModel has no '{SIGNATURE}' signature, which checks and TFLite "
                                 "conversion use"]}
        facts: dict[str, Any] = {"signature": SIGNATURE}
        facts.update({side: [{"key": k, "dtype": d, "shape": s} for k, (d, s) in specs.items()]
                      for side, specs in signature.items()})
        if record is not None:
            facts["layouts"] = {r["name"]: r["layout"] for r in record.get("inputs", [])}
        return {"facts": facts, "problems": signature_problems(model, record, signature)}


def _same_kind(declared: str, actual: str) -> bool:
    """Equal, or both integer: feeds are cast to the SavedModel's type, and an integer width is the
    converter's choice (int64 ids fed as int32) rather than a different input."""
    ints = {"int8", "int16", "int32", "int64", "uint8"}
    return declared == actual or (declared in ints and actual in ints)


def _dims(shape: Any) -> list[int | None]:
    return [None if d is None else int(d) for d in shape.as_list()] if shape.rank is not None else []


def _show(shape: list[Any]) -> str:
    return "[" + ", ".join("?" if d is None else str(d) for d in shape) + "]"
