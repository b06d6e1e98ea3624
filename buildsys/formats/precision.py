"""Numeric precisions and how a (family, precision) pair names a format.

Precision is a structured field of a format (`Format.precision`), never parsed out of a name. The
one place a name is made from the pair is `format_name`: the fp32 member of a family carries the
family's bare name (`onnx`), the others a suffix (`onnx-int8`), which is what deploy.yaml's `via:`
and `options:` keys and the lock use.
"""

from __future__ import annotations

from typing import Literal, get_args

Precision = Literal["fp32", "fp16", "int8", "int4"]
PRECISIONS: tuple[str, ...] = get_args(Precision)
#: Bytes a weight takes at each precision: a model's ideal size there is its parameter count times this.
BYTES_PER_WEIGHT: dict[str, float] = {"fp32": 4, "fp16": 2, "int8": 1, "int4": 0.5}


def format_name(family: str, precision: str) -> str:
    """The format that is `family` at `precision`: ('onnx', 'fp32') → 'onnx', ('onnx', 'int8') → 'onnx-int8'."""
    return family if precision == "fp32" else f"{family}-{precision}"
