"""Comparison and acceptance, a leaf every backend imports: the default tolerances per precision, and one output of
an artifact compared with its PyTorch reference (max abs / rel error, range error, cosine, top-1 agreement,
accuracy, token agreement, float32 subnormals flushed as runtimes flush them).

It imports nothing of modelbuild (numpy only inside the functions), so that the check (nodes/verify.py,
nodes/check.py), localisation (localise/compare.py), the keep-float and pruning searches and the benchmarks judge
outputs by one set of rules without importing each other.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Optional

if TYPE_CHECKING:
    import numpy as np

# Defaults by precision. None means "not checked". max_abs is never a default: its scale depends
# on the model (logits in the hundreds vs probabilities), which max_rel (relative to max|reference|)
# already covers.
DEFAULTS: dict[str, dict[str, Optional[float]]] = {
    # fp32: the same arithmetic in another runtime; only reordering of float sums differs
    # (~1e-7 relative per op, ~1e-6 over a deep net). 1e-4 leaves two orders of margin while still
    # catching a wrong op, a lost epsilon or a bad fused kernel. A cosine of 0.9999 and 99 %
    # argmax agreement follow from that; an accuracy drop above one sample in a hundred means
    # something is wrong, not rounding.
    # Greedy tokens (text-generation): the same logits up to 1e-6 pick the same argmax unless two
    # candidates tie within that; over 16 tokens of a trained model that is a coin never seen, so fp32
    # must agree on every token.
    "fp32": {"max_abs": None, "max_rel": 1e-4, "min_cosine": 0.9999, "min_top1_agreement": 0.99,
             "max_accuracy_drop": 0.01, "min_token_agreement": 1.0},
    # fp16: 11-bit mantissa (eps 9.8e-4). Rounding of weights and activations accumulates over
    # layers to a few 1e-3 of the output range, so max_rel 1e-2 is ~10 eps of headroom. Near-tied
    # logits may flip, hence 97 % agreement (one flip in 48 samples still passes) and at most one
    # point of accuracy lost (examples/digits: max_rel 6.9e-4, cosine 0.999999, no flip in 360).
    # Accuracy moves in steps of 1/N: with fewer than ~100 labelled samples, one lost sample
    # exceeds the 1 % defaults and a target should set max_accuracy_drop itself.
    "fp16": {"max_abs": None, "max_rel": 1e-2, "min_cosine": 0.999, "min_top1_agreement": 0.97,
             "max_accuracy_drop": 0.01, "min_token_agreement": 0.9},
    # int8: 256 levels per tensor (per channel at best) make elementwise errors of several percent
    # normal (max_rel 0.036 on examples/digits with static QDQ), so scores are judged by decisions:
    # argmax agreement 90 % and at most three points of accuracy lost on labelled data (the usual
    # post-training-quantization budget). The cosine is only a floor against a quantization that
    # went wrong (a bad scale or range): measured 0.9997 on examples/digits (static, per channel:
    # agreement 99.7 %, accuracy -0.28 points), 0.999 on another trained CNN (dynamic and static),
    # 0.94-0.998 on untrained test nets whose logits sit near zero, hence 0.9 rather than a tighter
    # value that would fail models users are happy with.
    # A 'values' output has no decision to agree on, and a cosine is blind to a shift of all-positive
    # values (a probability moving from 0.5 to 0.8 keeps a batch cosine near 0.97), so each sample's
    # RMS error must stay within a tenth of the output's range over the batch (max_range_error): a
    # probability that moves by 0.3 fails, int8 noise on an embedding (cosine 0.94: RMS error about a
    # third of the sample's RMS, a few percent of the range) passes. It applies where the target sets
    # no elementwise limit (max_abs, max_rel) for that output itself.
    # Greedy decoding amplifies a flip: after the first differing token the continuations part ways,
    # so agreement counts the tokens before the first divergence; 0.5 (half of them, on average) is
    # a floor against a broken quantization, not a quality bar (targets set their own).
    "int8": {"max_abs": None, "max_rel": None, "min_cosine": 0.9, "min_top1_agreement": 0.9,
             "max_accuracy_drop": 0.03, "max_range_error": 0.1, "min_token_agreement": 0.5},
    # int4 (grouped weight-only, so far LLM weights only): 16 levels per group of weights; the same
    # floors as int8 (a broken quantization fails them), the quality bar is the target's to set.
    "int4": {"max_abs": None, "max_rel": None, "min_cosine": 0.9, "min_top1_agreement": 0.9,
             "max_accuracy_drop": 0.03, "max_range_error": 0.1, "min_token_agreement": 0.5},
}
SCORE_ONLY = ("min_top1_agreement", "max_accuracy_drop")
#: Only for 'tokens' outputs (generated ids: no elementwise error, no cosine means anything).
TOKENS_ONLY = ("min_token_agreement",)
#: Only for 'values' outputs whose target sets no elementwise limit (max_abs, max_rel) of its own.
VALUES_ONLY = ("max_range_error",)
ELEMENTWISE = ("max_abs", "max_rel")
FIELDS = ("max_abs", "max_rel", "max_range_error", "min_cosine", "min_top1_agreement", "max_accuracy_drop",
          "min_token_agreement")


def _fmt(value: float, other: float | None = None, exponent: bool = False) -> str:
    """A short number, with enough digits that `value` and `other` do not print the same.

    Errors (max_abs, max_rel) print in exponent form ("3.1e-03"); ratios (cosine, agreement,
    accuracy) as plain decimals ("0.9987").
    """
    if value != value or value in (float("inf"), float("-inf")):
        return str(value)
    for digits in range(1, 12) if exponent else range(4, 12):
        text = f"{value:.{digits}e}" if exponent else f"{value:.{digits}g}"
        twin = None if other is None else (f"{other:.{digits}e}" if exponent else f"{other:.{digits}g}")
        if twin is None or value == other or text != twin:
            return text
    return repr(value)


@dataclass
class Metric:
    """One observed value next to its limit. `op` is the requirement: '<=' for max_*, '>=' for min_*."""

    name: str
    observed: float | None
    allowed: float | None
    op: str
    note: str = ""

    @property
    def exponent(self) -> bool:
        return self.name.startswith("max_")

    @property
    def ok(self) -> bool:
        if self.allowed is None:
            return True
        if self.observed is None:
            return False
        return self.observed <= self.allowed if self.op == "<=" else self.observed >= self.allowed

    def __str__(self) -> str:
        if self.observed is None:
            text = f"{self.name} could not be computed"
        elif self.allowed is None:
            text = f"{self.name} {_fmt(self.observed, exponent=self.exponent)} (not checked)"
        else:
            op = self.op if self.ok else {"<=": ">", ">=": "<"}[self.op]
            text = (f"{self.name} {_fmt(self.observed, self.allowed, self.exponent)} {op} "
                    f"{_fmt(self.allowed, self.observed, self.exponent)}")
        return f"{text} ({self.note})" if self.note else text

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"observed": self.observed, "allowed": self.allowed, "op": self.op, "ok": self.ok}
        if self.note:
            out["note"] = self.note
        return out


@dataclass
class OutputComparison:
    """The comparison of one output with its reference: truthy when every checked metric passed."""

    name: str
    kind: str
    metrics: list[Metric] = field(default_factory=list)
    problem: str = ""  # a failure that made the metrics meaningless (shape mismatch)
    extra: dict[str, Any] = field(default_factory=dict)  # informative values (reference accuracy)

    @property
    def passed(self) -> bool:
        return not self.problem and all(m.ok for m in self.metrics)

    def __bool__(self) -> bool:
        return self.passed

    def rows(self) -> list[str]:
        """One line per metric: observed, then the limit (or the op it violated)."""
        return [self.problem] if self.problem else [str(m) for m in self.metrics]

    def failures(self) -> list[str]:
        """Only the lines that failed."""
        return [self.problem] if self.problem else [str(m) for m in self.metrics if not m.ok]

    def __str__(self) -> str:
        status = "passed" if self.passed else "FAILED"
        return f"{self.name}: {status}\n" + "\n".join(f"  {row}" for row in self.rows())

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready: {metric: {observed, allowed, op, ok}} plus 'passed' (what report.py renders)."""
        out: dict[str, Any] = {m.name: m.as_dict() for m in self.metrics}
        if self.problem:
            out["problem"] = self.problem
        out.update(self.extra)
        out["passed"] = self.passed
        return out


