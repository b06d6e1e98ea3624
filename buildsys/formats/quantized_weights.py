"""What share of a model's weights a quantized artifact holds in the precision that was asked, and its floor.

Every quantizing step measures its own output (docs/quantization.md#what-was-asked-is-what-ships): an
inspector of its format family lists the artifact's *weight layers* — each constant tensor read as the weight
of a linear, convolution or embedding op — with the element type the artifact stores it in
(`WeightTensor`), and `record` turns that list into the `quantized_weights` fact the step commits to
deploy.lock. The target's check compares the record's share with a floor per precision (`FLOORS`, or the
target's `acceptance.min_quantized_share`) and, below it, fails naming the layers that stayed wider.

What the share counts (its denominator): linear and convolution weights, by element count, each tensor once
(a weight two ops share, such as a tied embedding and output head, counts once, under the linear kind).
What it leaves out, listed by name in the record: embedding tables (kind `embedding`, conventionally kept
float by LLM quantizers; counted in `by_kind` when they are quantized, never against the share), the
layers the target or an accuracy-repair recipe deliberately keeps float (`keep_float`, matched by any of a
layer's names: its weight, its op's node name, its module path or a prefix of it), float layers under a
quantizer's own size threshold (Core ML's `weight_threshold`: tensors too small to be worth compressing), the
layers a quantizer's accuracy control reverted to float to hold the accuracy drop the target allows (NNCF's
`max_accuracy_drop`: `accuracy_control`),
and everything that is not a weight layer: biases, norms' scales, the KV cache (an input of the program,
never a constant).

Standard library only: the planner and the check import it; the inspectors (formats/*/weights.py) import
their toolchains inside their functions and this module for the record.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable

#: Bits of the integer element types a weight may be stored in, by the label the inspectors give them.
BITS = {"int8": 8, "uint8": 8, "int4": 4, "uint4": 4, "nf4": 4, "int2": 2, "uint2": 2,
        "lut8": 8, "lut6": 6, "lut4": 4, "lut3": 3, "lut2": 2, "lut1": 1}
#: The widest element a weight may have to count as being in the asked precision.
ASKED_BITS = {"int8": 8, "int4": 4}
#: The share of counted weights (linear and convolution) that must be at the asked precision or narrower.
#: int8: every post-training quantizer here quantizes every linear and convolution layer it recognises;
#: a model under 90 % has a layer kind its quantizer skipped (GPT-2's Conv1D before it was recognised:
#: 1.5 %), or weights below a size threshold that dominate a tiny model. int4: grouped int4 schemes keep
#: a layer whose width no group divides, and NNCF keeps the output head at int8 by default (its backup
#: precision); measured on the tests' tiny LMs: 80-100 %, so 0.75 leaves room for the head and catches
#: a scheme that left half of the model at int8. fp32 and fp16 targets have no floor.
FLOORS: dict[str, float] = {"int8": 0.9, "int4": 0.75}
#: Layer kinds counted against the share; the others are listed and left out of the denominator.
COUNTED = ("linear", "conv")
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

    @property
    def bits(self) -> int | None:
        """Bits per element of an integer (or palettized) weight; None for a floating-point one."""
        return BITS.get(self.dtype)

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
    """The `quantized_weights` fact of an artifact at precision `asked` ('int8', 'int4'), from its weight
    layers: the share of counted elements at `asked` or narrower, by kind and by stored type, the layers that
    stayed wider (name → type), and those left out of the share: embeddings, the layers `kept` float by
    keep_float, float layers with fewer than `small` elements where the quantizer skips such by its
    own size threshold (Core ML's weight_threshold), and, with `reverted`, every float layer: the quantizer's
    accuracy control put them back to float to hold the accuracy the target asked for (NNCF's
    `max_accuracy_drop`), a choice as deliberate as keep_float."""
    weights = list(weights)
    limit = ASKED_BITS.get(asked, 8)
    kept = [str(k) for k in kept]
    reverted_names = {w.name for w in weights if reverted and w.kind in COUNTED and (w.bits or 99) > limit}
    seen: set[str] = set()
    total = _Tally()
    by_kind: dict[str, _Tally] = {}
    by_dtype: dict[str, int] = {}
    wider: dict[str, str] = {}
    left_out: dict[str, list[str]] = {}
    for w in weights:
        if w.name in seen:
            continue
        seen.add(w.name)
        at_asked = w.bits is not None and w.bits <= limit
        by_kind.setdefault(w.kind, _Tally()).add(w, at_asked)
        by_dtype[w.dtype] = by_dtype.get(w.dtype, 0) + w.elements
        reason = ("accuracy_control" if w.name in reverted_names else "kept_float" if _kept(w, kept)
                  else w.kind if w.kind not in COUNTED else "below_threshold" if not at_asked and w.elements < small
                  else None)
        if reason:
            left_out.setdefault(reason, []).append(w.name)
            continue
        total.add(w, at_asked)
        if not at_asked:
            wider[w.name] = w.dtype
    out: dict[str, Any] = {
        "asked": asked, "measured_on": measured_on, "quantized": total.quantized, "elements": total.counted,
        "share": round(total.quantized / total.counted, 4) if total.counted else None,
        "by_kind": {k: t.as_dict() for k, t in sorted(by_kind.items())},
        "by_dtype": dict(sorted(by_dtype.items())),
        "wider": dict(list(wider.items())[:SHOWN]),
    }
    if len(wider) > SHOWN:
        out["wider_more"] = len(wider) - SHOWN
    if left_out:
        out["left_out"] = {why: names[:SHOWN] for why, names in sorted(left_out.items())}
    return out


def floor_of(precision: str) -> float | None:
    """The default floor of the share for a target at `precision` (None: no floor, fp32 and fp16)."""
    return FLOORS.get(precision)


def shortfall(fact: dict[str, Any] | None, floor: float | None) -> str | None:
    """Why an artifact whose `quantized_weights` fact is `fact` misses `floor`, naming the layers that stayed
    wider; None when it meets it (or there is no floor, or nothing to count)."""
    if floor is None or not fact or fact.get("share") is None:
        return None
    share = float(fact["share"])
    if share >= floor:
        return None
    wider = fact.get("wider") or {}
    named = ", ".join(f"{name} ({dtype})" for name, dtype in wider.items())
    more = f" and {fact['wider_more']} more" if fact.get("wider_more") else ""
    return (f"only {share:.1%} of the weights are {fact.get('asked')} (floor {floor:.0%}, min_quantized_share; "
            f"measured on {fact.get('measured_on')}): {len(wider) + int(fact.get('wider_more') or 0)} layer(s) "
            f"stayed wider: {named}{more}. Their layer kind is one the quantizer skipped, or they are below its "
            "size threshold; keep them float on purpose with keep_float, or set acceptance.min_quantized_share")


def describe(fact: dict[str, Any] | None) -> str | None:
    """The fact in a few words, for `explain`, the summary and the model card: '97% of weights int8 (…)'."""
    if not fact or fact.get("share") is None:
        return None
    kinds = ", ".join(f"{kind} {t['share']:.0%}" for kind, t in fact.get("by_kind", {}).items()
                      if kind in COUNTED and "share" in t)
    left = fact.get("left_out") or {}
    out = "; ".join(f"{why.replace('_', ' ')} left out: {len(names)}" for why, names in left.items())
    return (f"{fact['share']:.0%} of the weights {fact.get('asked')} ({kinds}; measured on {fact.get('measured_on')})"
            + (f"; {out}" if out else ""))
