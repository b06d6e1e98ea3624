"""Failure classes of the coverage matrices: each failed cell put under the mechanism that would answer it.

The classes, in the order a cell is tested against them (the first that matches wins):

- `bug`: modelbuild itself failed (a build that reported nothing for the target, an internal error, a check
  that could not open what its own step wrote);
- `crash`: the converter or runtime crashed its worker process (a segfault, an abort);
- `cost`: a step stopped by its time budget or a memory limit;
- `static`: torch.export with dynamic shapes violated a constraint or specialised an axis (a fixed-shape format
  answers it by re-exporting at static shapes);
- `numerics-fp32` / `numerics-fp16` / `numerics-int8`: an artifact was made and ran but missed its tolerance
  (by the target's precision);
- `family-fft`, `family-complex`, `family-scatter`, `family-recurrent`, `family-cdist`, `family-triu`: the refused
  op belongs to a family issue 35 asks a family rewrite for;
- `decomposition`: a converter or runtime refused an ATen op that PyTorch's own decomposition table turns into
  other ATen ops (benchmarks/coverage/decompose.py), or ExecuTorch's "not in Core ATen opset";
- `switch`: a refusal a converter option answers (TFLite select ops, coremltools' other frontend, onnx2tf's
  broadcasting and parameter replacement switches);
- `dtype`: the artifact holds a dtype the converter or runtime lacks (float64, int64, bool);
- `kernel`: the converter or runtime lacks the op and PyTorch has no decomposition for it (a converter kernel
  or a rewrite is needed);
- `other`: none of the above (listed with its reason, to be read).

Independently, `single` says which converters of the cell's family delivered the same module alone (the anchor):
a cell modelbuild misses while a single converter delivers is a route or option modelbuild does not try.
"""

from __future__ import annotations

import re
from typing import Any, Iterable

#: Class → a sentence on the mechanism that answers it (docs/coverage.md prints these).
MECHANISMS = {
    "bug": "modelbuild bug: fix modelbuild",
    "crash": "a converter or runtime crashed its worker: another route, or a rewrite around the op",
    "cost": "unbounded cost: a step past its time budget or memory",
    "static": "dynamic-shape constraint: re-export at the format's static shapes",
    "numerics-fp32": "numerics: an fp32 artifact outside the fp32 tolerance (a wrong lowering, an ill-conditioned op)",
    "numerics-fp16": "numerics: an fp16 miss",
    "numerics-int8": "numerics: an int8 miss (repair recipes did not reach the tolerance)",
    "family-fft": "family rewrite: FFT as real DFT matmuls",
    "family-complex": "family rewrite: complex tensors as real pairs",
    "family-scatter": "family rewrite: scatter / index_add / index_put(accumulate)",
    "family-recurrent": "family rewrite: recurrent layers unrolled",
    "family-cdist": "family rewrite: cdist / pairwise distances",
    "family-triu": "family rewrite: triu / tril with static masks",
    "decomposition": "PyTorch decomposition available: the decomposition route",
    "switch": "a converter switch (select ops, the other coremltools frontend, onnx2tf switches)",
    "dtype": "a dtype the format lacks (float64, int64, bool): cast where the module is loaded",
    "kernel": "the converter or runtime lacks the op and PyTorch has no decomposition: a converter kernel or rewrite",
    "other": "unclassified: read the reason",
}

