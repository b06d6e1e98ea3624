"""The "torchscript" runtime: a TorchScript file loaded with torch.jit.load."""

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
class TorchScriptRuntime(Runtime):
    """TorchScript (traced or scripted) on the CPU, as the C++/mobile runtime would run it."""

    name = "torchscript"
    packages = ("torch",)

    def unavailable(self) -> str | None:
        return torch_unavailable()

    def load(self, path: Path, model: "Model", root: Path) -> Session:
        import torch

        try:
            module = torch.jit.load(str(path), map_location="cpu")
        except Exception as exc:
            raise StepError(f"'{Path(path).name}' is not a loadable TorchScript file: {type(exc).__name__}: "
                            f"{str(exc).strip().splitlines()[0] if str(exc).strip() else ''}") from exc
        return TorchSession(module.eval(), model)
