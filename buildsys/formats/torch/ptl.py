"""The PyTorch Mobile format: the traced model saved for the lite interpreter (.ptl).

The lite interpreter is deprecated upstream in favour of ExecuTorch, but existing Android/iOS apps
still ship it. `optimize_for_mobile` (op fusion, prepacked XNNPACK weights) fails in CPU wheels built
without XNNPACK, so it is an opt-in option that fails with a clear message where unsupported.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field

from buildsys.formats import register, register_format
from buildsys.formats.base import Format, Step, StepContext, StepOptions
from buildsys.formats.reproducible import torchscript_without_debug_info
from buildsys.formats.torch.torchscript import TRACED, load_input

PTL = register_format(Format(
    name="ptl", filename="model.ptl", runtime="lite-interpreter",
    description="TorchScript saved for the PyTorch Mobile lite interpreter (_save_for_lite_interpreter).",
))


@register
class PtlFromTorchScript(Step):
    """Re-save the traced (or scripted) model in the lite interpreter's bytecode format."""

    name = "ptl-from-torchscript"
    version = 2  # 2: saved without debug info (build paths), byte-identical across checkouts
    consumes = TRACED
    produces = "ptl"
    packages = ("torch",)
    extra = "torch"
    toolchain = "torch"
    description = "torch.jit.load, then ScriptModule._save_for_lite_interpreter."

    class Options(StepOptions):
        optimize_for_mobile: bool = Field(
            default=False, description="Run torch.utils.mobile_optimizer.optimize_for_mobile first (fuses "
            "conv/bn/relu, prepacks weights for XNNPACK). Needs a torch build with XNNPACK; the CPU wheels "
            "on PyPI for Linux x86 lack it, and the step then fails saying so.")

    def _run(self, ctx: StepContext[Options]) -> dict[str, Any]:
        import torch

        opts = ctx.options
        module = load_input(self, ctx)
        if opts.optimize_for_mobile:
            from torch.utils.mobile_optimizer import optimize_for_mobile

            try:
                module = optimize_for_mobile(module)
            except Exception as exc:
                if "XNNPACK" in str(exc):
                    raise self.fail(ctx, f"optimize_for_mobile needs a torch build with XNNPACK, and torch "
                                         f"{torch.__version__} here has none; set optimize_for_mobile: false") from exc
                first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                raise self.fail(ctx, f"optimize_for_mobile failed: {first[:300]}") from exc
        path = ctx.out_dir / PTL.filename
        try:
            module._save_for_lite_interpreter(str(path))
        except Exception as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise self.fail(ctx, f"saving for the lite interpreter failed: {first[:300]}") from exc
        torchscript_without_debug_info(path)
        return {"bytes": path.stat().st_size, "optimized_for_mobile": opts.optimize_for_mobile}
