"""What every ONNX-producing step of the family (and the layouts that ship an ONNX model) shares:
saving with or without the external-data side file, a readable copy of a hard-linked model,
naming dynamic axes after the signature, and the validity check (by `onnx.checker`, or by ONNX
Runtime for a file that holds its own ops) with the signature's I/O names.
"""

from __future__ import annotations

import shutil
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

from buildsys.formats.base import Step, StepContext

if TYPE_CHECKING:
    import onnx

MODEL_FILE = "model.onnx"
SIDE_FILE = "model.onnx.data"

def uses_external_data(path: Path) -> bool:
    """Whether an ONNX file keeps any tensor in a side file (read without loading the weights)."""
    import onnx
    from onnx.external_data_helper import uses_external_data as external

    proto = onnx.load(str(path), load_external_data=False)
    return any(external(t) for t in _all_tensors(proto))


def _all_tensors(proto: "onnx.ModelProto") -> list[Any]:
    from onnx.external_data_helper import _get_all_tensors

    return list(_get_all_tensors(proto))


def save(proto: "onnx.ModelProto", out_dir: Path, external: bool) -> Path:
    """Write `proto` as out_dir/model.onnx, with its weights in model.onnx.data when `external`."""
    import onnx

    path = out_dir / MODEL_FILE
    side = out_dir / SIDE_FILE
    side.unlink(missing_ok=True)
    if external:
        onnx.save_model(proto, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=SIDE_FILE, size_threshold=1024)
    else:
        onnx.save_model(proto, str(path))
    return path


#: The fewest elements of a weight worth storing once (smaller duplicates cost less than the nodes that share them).
SHARED_MIN_ELEMENTS = 1024


def weights_once(path: Path) -> int:
    """Store each weight of the self-contained ONNX file at `path` once, in place; returns the bytes saved.

    The legacy exporter writes a tied weight twice: an embedding table for its Gather and, for the output head
    that reads the same parameter, a transposed copy for its MatMul (a decoder LM at twice its float32 size). An
    initializer equal to another one is replaced by it; one equal to another's transpose is made from it by a
    Transpose node (which ONNX Runtime folds when it loads the session: the same arithmetic, one copy on disk).
    Only 2-D weights of SHARED_MIN_ELEMENTS elements or more are compared, by a digest of their bytes."""
    import hashlib

    import numpy as np
    import onnx
    from onnx import helper, numpy_helper

    proto = onnx.load(str(path))
    graph = proto.graph
    seen: dict[tuple[int, tuple[int, ...], bytes], str] = {}
    arrays = {t.name: numpy_helper.to_array(t) for t in graph.initializer
              if len(t.dims) == 2 and int(np.prod(t.dims)) >= SHARED_MIN_ELEMENTS}

    def key(dtype: int, array: "np.ndarray") -> tuple[int, tuple[int, ...], bytes]:
        return dtype, tuple(array.shape), hashlib.blake2b(np.ascontiguousarray(array).tobytes(), digest_size=16).digest()

    types = {t.name: t.data_type for t in graph.initializer}
    same: dict[str, str] = {}
    transposed: dict[str, str] = {}
    for name, array in arrays.items():
        own = key(types[name], array)
        if own in seen:
            same[name] = seen[own]
            continue
        flipped = key(types[name], array.T)
        if flipped in seen:
            transposed[name] = seen[flipped]
            continue
        seen[own] = name
    if not same and not transposed:
        return 0
    saved = sum(arrays[n].nbytes for n in [*same, *transposed])
    for node in graph.node:
        node.input[:] = [same.get(i, i) for i in node.input]
    gone = {*same, *transposed}
    initializers = [t for t in graph.initializer if t.name not in gone]
    inputs = [i for i in graph.input if i.name not in gone]  # an old IR lists initializers as inputs too
    del graph.initializer[:], graph.input[:]
    graph.initializer.extend(initializers)
    graph.input.extend(inputs)
    for copy, original in transposed.items():  # first in the graph: a topological order stays one
        graph.node.insert(0, helper.make_node("Transpose", [original], [copy], name=f"{copy}/tied", perm=[1, 0]))
    onnx.save_model(proto, str(path))
    return int(saved)