def limit(tol: Any, name: str) -> float | None:
    if tol is None:
        return None
    return tol.get(name) if isinstance(tol, dict) else getattr(tol, name, None)


def compare(name: str, kind: str, reference: "np.ndarray", observed: "np.ndarray", tol: Any,
            labels: "np.ndarray | None" = None) -> OutputComparison:
    """Compare one output (samples on axis 0) with its reference under `tol` (a ResolvedTolerance,
    a Tolerance or a dict of the same fields; None fields are reported but not checked)."""
    import numpy as np

    result = OutputComparison(name, kind)
    ref = np.asarray(reference)
    obs = np.asarray(observed)
    if ref.shape != obs.shape:
        result.problem = f"shape {list(obs.shape)} != reference shape {list(ref.shape)}"
        return result
    if kind == "tokens":
        return _compare_tokens(result, ref, obs, tol)
    ref64 = ref.astype(np.float64)
    obs64 = obs.astype(np.float64)
    finite = bool(np.all(np.isfinite(obs64)))
    if not finite:
        bad = int(np.sum(~np.isfinite(obs64)))
        result.problem = f"{bad} non-finite value(s) (NaN/inf) in the output"
        if np.all(np.isfinite(ref64[~np.isfinite(obs64)])):  # a numeric miss (an overflow), as a metric out of
            result.extra["non_finite"] = bad  # tolerance is: what repair and the `precise` rewrites answer
        return result
    ref64, obs64 = _flushed(result, ref64, obs64)
    diff = np.abs(obs64 - ref64)
    max_abs = float(diff.max()) if diff.size else 0.0
    scale = float(np.abs(ref64).max()) if ref64.size else 0.0
    max_rel = max_abs / scale if scale > 0 else (0.0 if max_abs == 0 else float("inf"))
    result.metrics.append(Metric("max_abs", max_abs, limit(tol, "max_abs"), "<="))
    result.metrics.append(Metric("max_rel", max_rel, limit(tol, "max_rel"), "<="))
    if kind != "scores":
        result.metrics.append(Metric("range_error", range_error(ref64, obs64), limit(tol, "max_range_error"), "<=",
                                     note="worst sample's RMS error over the output's range"))
    one_value = ref64.ndim <= 1 or ref64[0].size == 1  # [B] or [B, 1]: per-sample cosine is always ±1
    result.metrics.append(Metric("cosine", min_cosine(ref64, obs64), limit(tol, "min_cosine"), ">=",
                                 note="over the batch: one value per sample" if one_value and ref64.size > 1 else ""))
    if kind == "scores" and ref.ndim >= 2:
        ref_top = ref64.argmax(axis=-1)
        obs_top = obs64.argmax(axis=-1)
        agreement = float(np.mean(ref_top == obs_top)) if ref_top.size else 1.0
        result.metrics.append(Metric("top1_agreement", agreement, limit(tol, "min_top1_agreement"), ">="))
        label_shape = None if labels is None else np.asarray(labels).shape
        if label_shape is not None and label_shape[:1] != ref_top.shape[:1]:
            # Labels for other samples never silently drop the accuracy metric (data.batch_problem
            # refuses such data sets; this guards a reference made elsewhere).
            result.problem = (f"labels have shape {list(label_shape)}, but the output has {ref_top.shape[0]} "
                              "samples: accuracy cannot be judged")
            return result
        if label_shape is not None and label_shape != ref_top.shape:
            result.extra["accuracy_not_judged"] = (f"labels {list(label_shape)} do not match this output's class "
                                                   f"decisions {list(ref_top.shape)}")
        elif labels is not None:
            labels = np.asarray(labels)
            ref_acc = float(np.mean(ref_top == labels))
            obs_acc = float(np.mean(obs_top == labels))
            drop = limit(tol, "max_accuracy_drop")
            allowed = None if drop is None else max(round(ref_acc - drop, 12), 0.0)  # 0.96-0.01 must equal 0.95
            note = f"reference {_fmt(ref_acc)}" + ("" if drop is None else f", allowed drop {_fmt(drop)}")
            result.metrics.append(Metric("accuracy", obs_acc, allowed, ">=", note=note))
            result.extra["reference_accuracy"] = ref_acc
    return result


