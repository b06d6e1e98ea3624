"""Tolerances that know the model (docs/deploy-yaml.md, "Intrinsic error"): how far the PyTorch model itself moves
when its arithmetic changes precision, and the default limits that follows from it.

The reference node (nodes/reference.py) measures, on the evaluation inputs, the model in float64 against its own
float32 outputs (what any fp32 export must be allowed: another runtime's float32 is another rounding of the same
function), the model in float16 against float32 (what an fp16 export is allowed) and the model with its weights
and activations rounded to 8 bits (`simulated_int8`: what an int8 export is allowed), per output, with the
check's own comparisons (`comparison.compare`). The check (nodes/check.py) then raises each limit that is a precision default
(never one the user wrote: `CheckOptions.default_limits`) to `MULTIPLE[precision]` × that intrinsic error, at most
to `CEILING[precision]`: a model whose own float16 loses more than the ceiling is not made to pass by its tolerance.
A limit is never lowered. An intrinsic error that is not finite (the model overflows float16 itself) raises nothing.

A model whose own float32 is further from its float64 than the fp32 ceiling (`ill_conditioned`: seeded
transformers whose softmaxes saturate, where one rounding flips an attention pattern) cannot be matched to its
float32 outputs by any float32 runtime. The reference then also keeps its float64 outputs, and an fp32 check
that misses its float32 reference on default limits is judged against them: the artifact passes where it is
within `AGAINST_TRUTH` x PyTorch float32's own distance from float64 (`truth_limits`), and says so.

Torch is imported only inside `measure` (the reference's worker); the rule is plain arithmetic the check applies.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Callable, Mapping

if TYPE_CHECKING:
    from buildsys.config.schema import Model
    from buildsys.config.data import Batch

#: The int8 measurement: the model with int8-rounded weights and activations (`simulated_int8`), not a dtype.
SIMULATED_INT8 = "simulated int8"
#: Target precision → the torch dtype the reference is re-run at to measure that precision's own error (int8: the
#: model with its weights and activations rounded to 8 bits, as a quantizer at best would).
MEASURED_AT = {"fp32": "float64", "fp16": "float16", "int8": SIMULATED_INT8}
#: How many times the model's own error a default limit allows. fp32: another runtime's float32 is another
#: rounding (and order, and algorithm: Winograd, im2col) of the same sums, bounded by the two roundings' sum;
#: 10x leaves room for kernels that lose a few bits more than PyTorch's. fp16: the artifact rounds weights and
#: activations as PyTorch's float16 does, its accumulations may be in float16 too (Core ML's GPU and Neural Engine).
#: int8: the simulation calibrates each activation on the very batch it measures (no range is clipped) and rounds
#: nothing a quantizer keeps in float; a real quantizer calibrated on other data lands up to about half again as far.
MULTIPLE = {"fp32": 10.0, "fp16": 4.0, "int8": 1.5}
#: The loosest a default may become, for the limits a precision raises at all: fp32 never looser than the fp16
#: defaults, fp16 never than about 5 % of range; int8 raises top-1 agreement only, never below one half (a
#: classifier whose seeded logits are near-tied — RepViT's margins are 0.7 % of their spread — flips its argmax at
#: any 8-bit rounding), and never its cosine, which tells a broken or degraded artifact.
CEILING: dict[str, dict[str, float]] = {
    "fp32": {"max_rel": 1e-2, "min_cosine": 0.999, "min_top1_agreement": 0.97},
    "fp16": {"max_rel": 5e-2, "min_cosine": 0.99, "min_top1_agreement": 0.9},
    "int8": {"min_top1_agreement": 0.5},
}
#: A limit raised only while the model's own value of another metric holds: int8's top-1 only where the model's own
#: int8 logits barely move (cosine ≥ 0.99), i.e. argmax flips among near-tied logits, not a model int8 degrades
#: (MobileNetV2's own simulated int8 is at cosine 0.52: its full-int8 artifact keeps the fixed limits).
ONLY_WHILE: dict[str, dict[str, tuple[str, float]]] = {"int8": {"min_top1_agreement": ("cosine", 0.99)}}
#: An ill-conditioned model's fp32 artifact may be this many times as far from the float64 outputs as PyTorch's own
#: float32 is: another float32 rounding of the same function lands about as far, in another direction.
AGAINST_TRUTH = 2.0
#: ... as long as that still tells a right artifact from a wrong one: a model whose float32 is so far from its
#: float64 that the limit would fall below this cosine has outputs float32 does not determine; it is not verifiable.
TRUTH_FLOOR = 0.5
#: Limit → the observed metric of `comparison.compare` it bounds, and whether larger observed values are worse.
LIMITS = {"max_rel": ("max_rel", True), "min_cosine": ("cosine", False), "min_top1_agreement": ("top1_agreement", False)}


#: How much slower than the float32 reference a measurement may be projected to run (and at least how many seconds
#: it may take) before it is left out: float16 has no fast CPU kernel for some ops (a 3-D convolution runs about 150x
#: slower than at float32), and a measurement that only raises default limits must not stop the reference node.
SLOWER_AT_MOST, SECONDS_AT_LEAST = 20.0, 30.0


def measure(module: Any, model: "Model", batch: "Batch", outputs32: list[Any], seconds32: float | None = None,
            deadline: float | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
    """{precision: {"against": dtype, "outputs": {name: {metric: value}}}} or {precision: {"not_measured": why}}:
    `module` re-run on `batch` at each precision's dtype, compared with its float32 outputs `outputs32`; and
    {output: float64 outputs} for the outputs that are `ill_conditioned` (the truth their fp32 checks fall back to).
    Where the float32 run took `seconds32`, each dtype first runs one sample, and one projected past `SLOWER_AT_MOST`
    times that (and `SECONDS_AT_LEAST`), or past half the time left before the step's `deadline`
    (time.monotonic()), is left unmeasured, its defaults unraised."""
    import copy
    import time

    import numpy as np
    import torch

    from buildsys.comparison import compare
    from buildsys.formats.torch.runtimes import TorchSession
    from buildsys.nodes.timing import OverBudget, bounded

    out: dict[str, Any] = {}
    truth: dict[str, Any] = {}
    for precision, dtype in MEASURED_AT.items():
        try:
            if dtype == SIMULATED_INT8:
                cast, feeds = simulated_int8(copy.deepcopy(module)), dict(batch.inputs)
            else:
                cast = copy.deepcopy(module).to(getattr(torch, dtype))
                feeds = {k: v.astype(dtype) if np.issubdtype(v.dtype, np.floating) else v
                         for k, v in batch.inputs.items()}
            session = TorchSession(cast, model)
            if seconds32 is not None and len(batch) > 1:
                bound = max(SECONDS_AT_LEAST, SLOWER_AT_MOST * seconds32)
                if deadline is not None:  # what is left of the reference node's budget, shared with what follows
                    bound = min(bound, max(deadline - time.monotonic(), 0.0) / 2)
                started, stopped = time.monotonic(), False
                try:
                    with bounded(bound / len(batch)):  # one sample, its share of the bound
                        session.run_all(type(batch)({k: v[:1] for k, v in feeds.items()}, None, batch.origin))
                except OverBudget:
                    stopped = True
                projected = (time.monotonic() - started) * len(batch)
                if stopped or projected > bound:
                    out[precision] = {"not_measured": f"{dtype} runs {'over' if stopped else 'about'} "
                                      f"{projected / max(seconds32, 1e-3):.0f}x slower than float32 on this CPU "
                                      f"({'stopped' if stopped else 'projected'} {projected:.0f} s for {len(batch)} "
                                      f"samples, {bound:.0f} s allowed: an op without a fast kernel at that dtype, "
                                      "or too little of the reference's time budget left)"}
                    continue
            observed = session.run_all(type(batch)(feeds, None, batch.origin))
        except Exception as exc:  # an op without a kernel at that dtype on this CPU: said, never guessed
            out[precision] = {"not_measured": f"{type(exc).__name__}: {str(exc).strip().splitlines()[0][:200]}"
                              if str(exc).strip() else type(exc).__name__}
            continue
        metrics: dict[str, Any] = {}
        for spec, ref, obs in zip(model.outputs, outputs32, observed):
            if spec.kind == "tokens" or not np.issubdtype(np.asarray(ref).dtype, np.floating):
                continue
            result = compare(spec.name, spec.kind, ref, np.asarray(obs, dtype=np.float64), None)
            values = {m.name: _two_digits(m.observed) for m in result.metrics
                      if m.observed is not None and m.name in {v[0] for v in LIMITS.values()}}
            metrics[spec.name] = values if not result.problem else {"not_finite": result.problem}
            if precision == "fp32" and not result.problem and ill_conditioned(values):
                truth[spec.name] = np.asarray(obs, dtype=np.float64)
        out[precision] = {"against": dtype, "outputs": metrics}
    return out, truth


def simulated_int8(module: Any) -> Any:
    """`module` (a copy: changed in place) as int8 at best computes it: every weight matrix or kernel rounded to
    int8 per output channel (symmetric, max-abs scale), every floating output of a leaf module rounded to 256 levels
    over its own range on the batch it computes (asymmetric, per tensor). What no quantizer can do better than, on
    any format: the floor of the model's own int8 error, which the int8 defaults then allow for."""
    import torch

    with torch.no_grad():
        for sub in module.modules():
            weight = getattr(sub, "weight", None)
            if isinstance(weight, torch.nn.Parameter) and weight.dim() >= 2 and weight.is_floating_point():
                rows = weight.reshape(weight.shape[0], -1)
                scale = rows.abs().amax(dim=1, keepdim=True).clamp(min=torch.finfo(weight.dtype).tiny) / 127
                weight.copy_((torch.round(rows / scale) * scale).reshape(weight.shape))

    def rounded(value: Any) -> Any:
        if isinstance(value, torch.Tensor) and value.is_floating_point() and value.numel():
            low, high = value.min().clamp(max=0), value.max().clamp(min=0)
            step = ((high - low) / 255).clamp(min=torch.finfo(value.dtype).tiny)
            zero = torch.round(-low / step)
            return (torch.clamp(torch.round(value / step) + zero, 0, 255) - zero) * step
        if isinstance(value, tuple):
            return tuple(rounded(v) for v in value)
        return value

    for sub in module.modules():
        if not any(True for _ in sub.children()):
            sub.register_forward_hook(lambda _m, _i, out: rounded(out))
    return module