def transposed_weights_folded(path: Path, work: Path, private: bool) -> Path:
    """The model with every Transpose of an initializer made an initializer of its own (the transposed copy of a tied
    weight that `weights_once` stored once): ONNX Runtime's quantizers quantize a MatMul's weight only where
    it is an initializer, and would leave the output head float. The int8 file then holds both int8 copies, as the
    exporter wrote them. A self-contained file only (a side file's weights are never loaded here)."""
    import onnx
    from onnx import numpy_helper

    if uses_external_data(path):
        return path
    proto = onnx.load(str(path))
    inits = {t.name: t for t in proto.graph.initializer}
    folds = [n for n in proto.graph.node if n.op_type == "Transpose" and n.input and n.input[0] in inits]
    if not folds:
        return path
    for node in folds:
        perm = next((list(a.ints) for a in node.attribute if a.name == "perm"), None)
        array = numpy_helper.to_array(inits[node.input[0]])
        proto.graph.initializer.append(numpy_helper.from_array(array.transpose(perm) if perm else array.T, node.output[0]))
        proto.graph.node.remove(node)
    if not private:
        work.mkdir(parents=True, exist_ok=True)
        path = work / MODEL_FILE
    onnx.save_model(proto, str(path))
    return path


def readable_copy(path: Path, work: Path, force: bool = False) -> Path:
    """`path`, or a private copy with its side file in `work` (always when `force`): onnx refuses external
    data in a file with several links ("potential hardlink attack"), and inputs are hard-linked from
    the cache. The OS streams the copy: disk and seconds, never memory."""
    side = path.with_name(SIDE_FILE)
    if not side.exists() or (side.stat().st_nlink < 2 and not force) or not uses_external_data(path):
        return path
    work.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(path, work / MODEL_FILE)
    shutil.copyfile(side, work / SIDE_FILE)
    return work / MODEL_FILE


def load(path: Path) -> "onnx.ModelProto":
    """Load an ONNX file with its external data (the side file must sit next to it)."""
    import onnx

    return onnx.load(str(path), load_external_data=True)


def graph_io(proto: "onnx.ModelProto") -> tuple[list[str], list[str]]:
    """Names of the graph's real inputs (initializers excluded, for IR < 4 files) and outputs."""
    inits = {t.name for t in proto.graph.initializer}
    return [i.name for i in proto.graph.input if i.name not in inits], [o.name for o in proto.graph.output]


def name_axes(path: Path, ctx: StepContext) -> None:
    """Rename the dynamic dims of an exported graph after the signature ('s31' → 'batch').

    torch.export names symbols itself; renaming them everywhere (inputs, outputs, value_info) keeps
    the graph consistent and makes the signature readable in Netron and in ONNX Runtime errors.
    """
    import onnx

    proto = onnx.load(str(path), load_external_data=False)
    specs = {i.name: i for i in ctx.model.inputs}
    mapping: dict[str, str] = {}
    for value in proto.graph.input:
        spec = specs.get(value.name)
        if spec is None or not value.type.HasField("tensor_type"):
            continue
        for dim, want in zip(value.type.tensor_type.shape.dim, spec.shape):
            if isinstance(want, str) and dim.HasField("dim_param") and dim.dim_param != want:
                mapping.setdefault(dim.dim_param, want)
    if not mapping:
        return
    for value in [*proto.graph.input, *proto.graph.output, *proto.graph.value_info]:
        if value.type.HasField("tensor_type"):
            for dim in value.type.tensor_type.shape.dim:
                if dim.HasField("dim_param") and dim.dim_param in mapping:
                    dim.dim_param = mapping[dim.dim_param]
    onnx.save_model(proto, str(path))  # external tensors keep their references to the side file


def runtime_specific_ops(proto: "onnx.ModelProto") -> dict[str, int]:
    """Op types of the graph that the ONNX standard does not define at the model's opsets, with counts:
    ONNX Runtime's fused and contrib ops (`SimplifiedLayerNormalization`, `com.microsoft.Gelu`). A file
    holding any is meant for ONNX Runtime alone, and only ONNX Runtime can judge it."""
    import onnx.defs

    opsets = {o.domain or "": o.version for o in proto.opset_import}
    counts: Counter[str] = Counter()
    for node in proto.graph.node:
        domain = node.domain or ""
        standard = domain in ("", "ai.onnx", "ai.onnx.ml")
        version = opsets.get(domain, opsets.get("", 1))
        if not standard or not onnx.defs.has(node.op_type, max_inclusive_version=version, domain=domain):
            counts[f"{domain}.{node.op_type}" if domain else node.op_type] += 1
    return dict(sorted(counts.items()))


