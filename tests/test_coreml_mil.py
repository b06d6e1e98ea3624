"""The MIL reference interpreter (buildsys/formats/coreml/mil*.py): each op against coremltools' own value
inference or PyTorch, whole converted packages against PyTorch (fp32, fp16, int8, palettes), and the
cases it must refuse or flag: a corrupted weight, an fp16 overflow, an op it has no implementation for.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest

ct = pytest.importorskip("coremltools")
torch = pytest.importorskip("torch")

from coremltools.converters.mil import Builder as mb  # noqa: E402

from buildsys.errors import StepError  # noqa: E402
from buildsys.formats.coreml.mil import MilProgram, MissingReference, implementations  # noqa: E402
from buildsys.formats.runtime import CannotRun  # noqa: E402
from tests.conftest import REPO  # noqa: E402
from tests.helpers.mil_cases import TORCH_CASES, VALUE_CASES, Case  # noqa: E402

pytestmark = pytest.mark.coreml
F = torch.nn.functional


def one_op(case: Case) -> tuple[MilProgram, list[Any], dict[str, np.ndarray]]:
    """The case's MIL program (its ops read consts, so coremltools infers their values as it builds
    them, or the case's live inputs), its outputs, and the feeds it takes."""
    made: list[Any] = []

    def body(*live: Any) -> tuple[Any, ...]:
        out = case.build(*live)
        made.extend(out if isinstance(out, (list, tuple)) else [out])
        return tuple(made)

    specs = [mb.TensorSpec(shape=(1,))] + [mb.TensorSpec(shape=a.shape) for a in case.live]
    if case.live:  # mb.program reads the inputs off the signature: one live input at most
        program = mb.program(input_specs=specs, opset_version=case.opset)(lambda unused, x: body(x))
    else:
        program = mb.program(input_specs=specs, opset_version=case.opset)(lambda unused: body())
    mil = MilProgram(program)
    names = mil.input_names
    return mil, made, {names[0]: np.zeros(1, np.float32), **dict(zip(names[1:], case.live))}


# --- each op ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", VALUE_CASES, ids=lambda c: c.name)
def test_op_matches_coremltools_value_inference(case: Case) -> None:
    program, outputs, feeds = one_op(case)
    assert case.op in program.op_counts(), f"the case builds no {case.op} op"
    got = program.evaluate(feeds).outputs
    for var in outputs:
        producer = var.op
        want = producer.materialized_val_inference() if producer.op_type.startswith("constexpr_") else var.val
        assert want is not None, f"coremltools has no value inference for {producer.op_type}"
        observed = got[var.name]
        assert observed.shape == np.shape(want), var.name
        if np.asarray(want).dtype.kind in "fc":
            np.testing.assert_allclose(observed.astype(np.float64), np.asarray(want, np.float64),
                                       rtol=case.rtol, atol=case.atol, err_msg=var.name)
        else:
            np.testing.assert_array_equal(observed, np.asarray(want), err_msg=var.name)


@pytest.mark.parametrize("case", TORCH_CASES, ids=lambda c: c.name)
def test_op_matches_pytorch(case: Case) -> None:
    program, outputs, feeds = one_op(case)
    assert case.op in program.op_counts(), f"the case builds no {case.op} op"
    got = program.evaluate(feeds).outputs
    assert case.torch is not None
    with torch.no_grad():
        wants = case.torch()
    for var, want in zip(outputs, wants if isinstance(wants, (list, tuple)) else [wants]):
        np.testing.assert_allclose(got[var.name], np.asarray(want), rtol=case.rtol, atol=case.atol, err_msg=var.name)


def test_every_implemented_op_is_checked_by_a_case() -> None:
    """The coverage page says what each op is checked against: hold it to that."""
    from buildsys.formats.coreml.mil_coverage import coverage

    checked = {c.op for c in VALUE_CASES} | {c.op for c in TORCH_CASES} | {c.op for c in PACKAGE_CHECKED}
    table = coverage()
    implemented = {n for n, row in table.items() if row["status"] == "implemented" and n != "const"}
    assert implemented - checked == set()
    assert {c.op for c in VALUE_CASES} <= {n for n, row in table.items() if row["against"].startswith("coremltools")}


# Ops checked through whole converted packages below (nn.GRU → while_loop; compressed weights made by
# coremltools.optimize, each decoded op compared with coremltools' own decoder there).
PACKAGE_CHECKED = [Case(op, lambda: None) for op in ("while_loop", "constexpr_affine_dequantize",
                                                     "constexpr_lut_to_dense", "constexpr_blockwise_shift_scale",
                                                     "constexpr_sparse_to_dense")]
