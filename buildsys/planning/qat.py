"""Quantization-aware-trained models at plan time (torch-free; docs/quantization.md, "QAT sources").

The planner knows a model is QAT only from the op analysis (`planning.coverage_probe` records `qat_flow`,
`Coverage.qat` reads it): an int8 step that keeps learned quantization of that flow (`Step.keeps_learned`)
then needs no calibration data (`plan_problem`), and a QAT model's routes that keep its learned scales come
first (`learned_first`). Until the graph is analysed, a missing `data.calibration` cannot be judged: the plan
says the model needs analysis (`Plan.needs_analysis`) instead of failing, and the plan entry point analyses
it when the caller allows (`build`, `plan --ops`) or reports the calibration error with a hint when not.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from buildsys.config.schema import DataSource
from buildsys.formats.torch.qat import EAGER_REFUSED

if TYPE_CHECKING:
    from pathlib import Path

    from buildsys.config.schema import Model
    from buildsys.planning.routes import Route

#: What a plain `plan` adds to a calibration problem it cannot settle without the op analysis.
UNKNOWN_HINT = ("(a quantization-aware-trained model needs none: `modelbuild plan --ops` or `build` recognise it "
                "from its graph)")


def plan_problem(step: Any, model: "Model", options: Any, root: "Path", problem: str,
                 flow: str | None) -> tuple[str | None, bool]:
    """A step's plan-time `problem` for `model`, reconsidered for QAT: (the problem that stands, or None;
    whether it stands only because the model has not been analysed). `flow`: what the op analysis found
    ('pt2e', 'eager', '' for a model without fake-quant modules; None when not analysed).

    Only a missing `data.calibration` is waived, and only where `step.keeps_learned` names the model's flow:
    the step then lowers the learned scales and never reads the data. The waiver is tested by asking the
    step again with a stand-in calibration source it does not read at plan time: a problem left then is
    another one, and stands."""

    if model.data.calibration is not None or "calibration" not in step.data_used(options):
        return problem, False
    stand_in = model.model_copy(update={"data": model.data.model_copy(
        update={"calibration": DataSource(path="learned-quantization-parameters.npz")})})
    if step.check_config(stand_in, options, root) is not None:
        return problem, False
    if flow is None:
        return f"{problem} {UNKNOWN_HINT}", True
    if flow and flow in step.keeps_learned:
        return None, False
    if flow:
        return f"{problem} ({EAGER_REFUSED})", False
    return problem, False


def learned_first(routes: list["Route"], flow: str) -> list["Route"]:
    """A QAT model's candidate routes, those whose int8 steps all keep learned quantization of its `flow`
    first (stable): the onnx2tf route to TFLite int8 can only re-calibrate, litert-torch's keeps the scales."""
    def refits(route: "Route") -> bool:
        return any(s.precision == "int8" and flow not in s.keeps_learned for s in route.steps())

    return sorted(routes, key=refits)