def ill_conditioned(values: Mapping[str, Any]) -> bool:
    """Whether an output's own float64-vs-float32 error (`values`: metric → observed) is past the fp32 ceiling."""
    for limit, (metric, larger_is_worse) in LIMITS.items():
        value, bound = values.get(metric), CEILING["fp32"].get(limit)
        if isinstance(value, (int, float)) and bound is not None and math.isfinite(value) \
                and ((value > bound) if larger_is_worse else (value < bound)):
            return True
    return False


def truth_limits(limits: Mapping[str, Any], defaults: list[str], values: Mapping[str, Any]) -> dict[str, Any] | None:
    """An ill-conditioned output's limits against its float64 outputs: each default limit at `AGAINST_TRUTH` x
    PyTorch float32's own distance from them (`values`), never tighter than the default itself; None where the
    cosine limit would fall below `TRUTH_FLOOR` (float32 does not determine the output: nothing to verify)."""
    if 1 - AGAINST_TRUTH * (1 - float(values.get("cosine", 1.0))) < TRUTH_FLOOR:
        return None
    out: dict[str, Any] = dict(limits)
    for limit, (metric, larger_is_worse) in LIMITS.items():
        value, default = values.get(metric), limits.get(limit)
        if limit not in defaults or default is None or not isinstance(value, (int, float)) or not math.isfinite(value):
            continue
        if larger_is_worse:
            out[limit] = max(default, _two_digits(AGAINST_TRUTH * value))
        else:
            out[limit] = min(default, round(1 - AGAINST_TRUTH * (1 - value), 6))
    return out


