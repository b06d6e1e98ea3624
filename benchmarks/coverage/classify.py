"""Failure classes of the coverage matrices: each failed cell put under the mechanism that would answer it.

Each route modelbuild tried and dropped for a cell gets a class from its one-line reason (and, for an op case,
the case's ATen ops and which of them PyTorch decomposes); the cell takes the first of its routes' classes in
`PRIORITY`: the mechanism that would make *some* route work, not the accident of which route ran first. A cell
that a single converter of its family delivered alone (the anchor) while every modelbuild route failed is a
`switch`: the converter, frontend or option exists and modelbuild does not pick it.

- `bug`: modelbuild itself failed (a build that reported nothing for the target, an internal error, a check that
  could not open what its own step wrote, an artifact whose inputs lost the signature's names);
- `static`: an export with dynamic shapes violated a constraint, or a converter cannot take an unknown dimension
  (a fixed-shape format answers it by exporting at static shapes);
- `data-dependent`: an output whose shape depends on the data (nonzero, masked_select, argwhere): a static bound;
- `family-fft`, `family-complex`, `family-scatter`, `family-recurrent`, `family-cdist`, `family-triu`: the refused
  op belongs to a family issue 35 asks a family rewrite for;
- `decomposition`: a converter or runtime refused an ATen op that PyTorch's own decomposition table turns into
  other ATen ops (benchmarks/coverage/decompose.py);
- `switch`: a refusal a converter option answers (TFLite select ops; onnx2tf failing on an elementwise or shape op
  it does support, where its layout and broadcasting switches or the litert-torch route answer), or a single
  converter of the family delivers what modelbuild did not;
- `dtype`: a dtype the converter or runtime lacks (float64, int64, bool);
- `numerics-fp32` / `numerics-fp16` / `numerics-int8`: the artifact was made and ran but missed its tolerance;
- `kernel`: the converter or runtime lacks the op and PyTorch has no decomposition for it;
- `crash`: the converter or runtime crashed its worker process;
- `cost`: a step stopped by its time budget or a memory limit;
- `other`: none of the above (listed with its reason, to be read).
"""

from __future__ import annotations

import re
from typing import Any, Iterable

#: Class → a sentence on the mechanism that answers it (docs/coverage.md prints these), in priority order.
MECHANISMS = {
    "bug": "modelbuild bug: fix modelbuild",
    "static": "dynamic-shape constraint: export at the format's static shapes",
    "data-dependent": "data-dependent output shape (nonzero, masked_select): a static bound",
    "family-fft": "family rewrite: FFT as real DFT matmuls",
    "family-complex": "family rewrite: complex tensors as real pairs",
    "family-scatter": "family rewrite: scatter / index_add / index_put(accumulate)",
    "family-recurrent": "family rewrite: recurrent layers unrolled",
    "family-cdist": "family rewrite: cdist / pairwise distances",
    "family-triu": "family rewrite: triu / tril with static masks",
    "decomposition": "PyTorch decomposition available: the decomposition route",
    "switch": "a converter switch or route: an option answers the refusal, or a single converter delivers it",
    "dtype": "a dtype the format lacks (float64, int64, bool): cast where the module is loaded",
    "numerics-fp32": "numerics: an fp32 artifact outside the fp32 tolerance (a wrong lowering, an ill-conditioned op)",
    "numerics-fp16": "numerics: an fp16 miss",
    "numerics-int8": "numerics: an int8 miss (repair recipes did not reach the tolerance)",
    "kernel": "the converter or runtime lacks the op and PyTorch has no decomposition: a converter kernel or rewrite",
    "crash": "a converter or runtime crashed its worker: another route, or a rewrite around the op",
    "cost": "unbounded cost: a step past its time budget or memory",
    "other": "unclassified: read the reason",
}
PRIORITY = tuple(MECHANISMS)

_FAMILIES = (
    ("family-fft", r"\b(?:_?fft\w*|stft|istft|rfft\w*|irfft\w*|hfft\w*|ihfft\w*|DFT|STFT)\b"),
    ("family-complex", r"complex|view_as_real|view_as_complex|\bpolar\b|\bangle\b|\bconj\w*"),
    ("family-scatter", r"\b(?:scatter\w*|index_add\w*|index_put\w*|index_copy\w*|index_reduce\w*|masked_scatter\w*|"
                       r"ScatterND|ScatterElements|put_?)\b"),
    ("family-recurrent", r"\b(?:lstm\w*|gru\w*|rnn_\w+|LSTM|GRU|RNN|TensorList\w*|Loop)\b"),
    ("family-cdist", r"\b(?:_?cdist\w*|pdist\w*|_euclidean_dist)\b"),
    ("family-triu", r"\b(?:triu|tril)(?:_indices)?\b|Trilu"),
)
#: Tested on a route's reason before anything else, in this order.
_RULES = (
    ("bug", r"modelbuild build exited|bug in modelbuild|internal error|Item does not exist for identifier|"
            r"are none of the signature's"),
    ("crash", r"the worker crashed|the worker exited with code|killed by signal (?!9\b)"),
    ("cost", r"timed? ?out|timeout|exceeded .*(?:budget|seconds)|still running at its .*budget|out of memory|"
             r"memory (?:ceiling|limit)|MemoryError|killed by signal 9\b|SIGKILL"),
    ("data-dependent", r"GuardOnDataDependent|data-dependent|unbacked|nonzero|masked_select|argwhere"),
    ("static", r"Constraints violated|specializ|dynamic_shapes|dynamic shape|Dim\(|symbolic shape|"
               r"unknown (?:first )?dimension|unknown rank|None dimension"),
)
#: Refusals an option of the converter answers: TFLite's select TF ops; onnx2tf failing on an elementwise or shape
#: op it does support (its NCHW→NHWC transposition and broadcasting; its switches or the litert-torch route).
_SWITCH = (r"select_tf_ops|Flex delegate|param_replacement|replace_?\w+_to_|broadcast|onnx2tf could not convert the "
           r"ONNX op (?:Add|Sub|Mul|Div|Pow|Reshape|Expand|Transpose|Concat|Gather|Slice|Squeeze|Unsqueeze|MatMul|"
           r"Where|Split|Einsum|Tile|Flatten)\b")