def op_counts(proto: "onnx.ModelProto") -> Counter[str]:
    """How many nodes of each op type (domain-qualified outside the standard domain) the graph has."""
    return Counter(f"{n.domain}.{n.op_type}" if n.domain else n.op_type for n in proto.graph.node)


def _validate(step: Step, ctx: StepContext, path: Path, proto: "onnx.ModelProto", writer: str = "") -> dict[str, int]:
    """Judge the file by the runtime it is for: `onnx.checker` for standard ONNX (not for ONNX Runtime's own ops, which
    it does not know and would reject), then an ONNX Runtime session with its optimizer off, so the file is judged
    as written: a file the checker passes may still not load (a shape an exporter's symbolic got wrong: "Add:
    Incompatible dimensions"), and a step that wrote one fails, so its route's answers are tried, rather than the
    check. Returns ONNX Runtime's own ops, with counts."""
    import onnx

    specific = runtime_specific_ops(proto)
    if not specific:
        try:
            onnx.checker.check_model(str(path))  # by path: works with external data and past 2 GB
        except onnx.checker.ValidationError as exc:
            raise step.fail(ctx, f"the ONNX model is invalid: {str(exc).strip().splitlines()[0]}") from exc
    if specific or not path.with_name(SIDE_FILE).exists():  # a file past 2 GB is left to its check: loaded once
        refusal = _ort_refusal(path)
        if refusal and specific:
            ops = ", ".join(f"{op} ×{n}" for op, n in specific.items())
            raise step.fail(ctx, f"ONNX Runtime cannot load the model, which uses its own ops ({ops}): {refusal}")
        if refusal:  # valid to the checker, yet its shapes or types do not hold (an exporter's symbolic went wrong)
            raise step.fail(ctx, f"ONNX Runtime cannot load the model {writer or 'this step'} wrote: {refusal}")
    return specific


def _ort_refusal(path: Path) -> str | None:
    """Why ONNX Runtime, with its optimizer off (the file judged as written), cannot load `path`; None when it can."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.log_severity_level = 3
    try:
        ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # noqa: BLE001 - what ONNX Runtime says is the refusal
        text = str(exc).strip()
        return text.splitlines()[0].replace(str(path), path.name) if text else type(exc).__name__
    return None


def finish(step: Step, ctx: StepContext, path: Path, exact: bool = False, opset: int | None = None,
           writer: str = "") -> dict[str, Any]:
    """Validity (see `_validate`) + signature names for a written ONNX file; returns the step's metrics.

    `exact`: the graph's inputs must be exactly the signature's (a given file); an exporter may
    legitimately drop an input the model never reads. `opset`: the opset the target asked for, which
    the file must carry (the dynamo exporter silently writes 18 when it cannot convert to the one asked). `writer`:
    what wrote the file ("the legacy exporter"), named where ONNX Runtime cannot load it (its step's answers read it).
    """
    import onnx

    proto = onnx.load(str(path), load_external_data=False)
    specific = _validate(step, ctx, path, proto, writer)
    inputs, outputs = graph_io(proto)
    want_in = [i.name for i in ctx.model.inputs]
    want_out = [o.name for o in ctx.model.outputs]
    bad_in = sorted(set(inputs) ^ set(want_in)) if exact else sorted(set(inputs) - set(want_in))
    if bad_in or not set(want_out) <= set(outputs):
        raise step.fail(ctx, f"the ONNX graph has inputs [{', '.join(inputs)}] and outputs [{', '.join(outputs)}] but "
                             f"the signature declares inputs [{', '.join(want_in)}] and outputs [{', '.join(want_out)}]")
    written = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), None)
    if opset is not None and written != opset:
        raise step.fail(ctx, f"the exporter wrote opset {written}, not the opset {opset} the target asks for")
    files = [path, path.with_name(SIDE_FILE)]
    metrics: dict[str, Any] = {"opset": written, "bytes": sum(f.stat().st_size for f in files if f.exists()),
                               "external_data": path.with_name(SIDE_FILE).exists()}
    if specific:  # the file runs in ONNX Runtime only: say which of its ops tie it there
        metrics["onnxruntime_ops"] = specific
    return metrics
