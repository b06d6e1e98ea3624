"""What share of a model's weights a quantized artifact holds in the precision that was asked, its weight bytes
against the ideal for that precision, and the floor it is held to.

Every quantizing step measures its own output (docs/quantization.md#what-was-asked-is-what-ships): an
inspector of its format family lists the artifact's *weight layers* — each constant tensor read as the weight
of a linear, convolution, recurrent or embedding op — with the element type the artifact stores it in
(`WeightTensor`), and `record` turns that list into the `quantized_weights` fact the step commits to
deploy.lock. The target's check compares the record's share with a floor per precision (`FLOORS`, or the
target's `acceptance.min_quantized_share`) and, below it, fails naming the layers that stayed wider and why.

The share counts **every weight**, by element count, each tensor once (a weight two ops share, such as a tied
embedding and output head, counts once, under the linear kind): the layers an accuracy repair or the target
keeps float, embedding tables, layers under a quantizer's own size threshold (Core ML's `weight_threshold`),
layers a quantizer's accuracy control reverted (NNCF's `max_accuracy_drop`) and layers of a kind the quantizer
skipped all count against it, because all of them are in the file the user ships. The record says *why* each
wider layer is wider (`why_wider`: kept_float, embedding, below_threshold, accuracy_control, not_quantized),
and `of_quantizable` keeps the share over the layers the quantizer was asked to take (linear and convolution
weights not kept float on purpose): 100 % there and 40 % overall is a repair or an embedding table, not a
quantizer that skipped a layer kind. Bytes are counted too: the weights' bytes by stored type, and their
ratio to the ideal (every weight at the asked precision: elements × 1 byte for int8, ½ for int4).
Not weights: biases, norms' scales, the KV cache (an input of the program, never a constant).

Standard library only: the planner and the check import it; the inspectors (formats/*/weights.py) import
their toolchains inside their functions and this module for the record.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Iterable

#: The version of what a record counts and how: it enters the key of every step that commits one (planning/planner.py),
#: so a change here re-measures their artifacts. 2: every weight counts against the share (embeddings, kept layers,
#: recurrent layers' matrices); weight bytes against the ideal; why each wider layer is wider.
VERSION = 2
#: Bits of the integer element types a weight may be stored in, by the label the inspectors give them.
BITS = {"int8": 8, "uint8": 8, "int4": 4, "uint4": 4, "nf4": 4, "int2": 2, "uint2": 2,
        "lut8": 8, "lut6": 6, "lut4": 4, "lut3": 3, "lut2": 2, "lut1": 1}
#: The widest element a weight may have to count as being in the asked precision: for an integer precision an
#: integer (or palettized) element of at most that width; for fp16 any element of at most 16 bits, float or integer
#: (an fp16 package whose repair or converter stored a layer in int8 holds it narrower than asked, not wider).
ASKED_BITS = {"int8": 8, "int4": 4, "fp16": 16}
#: The asked precisions whose floating-point weights of the asked width count as being in it.
FLOAT_PRECISIONS = ("fp16",)
#: The share of all weights (by element count) that must be at the asked precision or narrower, unless the
#: target sets `acceptance.min_quantized_share`. int8: three quarters of the weights in int8 with the rest in
#: float32 is 1.75× the int8 ideal size and still 2.3× smaller than float32; below it the artifact is nearer a
#: float model than the int8 one asked for (a MobileNetV3-Small whose repair kept its classifier float: 14 %; a
#: BERT-style encoder with a float embedding table: 29 %), and the check refuses it, naming the layers. A
#: target that wants such an artifact lowers the floor and the summary shows the share. int4: grouped int4
#: schemes keep a layer whose width no group divides, and NNCF keeps the output head and embeddings at int8
#: (its backup precision): 0.5 still catches a scheme that left most of the model at int8. fp16: three quarters of
#: the weights in float16 with the rest in float32 is 1.25× the fp16 size, under the 1.3× a user who asked fp16
#: for size can be held to; an fp16 keep-float repair that kept more float32 than that delivered a model nearer
#: fp32, and the check says which layers. fp32 has no floor.
FLOORS: dict[str, float] = {"int8": 0.75, "int4": 0.5, "fp16": 0.75}
#: The layer kinds a quantizer is asked to take (`of_quantizable`); every kind counts against the share.
COUNTED = ("linear", "conv")
#: Why a weight layer is wider than asked, in the order a record lists them.
WHY_WIDER = ("kept_float", "accuracy_control", "embedding", "below_threshold", "not_quantized")
#: Bits per element of the floating-point types a weight may be stored in.
FLOAT_BITS = {"float64": 64, "float32": 32, "float16": 16, "bfloat16": 16, "float8": 8}
#: The trailing width of a lookup table that holds one value per row: the per-row scales of an int8 embedding table
#: (formats/torch/embedding.py), which the inspectors do not count as a table of its own.
SCALE_WIDTH = 1
#: Names a record lists in full; beyond this many, the count of the rest.
SHOWN = 24


@dataclass(frozen=True)
class WeightTensor:
    """One weight layer of an artifact: the constant tensor a linear, convolution or embedding op reads."""

    name: str  # the weight's name in the artifact (an initializer, a tensor, a constant): what the user sees
    kind: str  # 'linear', 'conv' or 'embedding'
    elements: int
    dtype: str  # as stored: 'int8', 'uint4', 'lut4' (a 16-entry palette), 'float16', 'float32'
    aliases: tuple[str, ...] = ()  # other names it goes by: its op's node name, its module path
    shown: str = ""  # the name a user recognises, where `name` is one the exporter made up (ONNX's onnx::MatMul_114)

    @property
    def bits(self) -> int | None:
        """Bits per element of an integer (or palettized) weight; None for a floating-point one."""
        return BITS.get(self.dtype)

    @property
    def width(self) -> int:
        """Bits per stored element, integer or floating point (32 for a type no table names)."""
        return self.bits or FLOAT_BITS.get(self.dtype) or int("".join(c for c in self.dtype if c.isdigit()) or 32)

    def at(self, asked: str) -> bool:
        """Whether this weight is stored at precision `asked` or narrower (see ASKED_BITS)."""
        limit = ASKED_BITS.get(asked, 8)
        if asked in FLOAT_PRECISIONS:
            return self.width <= limit
        return self.bits is not None and self.bits <= limit

    @property
    def nbytes(self) -> float:
        """Bytes its elements take as stored (a palette's entries and a quantizer's scales not counted)."""
        return self.elements * self.width / 8

    def names(self) -> tuple[str, ...]:
        return (self.name, *self.aliases)


@dataclass
class _Tally:
    """Elements and layers counted, and the elements at the asked precision among them."""

    quantized: int = 0
    counted: int = 0
    layers: int = 0

    def add(self, weight: WeightTensor, at_asked: bool) -> None:
        self.counted += weight.elements
        self.layers += 1
        self.quantized += weight.elements if at_asked else 0

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"quantized": self.quantized, "elements": self.counted, "layers": self.layers}
        if self.counted:
            out["share"] = round(self.quantized / self.counted, 4)
        return out


def kept_float(metrics: dict[str, Any], options: Any = None) -> list[str]:
    """The layers a step keeps float on purpose: its accuracy repair's `kept_float` (the record every
    repairing step writes: formats/*/sensitivity.py, tflite/aeq.py) and a `keep_float` list in its options."""
    repair = metrics.get("repair")
    names = [str(n) for n in repair.get("kept_float", [])] if isinstance(repair, dict) else []
    own = getattr(options, "keep_float", ())
    return names + [str(n) for n in own if str(n) not in names] if isinstance(own, (list, tuple)) else names


def _kept(weight: WeightTensor, kept: Iterable[str]) -> bool:
    names = weight.names()
    return any(n == k or n.startswith((k + ".", k + "/")) for k in kept if k for n in names if n)


def record(weights: Iterable[WeightTensor], asked: str, measured_on: str, kept: Iterable[str] = (),
           small: int = 0, reverted: bool = False) -> dict[str, Any]:
    """The `quantized_weights` fact of an artifact at precision `asked` ('int8', 'int4', 'fp16'), from its weight
    layers: the share of all weight elements at `asked` or narrower, by kind and by stored type; the weight
    bytes by stored type and their ratio to the ideal; the layers that stayed wider (name → type) and why
    (`why_wider`): `kept` float by keep_float or a repair, reverted by the quantizer's accuracy control (with
    `reverted`: every float linear or convolution, NNCF's `max_accuracy_drop` put them back), embedding tables,
    float layers with fewer than `small` elements where the quantizer skips such by its own size threshold
    (Core ML's weight_threshold), and the rest (`not_quantized`: a layer kind the quantizer skipped)."""
    weights = list(weights)
    limit = ASKED_BITS.get(asked, 8)
    kept = [str(k) for k in kept]
    seen: set[str] = set()
    total, quantizable = _Tally(), _Tally()
    by_kind: dict[str, _Tally] = {}
    by_dtype: dict[str, int] = {}
    bytes_by_dtype: dict[str, float] = {}
    wider: dict[str, str] = {}
    why_wider: dict[str, list[WeightTensor]] = {}
    for w in weights:
        if w.name in seen:
            continue
        seen.add(w.name)
        at_asked = w.at(asked)
        total.add(w, at_asked)
        by_kind.setdefault(w.kind, _Tally()).add(w, at_asked)
        by_dtype[w.dtype] = by_dtype.get(w.dtype, 0) + w.elements
        bytes_by_dtype[w.dtype] = bytes_by_dtype.get(w.dtype, 0.0) + w.nbytes
        reverted_here = reverted and w.kind in COUNTED and not at_asked
        deliberate = reverted_here or _kept(w, kept) or (not at_asked and w.elements < small)
        if w.kind in COUNTED and not deliberate:
            quantizable.add(w, at_asked)
        if at_asked:
            continue
        wider[w.shown or w.name] = w.dtype
        reason = ("kept_float" if _kept(w, kept) else "accuracy_control" if reverted_here
                  else "embedding" if w.kind not in COUNTED else "below_threshold" if w.elements < small
                  else "not_quantized")
        why_wider.setdefault(reason, []).append(w)
    weight_bytes = round(sum(bytes_by_dtype.values()))
    ideal = total.counted * limit / 8
    out: dict[str, Any] = {
        "asked": asked, "measured_on": measured_on, "quantized": total.quantized, "elements": total.counted,
        "share": round(total.quantized / total.counted, 4) if total.counted else None,
        "of_quantizable": round(quantizable.quantized / quantizable.counted, 4) if quantizable.counted else None,
        "weight_bytes": weight_bytes, "ideal_bytes": round(ideal),
        "size_ratio": round(weight_bytes / ideal, 3) if ideal else None,
        "by_kind": {k: t.as_dict() for k, t in sorted(by_kind.items())},
        "by_dtype": dict(sorted(by_dtype.items())),
        "bytes_by_dtype": {k: round(v) for k, v in sorted(bytes_by_dtype.items())},
        "wider": dict(list(wider.items())[:SHOWN]),
    }
    if len(wider) > SHOWN:
        out["wider_more"] = len(wider) - SHOWN
    if why_wider:
        out["why_wider"] = {why: {"layers": len(why_wider[why]), "elements": sum(w.elements for w in why_wider[why]),
                                  "names": [w.shown or w.name for w in why_wider[why][:SHOWN]]}
                            for why in WHY_WIDER if why in why_wider}
    return out


def floor_of(precision: str) -> float | None:
    """The default floor of the share for a target at `precision` (None: no floor, fp32)."""
    return FLOORS.get(precision)


#: Why a layer is wider, in words, and what would bring it to the asked precision.
REASONS: dict[str, tuple[str, str]] = {
    "kept_float": ("kept float by the accuracy repair or keep_float",
                   "they are what the target's tolerance costs: allow more error ({tolerance}) or calibrate on data "
                   "closer to the evaluation set, and fewer stay float"),
    "accuracy_control": ("reverted to float by the quantizer's accuracy control",
                         "allow a larger max_accuracy_drop, and fewer are reverted"),
    "embedding": ("embedding tables the format stores wider",
                  "a format with a quantized (or float16) lookup stores them narrower; keep them wider on purpose "
                  "with keep_float and a lower floor"),
    "below_threshold": ("below the quantizer's size threshold", "lower the step's weight_threshold"),
    "not_quantized": ("of a kind the quantizer skipped", "a rewrite to a layer kind it quantizes (docs/rewrites.md)"),
}


def shortfall(fact: dict[str, Any] | None, floor: float | None, tolerance: str = "") -> str | None:
    """Why an artifact whose `quantized_weights` fact is `fact` misses `floor`: the layers that stayed wider,
    grouped by why, with their share of the weights and what would bring each group to the asked precision
    (`tolerance`: the target's limits in words, for the layers a repair kept); None when it meets the floor (or
    there is no floor, or nothing to count)."""
    if floor is None or not fact or fact.get("share") is None:
        return None
    share = float(fact["share"])
    if share >= floor:
        return None
    elements = max(int(fact.get("elements") or 0), 1)
    groups = []
    for why, group in (fact.get("why_wider") or {}).items():
        words, remedy = REASONS.get(why, (why.replace("_", " "), ""))
        names = ", ".join(group["names"]) + (f" and {group['layers'] - len(group['names'])} more"
                                              if group["layers"] > len(group["names"]) else "")
        groups.append(f"{group['elements'] / elements:.1%} {words} ({group['layers']} layer(s): {names}; "
                      f"{remedy.format(tolerance=tolerance or 'the target acceptance')})")
    if not groups:  # a record from before `why_wider`: the wider layers by name
        groups = [", ".join(f"{name} ({dtype})" for name, dtype in (fact.get("wider") or {}).items())]
    size = f", {fact['size_ratio']:.2f}× the {fact.get('asked')} size" if fact.get("size_ratio") else ""
    return (f"only {share:.1%} of the weights are {fact.get('asked')} (floor {floor:.0%}, min_quantized_share; "
            f"measured on {fact.get('measured_on')}{size}): " + "; ".join(groups)
            + f". To ship this artifact as it is, set acceptance.min_quantized_share: {math.floor(share * 100) / 100:g} "
            "on the target: the summary then shows the share it holds")


def judged_share(fact: dict[str, Any] | None, floor: float | None,
                 outputs: dict[str, Any]) -> tuple[dict[str, Any] | None, str | None]:
    """What a check records of an artifact's `quantized_weights` fact (as its quantizing step measured it, from the
    chain) against `floor`, and why it misses (`shortfall`, the target's limits of `outputs` in its words), or None.
    (None, None) where nothing measured it (an fp32 artifact, a format whose step has no inspector)."""
    if not fact or fact.get("share") is None:
        return None, None
    short = shortfall(fact, floor, tolerance_words(outputs))
    found = {"observed": fact["share"], "allowed": floor, "op": ">=", "ok": short is None, "asked": fact.get("asked"),
             "measured_on": fact.get("measured_on")}
    found.update({k: fact[k] for k in ("size_ratio", "weight_bytes", "activations")  # bytes vs ideal
                  if fact.get(k) is not None})
    return found, short


def tolerance_words(outputs: dict[str, Any]) -> str:
    """The limits of a check's outputs (name → resolved limits, a model or a dict) in words, for what a repair's
    kept layers cost: 'logits: min_cosine 0.9, min_top1_agreement 0.9'."""
    def limits(values: Any) -> str:
        items = values.model_dump() if hasattr(values, "model_dump") else dict(values)
        return ", ".join(f"{k} {v:g}" for k, v in items.items() if isinstance(v, (int, float)) and not isinstance(v, bool))

    return "; ".join(f"{name}: {limits(values)}" for name, values in outputs.items() if limits(values))


#: A quantizing step's scheme (its committed `scheme` or `method` fact, or the first words of its description) →
#: what the artifact's activations are: 'dynamic' (int8 weights, activations quantized per call: a CPU kernel, not
#: an NPU or DSP delegate) or 'float' (weight-only: int8 weights widened at load, float compute). Static schemes
#: (full int8, QAT, keep-float over full int8) have int8 activations and no label.
ACTIVATIONS = {"dynamic": "dynamic", "8da4w": "dynamic", "weight-only": "float", "weight only": "float"}


def activations(facts: dict[str, Any] | None) -> str | None:
    """'dynamic' or 'float' where a quantizing step's facts say its activations are not int8 (see ACTIVATIONS);
    None for int8 activations or a step that names no scheme."""
    scheme = str((facts or {}).get("scheme") or (facts or {}).get("method") or "").lower()
    return next((words for key, words in ACTIVATIONS.items() if scheme.startswith(key)), None)


def describe(fact: dict[str, Any] | None) -> str | None:
    """The fact in a few words, for `explain`, the summary and the model card: '72% of the weights int8 (1.6×
    the int8 size; linear 100%, conv 100%; wider: embedding 28%; measured on …)'."""
    if not fact or fact.get("share") is None:
        return None
    kinds = ", ".join(f"{kind} {t['share']:.0%}" for kind, t in fact.get("by_kind", {}).items() if "share" in t)
    elements = max(int(fact.get("elements") or 0), 1)
    wider = ", ".join(f"{why.replace('_', ' ')} {group['elements'] / elements:.0%}"
                      for why, group in (fact.get("why_wider") or {}).items())
    size = f"{fact['size_ratio']:.2f}× the {fact.get('asked')} size; " if fact.get("size_ratio") else ""
    return (f"{fact['share']:.0%} of the weights {fact.get('asked')} ({size}{kinds}"
            + (f"; wider: {wider}" if wider else "") + f"; measured on {fact.get('measured_on')})")