_FAMILIES = (
    ("family-fft", r"\b(?:_?fft\w*|stft|istft|rfft\w*|irfft\w*|hfft\w*|ihfft\w*|DFT|STFT)\b"),
    ("family-complex", r"complex|view_as_real|view_as_complex|\bpolar\b|\bangle\b|\bconj\w*"),
    ("family-scatter", r"\b(?:scatter\w*|index_add\w*|index_put\w*|index_copy\w*|index_reduce\w*|masked_scatter\w*|"
                       r"ScatterND|ScatterElements|put_?)\b"),
    ("family-recurrent", r"\b(?:lstm\w*|gru\w*|rnn_\w+|LSTM|GRU|RNN|TensorList\w*|Loop)\b"),
    ("family-cdist", r"\b(?:_?cdist\w*|pdist\w*|_euclidean_dist)\b"),
    ("family-triu", r"\b(?:triu|tril)(?:_indices)?\b|Trilu"),
)
_RULES = (
    ("bug", r"modelbuild build exited|bug in modelbuild|internal error|Item does not exist for identifier|"
            r"failed earlier in this build: .*bug"),
    ("crash", r"the worker crashed|the worker exited with code|killed by signal (?!9\b)"),
    ("cost", r"timed? ?out|timeout|exceeded .*(?:budget|seconds)|out of memory|memory (?:ceiling|limit)|"
             r"MemoryError|killed .*(?:memory|time)|killed by signal 9\b|SIGKILL"),
    ("static", r"Constraints violated|specializ|guard on data-dependent|GuardOnDataDependent|"
               r"dynamic_shapes|dynamic shape|Dim\(|symbolic shape|unbacked"),
)
_SWITCH = r"select_tf_ops|Flex delegate|other frontend|param_replacement|replace_?\w+_to_|broadcast"
_DTYPE = r"float64|\bdouble\b|DOUBLE|\bint64\b|INT64|\bbool\b|BOOL|dtype|data type|element type"
_EXECUTORCH_CORE = re.compile(r"Operator torch\._ops\.aten\.([A-Za-z0-9_]+)\.\w+ is not in Core ATen opset")
#: Ops whose presence says nothing about a refusal (the case's batch-axis squeeze/unsqueeze, copies, views).
_PLUMBING = {"aten.squeeze", "aten.unsqueeze", "aten.view", "aten._unsafe_view", "aten.clone", "aten.alias",
             "aten.detach", "aten.copy_", "aten._to_copy", "aten.expand", "aten.select", "aten.slice",
             "aten.contiguous", "aten.lift_fresh", "aten.empty", "aten.t", "aten.transpose", "aten.permute"}


def _precision(family: str, precisions: dict[str, str]) -> str:
    return precisions.get(family, "fp32")


def named_ops(text: str, case_ops: Iterable[str]) -> list[str]:
    """The ATen ops (aten.x) the text names (aten::x, aten.x, 'x', ONNX/TF CamelCase), else those of the case."""
    from buildsys.rewrites.refusal import ops_named

    named = [f"aten.{n}" for n in ops_named(text)]
    m = _EXECUTORCH_CORE.search(text)
    if m:
        named.insert(0, f"aten.{m.group(1)}")
    quoted = re.findall(r"op '([A-Za-z0-9_]+)'", text)
    named += [f"aten.{q}" for q in quoted]
    case = [op for op in case_ops if op not in _PLUMBING]
    for op in case:
        base = op.split(".", 1)[1]
        camel = "".join(p[:1].upper() + p[1:] for p in base.strip("_").split("_"))
        alone = r"(?<![A-Za-z0-9_]){}(?![A-Za-z0-9_])"
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


def classify(cell: dict[str, Any], family: str, *, case_ops: Iterable[str] = (),
             decomposable: dict[str, list[str]] | None = None, precisions: dict[str, str] | None = None) -> str:
    """The class of one failed cell (see the module doc), from its reasons and the case's ATen ops."""
    routes = cell.get("routes") or ([{"reason": cell.get("reason", ""), "node": cell.get("node", "")}]
                                    if cell.get("reason") else [])
    text = "\n".join(r.get("reason", "") for r in routes)
    if cell.get("status") == "no result" or not text:
        return "bug"
    for name, pattern in _RULES:
        if re.search(pattern, text, re.IGNORECASE if name == "cost" else 0):
            return name
    case_ops = [op for op in case_ops if op not in _PLUMBING]
    refusals = "\n".join(r.get("reason", "") for r in routes if not missed_tolerance(r))
    if not refusals:  # every route made an artifact that ran and missed its tolerance
        return _family(case_ops, "") or f"numerics-{(precisions or {}).get(family, 'fp32')}"
    ops = named_ops(refusals, case_ops)
    found = _family(ops, refusals)
    if found:
        return found
    if _EXECUTORCH_CORE.search(refusals) or any(op in (decomposable or {}) for op in ops):
        return "decomposition"
    if re.search(_SWITCH, refusals):
        return "switch"
    if re.search(_DTYPE, refusals):
        return "dtype"
    if re.search(r"not supported|no conversion|not implemented|NotImplemented|does not support|Unsupported|"
                 r"no builtin kernel|could not convert|cannot convert|lacks", refusals, re.IGNORECASE):
        return "kernel"
    return "other"


def single_converters(anchors: dict[str, Any], family: str, families_of: dict[str, str]) -> list[str]:
    """The converters of `family` that verified the row alone (the anchor's cells)."""
    return sorted(c for c, r in anchors.items() if families_of.get(c) == family and r.get("status") == "verified")