def _compare_tokens(result: OutputComparison, ref: "np.ndarray", obs: "np.ndarray", tol: Any) -> OutputComparison:
    """Generated ids [prompts, tokens]: the share agreeing before each prompt's first divergence
    (averaged over prompts), and the earliest divergence, with the prompt it happened in."""
    import numpy as np

    ref2 = ref.reshape(len(ref), -1)
    differs = ref2 != obs.reshape(len(obs), -1)
    n = ref2.shape[1]
    first = [int(np.argmax(row)) if row.any() else None for row in differs]
    agreement = float(np.mean([(n if f is None else f) / n for f in first])) if n and len(first) else 1.0
    diverged = [(f, i) for i, f in enumerate(first) if f is not None]
    note = (f"first divergence at token {min(diverged)[0]} of prompt {min(diverged)[1]}; "
            f"{len(diverged)} of {len(first)} prompts diverge") if diverged else f"all {n} tokens of {len(first)} prompts agree"
    result.metrics.append(Metric("token_agreement", agreement, limit(tol, "min_token_agreement"), ">=", note=note))
    result.extra["first_divergence"] = min(diverged)[0] if diverged else None
    result.extra["diverged_prompts"] = len(diverged)
    return result


#: float32's smallest normal number: kernels that flush subnormals (FTZ/DAZ, common in optimised CPU and accelerator
#: kernels) turn smaller values into zero, and float16 cannot hold them at all.
FLOAT32_TINY = 1.1754943508222875e-38


