"""Budgets with units in deploy.yaml ('12 MB', '30 ms', '20 min'): the before-validator the schema's budget fields use."""

from __future__ import annotations

from typing import Any

from pydantic import BeforeValidator


def budget(unit: str, scale: dict[str, float]) -> Any:
    """A before-validator for a budget in `unit`: numbers pass; '12 MB' style strings are converted
    when their unit is known, and anything else is an error that says which unit the field takes."""

    def parse(value: Any) -> Any:
        if not isinstance(value, str):
            return value
        import re

        m = re.fullmatch(r"\s*([0-9.]+(?:e-?[0-9]+)?)\s*([A-Za-zµ]+)\s*", value)
        if not m or m.group(2) not in scale:
            known = ", ".join(scale)
            raise ValueError(f"a budget in {unit}: write a number (of {unit}) or a value with one of the units "
                             f"{known}, not {value!r}")
        return float(m.group(1)) * scale[m.group(2)]

    return BeforeValidator(parse)


MB_UNITS = {"B": 1e-6, "KB": 1e-3, "kB": 1e-3, "MB": 1.0, "GB": 1e3, "KiB": 1024 / 1e6, "MiB": 1.048576, "GiB": 1073.741824}
MS_UNITS = {"us": 1e-3, "µs": 1e-3, "ms": 1.0, "s": 1e3}
S_UNITS = {"ms": 1e-3, "s": 1.0, "min": 60.0, "h": 3600.0}
