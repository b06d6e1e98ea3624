"""Acceptance resolved per output: a target's tolerances over the precision's defaults (the rules themselves, and
the comparison of one output, are `buildsys.comparison`, a leaf), and the check's options.

The planner imports this module (to resolve a target's acceptance into its check's options), so it imports no
numpy.
"""

from __future__ import annotations

from typing import Any, Literal, Optional

from pydantic import Field

from buildsys.comparison import DEFAULTS, ELEMENTWISE, FIELDS, SCORE_ONLY, TOKENS_ONLY, VALUES_ONLY
from buildsys.config.schema import Acceptance, OutputSpec
from buildsys.errors import ConfigError, did_you_mean
from buildsys.formats.base import StepOptions
from buildsys.formats.quantized_weights import floor_of


class ResolvedTolerance(StepOptions):
    """One output's limits after defaults and overrides: None means the metric is not checked."""

    max_abs: Optional[float] = Field(default=None, description="Largest allowed |artifact - reference|.")
    max_rel: Optional[float] = Field(default=None, description="Largest allowed |artifact - reference| / max|reference|.")
    max_range_error: Optional[float] = Field(default=None, description="Largest allowed RMS error of one sample "
                                             "over the output's range (max - min of the reference over the batch).")
    min_cosine: Optional[float] = Field(default=None, description="Smallest allowed per-sample cosine similarity "
                                        "(over the batch for an output with one value per sample).")
    min_top1_agreement: Optional[float] = Field(default=None, description="Smallest allowed share of matching argmax.")
    max_accuracy_drop: Optional[float] = Field(default=None, description="Largest allowed accuracy drop vs the reference.")
    min_token_agreement: Optional[float] = Field(default=None, description="Smallest allowed share of generated tokens "
                                                 "matching the reference before the first divergence.")


class CheckOptions(StepOptions):
    """The options of a check node: the target's acceptance resolved for every output."""

    outputs: dict[str, ResolvedTolerance] = Field(default_factory=dict, description="Limits per output name.")
    on_fail: Literal["error", "warn"] = Field(default="error", description="'warn' reports a miss without failing the build.")
    require_numeric: bool = Field(default=False, description="Fail when the runtime cannot run on this host.")
    max_size_mb: Optional[float] = Field(default=None, description="Largest allowed artifact size in MB.")
    serving: bool = Field(default=False, description="Also run the artifact in its format's serving runtime.")
    accept_stand_in: bool = Field(default=False, description="require_numeric counts a stand-in's numbers as numeric.")
    min_quantized_share: Optional[float] = Field(
        default=None, description="Smallest share of all its weights the artifact must hold in its precision "
        "(formats/quantized_weights.py); None: not checked.")
    default_limits: dict[str, list[str]] = Field(
        default_factory=dict, description="Per output, the limits that are the precision's defaults (not written by "
        "the user): the check raises them to the model's intrinsic error (nodes/intrinsic.py), never the others.")


def resolve_acceptance(acceptance: Acceptance, precision: str, outputs: list[OutputSpec]) -> dict[str, Any]:
    """Limits per output: the precision's defaults ← the target's fields ← the per-output overrides.

    Returns a JSON-ready dict that validates as CheckOptions. Score-only limits (top-1 agreement,
    accuracy) are dropped for 'values' outputs. An override for an unknown output is a ConfigError.
    """
    names = [o.name for o in outputs]
    for name in acceptance.outputs:
        if name not in names:
            raise ConfigError(f"acceptance.outputs names '{name}', which is not an output of the model",
                              hint=did_you_mean(name, names) or f"outputs: {', '.join(names)}")
    defaults = DEFAULTS.get(precision, DEFAULTS["fp32"])
    given = {k: getattr(acceptance, k) for k in FIELDS if getattr(acceptance, k) is not None}
    resolved: dict[str, Any] = {}
    defaults_kept: dict[str, list[str]] = {}
    for out in outputs:
        override = acceptance.outputs.get(out.name)
        own = {**given, **({k: getattr(override, k) for k in FIELDS if getattr(override, k) is not None}
                           if override is not None else {})}
        limits = {k: defaults.get(k) for k in FIELDS} | own
        if out.kind != "scores":
            limits.update({k: None for k in SCORE_ONLY})
        if out.kind == "tokens":  # ids: only agreement means anything
            limits = {k: (limits[k] if k in TOKENS_ONLY else None) for k in FIELDS}
        else:
            limits.update({k: None for k in TOKENS_ONLY})
        if out.kind == "scores" or (any(k in own for k in ELEMENTWISE) and not any(k in own for k in VALUES_ONLY)):
            # the target judges this output elementwise itself: the default range error stays out of its way
            limits.update({k: None for k in VALUES_ONLY})
        resolved[out.name] = limits
        defaults_kept[out.name] = sorted(k for k in FIELDS if k not in own and limits[k] is not None)
    share = acceptance.min_quantized_share if acceptance.min_quantized_share is not None else floor_of(precision)
    return CheckOptions(outputs=resolved, on_fail=acceptance.on_fail, require_numeric=acceptance.require_numeric,
                        max_size_mb=acceptance.max_size_mb, serving=acceptance.serving,
                        accept_stand_in=acceptance.accept_stand_in, default_limits=defaults_kept,
                        min_quantized_share=share if floor_of(precision) is not None else None).model_dump(mode="json")


def not_run_reasons(check: dict[str, Any]) -> list[str]:
    """What a check's metrics say this host could not run, one line each ([] when it ran everything
    it was asked to): the artifact's runtime, then each part reported as not run (the serving
    software, a docker build, the Dockerfile lint)."""
    from buildsys.status import CaveatKind, caveats_of

    reasons = [f"numeric check not run: {check['not_run']}"] if check.get("not_run") else []
    return reasons + [str(c) for c in caveats_of(check) if c.kind is CaveatKind.NOT_RUN]