def _flushed(result: OutputComparison, ref: "np.ndarray", obs: "np.ndarray") -> tuple["np.ndarray", "np.ndarray"]:
    """`ref` and `obs` with float32's subnormal values flushed to zero, as most runtimes compute them: a difference
    below float32's smallest normal number is not a conversion's error. Changes nothing measurable where the
    reference holds normal values; where every value of the reference is subnormal (a deep network whose seeded
    weights shrink its signal to nothing: HF MobileViT's outputs are about 1e-43), the comparison is of zeros,
    which cannot tell a faithful artifact from one that outputs zeros, so the result says so (`subnormal`: the
    check's caveat)."""
    import numpy as np

    scale = float(np.abs(ref).max()) if ref.size else 0.0
    if 0.0 < scale < FLOAT32_TINY:
        result.extra["subnormal"] = (f"every value of the reference is subnormal (max |x| {scale:.3g}, below float32's "
                                     f"smallest normal {FLOAT32_TINY:.3g}): compared with subnormals flushed to zero, as "
                                     "the runtimes compute them, which cannot tell a faithful artifact from one that "
                                     "outputs zeros (a model with seeded, untrained weights? check it with its trained "
                                     "weights)")
    return (np.where(np.abs(ref) < FLOAT32_TINY, 0.0, ref), np.where(np.abs(obs) < FLOAT32_TINY, 0.0, obs))


def range_error(ref: "np.ndarray", obs: "np.ndarray") -> float:
    """The largest per-sample RMS error, as a share of the reference's range over the whole batch
    (max - min; max |reference| where the reference is constant, 1 where it is all zero)."""
    import numpy as np

    if ref.size == 0:
        return 0.0
    span = float(ref.max() - ref.min()) or float(np.abs(ref).max()) or 1.0
    per_sample = (obs - ref).reshape(len(ref), -1) if ref.ndim > 1 else (obs - ref).reshape(-1, 1)
    return float(np.sqrt(np.mean(per_sample ** 2, axis=1)).max() / span)


def min_cosine(ref: "np.ndarray", obs: "np.ndarray") -> float:
    """The smallest per-sample cosine similarity (two all-zero samples count as identical). An output
    with one value per sample ([B, 1], a probability) is compared as one vector over the batch: the
    cosine of two single numbers is only their sign."""
    import numpy as np

    if ref.size == 0:
        return 1.0
    per_sample = ref.ndim > 1 and ref[0].size > 1
    a = ref.reshape(len(ref), -1) if per_sample else ref.reshape(1, -1)
    b = obs.reshape(len(obs), -1) if per_sample else obs.reshape(1, -1)
    na = np.linalg.norm(a, axis=1)
    nb = np.linalg.norm(b, axis=1)
    both_zero = (na == 0) & (nb == 0)
    denom = np.where(na * nb == 0, 1.0, na * nb)
    cos = np.where(both_zero, 1.0, np.sum(a * b, axis=1) / denom)
    return float(np.clip(cos, -1.0, 1.0).min())
