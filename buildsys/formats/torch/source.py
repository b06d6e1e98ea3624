"""The PyTorch source format: a factory `module:callable` (+ optional state_dict), never built, only hashed."""

from __future__ import annotations

from buildsys.formats import register_format
from buildsys.formats.base import Format

PYTORCH = register_format(Format(
    name="pytorch", filename="", runtime="torch-eager", source=True,
    description="A PyTorch factory 'module:callable' (+ optional state_dict): the model source, never built.",
))
