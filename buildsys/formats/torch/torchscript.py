"""The TorchScript format: trace (or script) the PyTorch module and save it with torch.jit.save."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from buildsys.formats import register, register_format
from buildsys.formats.base import Format, Step, StepContext, StepOptions
from buildsys.formats.reproducible import torchscript_without_debug_info

TORCHSCRIPT = register_format(Format(
    name="torchscript", filename="model.pt", runtime="torchscript",
    description="TorchScript module (torch.jit.save), for libtorch / PyTorch Mobile.",
))
TORCHSCRIPT_FILE = register_format(Format(
    name="torchscript-file", filename="", runtime="torchscript", source=True,
    description="A TorchScript file given as the model source.",
))


@register
class TorchScriptFromPyTorch(Step):
    """Trace (or script) the PyTorch module into TorchScript."""

    name = "torchscript-from-pytorch"
    version = 2  # 2: saved without debug info (build paths), byte-identical across checkouts
    consumes = ("pytorch",)
    produces = "torchscript"
    packages = ("torch",)
    extra = "torch"
    toolchain = "torch"
    description = "torch.jit.trace / torch.jit.script, then torch.jit.save."

    class Options(StepOptions):
        method: Literal["trace", "script"] = Field(
            default="trace", description="'trace' records the ops run on the example inputs (data-dependent "
            "control flow is frozen); 'script' compiles the Python code (needs TorchScript-compatible code).")
        check_trace: bool = Field(
            default=True, description="trace only: re-run the traced module on the example inputs and fail if "
            "it diverges from eager PyTorch (a sign of data-dependent control flow).")

    def _run(self, ctx: StepContext[Options]) -> dict[str, Any]:
        import warnings

        import torch

        from buildsys.errors import describe
        from buildsys.formats.torch.module import example_args, load_module, signature_module, trace_batch

        opts = ctx.options
        module = load_module(ctx.model, ctx.root, name=ctx.model_name, step=self.name)
        args = example_args(ctx.model, trace_batch(ctx.model, ctx.example()))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", torch.jit.TracerWarning)  # printed per op; the check below decides
            try:
                if opts.method == "script":
                    compiled = torch.jit.script(module)
                else:
                    traced = signature_module(module, ctx.model, args)  # dict outputs → tuple in signature order
                    compiled = torch.jit.trace(traced, args, check_trace=opts.check_trace, strict=False)
            except torch.jit._trace.TracingCheckError as exc:
                raise self.fail(ctx, "the traced module does not reproduce eager PyTorch on the example inputs "
                                     "(data-dependent control flow?); try method: script") from exc
            except Exception as exc:
                raise self.fail(ctx, f"torch.jit.{opts.method} failed: {describe(exc)}") from exc
        torch.jit.save(compiled, str(ctx.out_dir / TORCHSCRIPT.filename))
        torchscript_without_debug_info(ctx.out_dir / TORCHSCRIPT.filename)
        return {"method": opts.method, "bytes": (ctx.out_dir / TORCHSCRIPT.filename).stat().st_size}


def load_input(step: Step, ctx: StepContext) -> Any:
    """The step's TorchScript input, loaded on the CPU in eval mode; an unreadable file is the
    user's problem (a StepError naming it), not a crash."""
    import torch

    try:
        return torch.jit.load(str(ctx.input_path), map_location="cpu").eval()
    except Exception as exc:
        name = ctx.input_path.name if ctx.input_path else "the input"
        raise step.fail(ctx, f"'{name}' is not a loadable TorchScript file: {type(exc).__name__}") from exc

