"""The "torch-export" runtime: a .pt2 program loaded with torch.export.load and run as a module."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from buildsys.errors import StepError
from buildsys.runtimes import register
from buildsys.runtimes.base import Runtime, Session
from buildsys.runtimes.torch_eager import TorchSession, torch_unavailable

if TYPE_CHECKING:
    from buildsys.config.schema import Model


@register
class TorchExportRuntime(Runtime):
    """A torch.export ExportedProgram, run through `.module()` (its graph, not the Python code)."""

    name = "torch-export"
    packages = ("torch",)

    def unavailable(self) -> str | None:
        return torch_unavailable()

    def load(self, path: Path, model: "Model", root: Path) -> Session:
        import torch

        try:
            program = torch.export.load(str(path))
        except Exception as exc:
            raise StepError(f"'{Path(path).name}' is not a loadable torch.export program: {type(exc).__name__}: "
                            f"{str(exc).strip().splitlines()[0] if str(exc).strip() else ''}") from exc
        session = TorchSession(program.module(), model)
        if _fixed_batch_of_one(program):  # exported with dynamic: false
            session.max_batch = 1
        return session


def _fixed_batch_of_one(program: object) -> bool:
    """Whether a user input of the program has a first axis fixed to 1 (symbolic sizes are not ints)."""
    user_inputs = set(program.graph_signature.user_inputs)  # type: ignore[attr-defined]
    for node in program.graph.nodes:  # type: ignore[attr-defined]
        val = node.meta.get("val") if node.op == "placeholder" and node.name in user_inputs else None
        shape = getattr(val, "shape", None)
        if shape is not None and len(shape) and type(shape[0]) is int and shape[0] == 1:
            return True
    return False