def _two_digits(value: float) -> float:
    """Two significant digits: what two builds of the same model agree on (their sums may be ordered differently)."""
    return float(f"{value:.2g}") if math.isfinite(value) else value


def raised(limits: Mapping[str, Any], defaults: list[str], intrinsic: Mapping[str, Any] | None,
           precision: str) -> tuple[dict[str, Any], dict[str, str]]:
    """One output's limits with each default among `defaults` raised to the model's intrinsic error, and a note
    per raised limit ("default 1e-04 raised to 10 x the model's own float64-vs-float32 error 1.6e-05"). Limits
    the user wrote, and precisions without a rule, are returned as they are."""
    multiple, ceiling = MULTIPLE.get(precision), CEILING.get(precision, {})
    own = (intrinsic or {}).get("values") or {}
    against = (intrinsic or {}).get("against", "")
    out: dict[str, Any] = dict(limits)
    notes: dict[str, str] = {}
    if multiple is None or not own:
        return out, notes
    for limit, (metric, larger_is_worse) in LIMITS.items():
        value, default = own.get(metric), limits.get(limit)
        if limit not in defaults or default is None or not isinstance(value, (int, float)) or not math.isfinite(value):
            continue
        if limit not in ceiling:
            continue  # a limit this precision never raises
        condition = ONLY_WHILE.get(precision, {}).get(limit)
        if condition is not None and not float(own.get(condition[0], -math.inf)) >= condition[1]:
            continue
        bound: Callable[[float, float], float] = min if larger_is_worse else max
        if larger_is_worse:
            wanted = bound(multiple * value, ceiling[limit])
        else:
            wanted = bound(1 - multiple * (1 - value), ceiling[limit])
        if (wanted > default) if larger_is_worse else (wanted < default):
            out[limit] = _two_digits(wanted) if larger_is_worse else round(wanted, 6)
            capped = wanted == ceiling.get(limit)
            notes[limit] = (f"default {default:g} raised to {out[limit]:g}: {multiple:g} x the model's own "
                            f"{against}-vs-float32 {metric} {value:g}" + (" (capped)" if capped else ""))
    return out, notes


