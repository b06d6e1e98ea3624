"""The TorchScript format: trace (or script) the PyTorch module and save it with torch.jit.save."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from buildsys.formats import register, register_format
from buildsys.formats.base import Format, Step, StepContext
from buildsys.formats.reproducible import fresh_torchscript_types, torchscript_without_debug_info
from buildsys.formats.torch.rewritten import FromPyTorch, RewritableOptions, rewrite_metrics, torchscript_ops

TORCHSCRIPT = register_format(Format(
    name="torchscript", filename="model.pt", runtime="torchscript", serving_runtime="libtorch",
    description="TorchScript module (torch.jit.save), for libtorch / PyTorch Mobile; with `acceptance.serving` the "
    "check also runs it in a C++ program linked against LibTorch.",
))
TORCHSCRIPT_FILE = register_format(TORCHSCRIPT.given("A TorchScript file"))
#: What a step that reads TorchScript consumes: the module traced here, or a TorchScript file given as the source.
TRACED = (TORCHSCRIPT.name, TORCHSCRIPT_FILE.name)


@register
class TorchScriptFromPyTorch(FromPyTorch):
    """Trace (or script) the PyTorch module into TorchScript, then prove it by numbers.

    The compiled module and eager PyTorch run on the tracing batch and on a second batch of other
    samples (of another size where the batch axis is dynamic, so a size frozen by tracing shows);
    the step fails only when an output differs beyond float rounding, naming the output and the
    error. torch.jit.trace's own check compares graph structure, which differs across invocations
    for models that compute identically (a boolean mask buffer in nn.MultiheadAttention): such a
    difference alone is recorded as a warning in the step's metrics.
    """

    name = "torchscript-from-pytorch"
    version = 7  # 2: without debug info (build paths); 3: judged by outputs on two batches; 4: type names as in a fresh
    # process; 5: linear layers in disguise (transformers' Conv1D) traced as nn.Linear (formats/torch/linear.py);
    # 6: custom autograd functions traced as their forward's ops (formats/torch/autograd.py); 7: a model that writes
    # into its inputs traced on copies of them, and compared on its own copies (loading.signature_module)
    produces = "torchscript"
    description = "torch.jit.trace / torch.jit.script, then torch.jit.save."
    committed_metrics = ("rewrites", "structured_pruning", "decomposition")  # a QAT module is not recognised here

    class Options(RewritableOptions):
        method: Literal["trace", "script"] = Field(
            default="trace", description="'trace' records the ops run on the example inputs (data-dependent "
            "control flow is frozen); 'script' compiles the Python code (needs TorchScript-compatible code).")
        check_trace: bool = Field(
            default=True, description="Run the compiled module next to eager PyTorch on the tracing batch and on a "
            "second batch of other samples (another batch size where the batch axis is dynamic) and fail when an "
            "output differs beyond float rounding (control flow or a shape that tracing froze). Traces are also "
            "compared structurally, as torch.jit.trace's check_trace does; a structural difference alone is only a "
            "warning in the step's metrics, since it does not change what the module computes.")

    def _run(self, ctx: StepContext[Options]) -> dict[str, Any]:
        import warnings

        import torch

        from buildsys.errors import describe
        from buildsys.formats.torch.autograd import autograd_functions_inlined
        from buildsys.formats.torch.loading import example_args, signature_module, trace_batch
        from buildsys.formats.torch.rewritten import load_rewritten
        from buildsys.lowering.export import lowered

        opts = ctx.options
        module = load_rewritten(self, ctx)
        example = ctx.example()
        batch = trace_batch(ctx.model, example)
        args = example_args(ctx.model, batch)
        fresh_torchscript_types()  # type names must not depend on what this worker compiled before
        decomposed, lowering = lowered(self, ctx, module, dynamic=True)  # scripted from the decomposed graph
        with warnings.catch_warnings(), autograd_functions_inlined():  # custom functions traced as their ops
            warnings.simplefilter("ignore", torch.jit.TracerWarning)  # printed per op; the comparison decides
            try:
                if lowering:
                    compiled = decomposed
                elif opts.method == "script":
                    compiled = torch.jit.script(module)
                else:
                    traced = signature_module(module, ctx.model, args)  # dict outputs → tuple in signature order
                    compiled = torch.jit.trace(traced, args, check_trace=False, strict=False)
            except Exception as exc:
                raise self.fail(ctx, f"torch.jit.{opts.method} failed: {describe(exc)}") from exc
            metrics: dict[str, Any] = {"method": "script (decomposed program)" if lowering else opts.method, **lowering}
            if opts.check_trace:
                second = second_batch(ctx.model, example, len(batch))
                metrics["compared"] = self._compare(ctx, module, compiled, [(batch, "the tracing batch"),
                                                                            (second, "a second batch")])
                if opts.method == "trace" and not lowering:
                    structure = _graph_difference(traced, args, example_args(ctx.model, second))
                    if structure:
                        metrics["warnings"] = [f"traced graphs differ across invocations, outputs do not: {structure}"]
        torch.jit.save(compiled, str(ctx.out_dir / TORCHSCRIPT.filename))
        torchscript_without_debug_info(ctx.out_dir / TORCHSCRIPT.filename)
        return {**metrics, "bytes": (ctx.out_dir / TORCHSCRIPT.filename).stat().st_size,
                **rewrite_metrics(ctx, torchscript_ops(compiled))}

    def _compare(self, ctx: StepContext[Options], module: Any, compiled: Any, batches: list[tuple[Any, str]]) -> dict[str, Any]:
        """Run `compiled` and eager `module` on each batch; a StepError naming the output and its error
        when they differ beyond float rounding (max_rel 1e-4, as fp32 checks allow). Returns, per
        batch, its size and the largest relative error seen."""
        import torch

        from buildsys.errors import describe
        from buildsys.formats.torch.loading import example_args, outputs_in_order

        scripted = ctx.options.method == "script" or ctx.options.decompose is not None  # a decomposition is scripted
        method = "scripted" if scripted else "traced"
        seen: dict[str, Any] = {}
        for batch, label in batches:
            args = example_args(ctx.model, batch)
            copy = lambda: [a.clone() for a in args]  # noqa: E731 - each call its own inputs: a model may write into them
            with torch.no_grad():
                eager = outputs_in_order(module(*copy()), ctx.model)
                try:
                    got = outputs_in_order(compiled(*copy()), ctx.model)
                except Exception as exc:
                    raise self.fail(ctx, f"the {method} module fails on {label} of {len(batch)} sample(s), where eager "
                                         f"PyTorch runs: {describe(exc)} (a shape frozen when tracing? try method: "
                                         "script, or a fixed batch size in the signature)") from exc
            worst = 0.0
            for spec, want, have in zip(ctx.model.outputs, eager, got, strict=True):
                want, have = want.detach().double(), have.detach().double()
                if want.shape != have.shape:
                    raise self.fail(ctx, f"the {method} module's output '{spec.name}' has shape {list(have.shape)} on "
                                         f"{label}, eager PyTorch's {list(want.shape)}")
                error = float((want - have).abs().max()) if want.numel() else 0.0
                scale = float(want.abs().max()) if want.numel() else 0.0
                rel = error / scale if scale > 0 else error
                if error > TRACE_MAX_REL * scale + TRACE_MAX_ABS:
                    raise self.fail(ctx, f"the {method} module differs from eager PyTorch on {label} of {len(batch)} "
                                         f"sample(s): output '{spec.name}' max abs error {error:.3g} (max |eager| "
                                         f"{scale:.3g}, allowed {TRACE_MAX_REL:g} of it); the trace froze a path the "
                                         "code takes differently on these inputs (data-dependent control flow?): "
                                         "try method: script")
                worst = max(worst, rel)
            seen[label.removeprefix("the ").removeprefix("a ")] = {"samples": len(batch), "max_rel": worst}
        return seen


#: How far the compiled module may differ from eager PyTorch (as fp32 checks allow: summation order).
TRACE_MAX_REL, TRACE_MAX_ABS = 1e-4, 1e-6


def second_batch(model: Any, example: Any, traced_with: int) -> Any:
    """Other samples than the tracing batch's: the next ones of the same data set (one more than were
    traced where the batch axis is dynamic, so a batch size frozen by tracing shows), else seeded
    synthetic inputs when the set holds no other sample."""
    import numpy as np

    from buildsys.config.data import Batch, synthetic

    fixed = next((i.shape[0] for i in model.inputs if isinstance(i.shape[0], int)), None)
    want = fixed if fixed is not None else traced_with + 1
    source = example if len(example) > traced_with else synthetic(model)
    start = traced_with if source is example else 0
    inputs = {}
    for name, values in source.inputs.items():
        rows = [(start + i) % len(values) for i in range(want)]
        inputs[name] = np.ascontiguousarray(values[rows])
    return Batch(inputs, None, f"{source.origin} (second batch)")


def _graph_difference(module: Any, args: tuple[Any, ...], other: tuple[Any, ...]) -> str:
    """torch.jit.trace's structural check of `module` on two batches: its complaint's first line, or ""."""
    import torch

    try:
        torch.jit.trace(module, args, check_trace=True, check_inputs=[args, other], strict=False)
    except torch.jit._trace.TracingCheckError as exc:
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        return next((line for line in lines if line.startswith("ERROR")), lines[0] if lines else "graphs differ")
    except Exception:  # noqa: BLE001 - the numeric comparison already decided; this is only a note
        return ""
    return ""


def load_input(step: Step, ctx: StepContext) -> Any:
    """The step's TorchScript input, loaded on the CPU in eval mode; an unreadable file is the
    user's problem (a StepError naming it), not a crash."""
    import torch

    try:
        return torch.jit.load(str(ctx.input_path), map_location="cpu").eval()
    except Exception as exc:
        name = ctx.input_path.name if ctx.input_path else "the input"
        raise step.fail(ctx, f"'{name}' is not a loadable TorchScript file: {type(exc).__name__}") from exc