_DTYPE = r"float64|\bdouble\b|DOUBLE|\bint64\b|INT64|\bbool\b|BOOL|dtype|data type|element type"
_LACKS = (r"not supported|no conversion|not implemented|NotImplemented|does not support|Unsupported|no builtin kernel|"
          r"could not convert|cannot convert|lacks|Lowering not found|not in Core ATen opset|Missing operator")
_EXECUTORCH_CORE = re.compile(r"Operator torch\._ops\.aten\.([A-Za-z0-9_]+)\.\w+ is not in Core ATen opset")
#: Ops whose presence says nothing about a refusal (the case's batch-axis squeeze/unsqueeze, copies, views).
_PLUMBING = {"aten.squeeze", "aten.unsqueeze", "aten.view", "aten._unsafe_view", "aten.clone", "aten.alias",
             "aten.detach", "aten.copy_", "aten._to_copy", "aten.expand", "aten.select", "aten.slice",
             "aten.contiguous", "aten.lift_fresh", "aten.empty", "aten.t", "aten.transpose", "aten.permute"}


def named_ops(text: str, case_ops: Iterable[str]) -> list[str]:
    """The ATen ops (aten.x) the text names (aten::x, aten.x, 'x', ONNX/TF CamelCase), else those of the case."""
    from buildsys.rewrites.refusal import ops_named

    named = [f"aten.{n}" for n in ops_named(text)]
    m = _EXECUTORCH_CORE.search(text)
    if m:
        named.insert(0, f"aten.{m.group(1)}")
    named += [f"aten.{q}" for q in re.findall(r"op '([A-Za-z0-9_]+)'", text)]
    case = [op for op in case_ops if op not in _PLUMBING]
    alone = r"(?<![A-Za-z0-9_]){}(?![A-Za-z0-9_])"
    for op in case:
        base = op.split(".", 1)[1]
        camel = "".join(p[:1].upper() + p[1:] for p in base.strip("_").split("_"))
        if re.search(alone.format(re.escape(base)), text) or re.search(alone.format(re.escape(camel)), text):
            named.append(op)
    return list(dict.fromkeys(named)) or case


def missed_tolerance(route: dict[str, Any]) -> bool:
    """Whether a dropped route's artifact was made and ran but missed its tolerance (its check's metric line,
    `out0: max_rel 1.9e+00 > 1.0e-04`), rather than failing to convert or to run."""
    reason = route.get("reason", "")
    return str(route.get("node", "")).startswith("verify:") and not reason.startswith("model '") and \
        bool(re.match(r"[\w.-]+: |acceptance not met", reason))


def _family(ops: Iterable[str], text: str) -> str | None:
    for name, pattern in _FAMILIES:
        if any(re.search(pattern, op.split(".", 1)[-1]) for op in ops) or (text and re.search(pattern, text)):
            return name
    return None


def route_class(route: dict[str, Any], family: str, case_ops: list[str], decomposable: dict[str, list[str]],
                precision: str) -> str:
    """The class of one dropped route (see the module doc)."""
    reason = route.get("reason", "")
    if not reason:
        return "bug"
    for name, pattern in _RULES:
        if re.search(pattern, reason, re.IGNORECASE if name == "cost" else 0):
            return name
    if missed_tolerance(route):
        return _family(case_ops, "") or f"numerics-{precision}"
    ops = named_ops(reason, case_ops)
    found = _family(ops, reason)
    if found:
        return found
    if any(op in decomposable for op in ops):
        return "decomposition"
    if re.search(_SWITCH, reason):
        return "switch"
    if re.search(_DTYPE, reason):
        return "dtype"
    return "kernel" if re.search(_LACKS, reason, re.IGNORECASE) else "other"


def classify(cell: dict[str, Any], family: str, *, case_ops: Iterable[str] = (),
             decomposable: dict[str, list[str]] | None = None, precisions: dict[str, str] | None = None,
             single: Iterable[str] = ()) -> str:
    """The class of one failed cell: its routes' classes, the first in PRIORITY; `switch` when `single`
    converters of the family delivered it alone and no route shows a modelbuild bug. Where a route's artifact was
    built and missed its check, the conversion works and the numbers do not: the class of that miss (a refused
    dynamic export that the static re-export answered before the miss is not what the cell lacks)."""
    if cell.get("status") == "no result":
        return "bug"
    routes = cell.get("routes") or [{"reason": cell.get("reason", ""), "node": cell.get("node", "")}]
    ops = [op for op in case_ops if op not in _PLUMBING]
    precision = (precisions or {}).get(family, "fp32")
    classes = {route_class(r, family, ops, decomposable or {}, precision) for r in routes}
    if list(single) and "bug" not in classes:
        return "switch"
    missed = next((r for r in routes if str(r.get("node", "")).startswith("verify:")), None)
    if missed is not None and "bug" not in classes:
        return route_class(missed, family, ops, decomposable or {}, precision)
    return min(classes, key=PRIORITY.index)


def single_converters(anchors: dict[str, Any], family: str, families_of: dict[str, str]) -> list[str]:
    """The converters of `family` that verified the row alone (the anchor's cells)."""
    return sorted(c for c, r in anchors.items() if families_of.get(c) == family and r.get("status") == "verified")