def of_output(intrinsic: Mapping[str, Any] | None, precision: str, output: str) -> dict[str, Any] | None:
    """The reference's intrinsic measurement for one output at a target precision: {"against", "values"}, or None."""
    entry = (intrinsic or {}).get(precision) or {}
    values = (entry.get("outputs") or {}).get(output)
    return {"against": entry.get("against", ""), "values": values} if values else None


def describe(facts: Mapping[str, Any]) -> list[str]:
    """The reference's `intrinsic` and a check's `limits_raised` facts in words (explain, the report)."""
    lines = []
    for precision, entry in sorted((facts.get("intrinsic") or {}).items()):
        if entry.get("not_measured"):
            lines.append(f"the model's own {precision} error: not measured ({entry['not_measured']})")
            continue
        for output, values in sorted((entry.get("outputs") or {}).items()):
            shown = ", ".join(f"{k} {v:g}" if isinstance(v, (int, float)) else f"{k} {v}" for k, v in sorted(values.items()))
            lines.append(f"the model's own {precision} error ({entry.get('against')}-vs-float32: {output} {shown}); "
                         f"default limits of {precision} checks rise to {MULTIPLE[precision]:g} x it")
    for output, limits in sorted((facts.get("limits_raised") or {}).items()):
        lines += [f"{output}: {limit} limit raised to {value:g} by the model's own error (nodes/intrinsic.py)"
                  for limit, value in sorted(limits.items())]
    return lines
