"""The "lite-interpreter" runtime: .ptl files on PyTorch Mobile's lite interpreter (as on a phone)."""

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
class LiteInterpreter(Runtime):
    """torch.jit.mobile._load_for_lite_interpreter: the mobile bytecode interpreter, on the CPU."""

    name = "lite-interpreter"
    packages = ("torch",)

    def unavailable(self) -> str | None:
        return torch_unavailable()

    def load(self, path: Path, model: "Model", root: Path) -> Session:
        from torch.jit.mobile import _load_for_lite_interpreter

        try:
            module = _load_for_lite_interpreter(str(path), map_location="cpu")
        except Exception as exc:
            text = str(exc).strip()
            raise StepError(f"the lite interpreter could not load '{Path(path).name}': {type(exc).__name__}: "
                            f"{text.splitlines()[0] if text else ''}") from exc
        return TorchSession(module, model)
