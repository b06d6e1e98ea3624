"""The reference node: the model's source run once on its evaluation inputs; every check compares to it."""

from __future__ import annotations

import time
from typing import Any

from buildsys.errors import ModelbuildError
from buildsys.formats import register, register_format
from buildsys.formats.base import Format, Step, StepContext, StepOptions

REFERENCE = register_format(Format(
    name="reference", filename="reference.npz", runtime=None,
    description="Inputs, source outputs and labels the checks compare artifacts against (not a deliverable).",
))


@register
class ReferenceStep(Step):
    """Run the model's source in its own runtime on the evaluation inputs and store inputs + outputs."""

    name = "reference"
    consumes = ()  # not an edge of the format graph: the planner wires it to the model's source
    produces = "reference"
    packages = ("torch",)
    version = 7  # 2: a quantization-aware-trained source gives its fake-quant outputs, observers frozen (buildsys.formats.torch.qat);
                 # 3: the model's intrinsic error at float64 and float16 (nodes/intrinsic.py); 4: an ill-conditioned
                 # output's float64 outputs (float64:<name>), the truth its fp32 checks fall back to; 5: the model's
                 # own int8 error (weights and activations rounded to 8 bits); 6: PyTorch eager's batch-1 latency
                 # (nodes/timing.quick_latency), what every target's is set beside; 7: at one thread too
    # How far the model itself moves at another precision: the default limits of its checks follow from it.
    committed_metrics = ("intrinsic",)
    extra = "torch"
    toolchain = "torch"
    Options = StepOptions
    description = "Reference outputs of the source model."

    @classmethod
    def describe_facts(cls, facts: dict[str, Any]) -> list[str]:
        from buildsys.nodes.intrinsic import describe

        return describe(facts)

    def _run(self, ctx: StepContext) -> dict[str, Any]:
        import numpy as np

        from buildsys.config.data import eval_batch
        from buildsys.formats import get_runtime
        from buildsys.formats import get_format

        from buildsys.formats.llm.contract import REFERENCE_RUNTIME

        source = ctx.extra.get("source_format") or ctx.model.source.format
        # A text-generation model's reference is generation in eager PyTorch (formats/llm/runtime.py).
        runtime_name = REFERENCE_RUNTIME if ctx.model.task == "text-generation" else get_format(source).runtime
        if runtime_name is None:
            raise self.fail(ctx, f"the source format '{source}' has no runtime to compute reference outputs")
        runtime = get_runtime(runtime_name)
        reason = runtime.unavailable()
        if reason:
            raise self.fail(ctx, f"cannot run the {source} source to make reference outputs: {reason}")
        if ctx.model.task == "text-generation":
            from buildsys.formats.llm.prompts import prompt_batch

            batch = prompt_batch(ctx.model, ctx.root)  # the prompts and held text, tokenized
        else:
            batch = eval_batch(ctx.model, ctx.root)
        try:
            session = runtime.load(ctx.input_path, ctx.model, ctx.root)  # type: ignore[arg-type]
            started = time.monotonic()
            outputs = session.run_all(batch)
            seconds = time.monotonic() - started  # what the intrinsic measurements are bounded by
        except ModelbuildError as exc:
            raise self.fail(ctx, exc.what) from exc
        except Exception as exc:
            from buildsys.errors import describe

            raise self.fail(ctx, f"the source model failed on {batch.origin}: {describe(exc)}") from exc
        for spec, out in zip(ctx.model.outputs, outputs):
            bad = int(np.size(out) - np.count_nonzero(np.isfinite(out)))
            if bad:  # no artifact can be judged against a NaN: say it is the source, not the artifact
                raise self.fail(ctx, f"the source model itself returns {bad} NaN/inf value(s) in output "
                                f"'{spec.name}' on {batch.origin}; fix the model or the data before judging artifacts")
        # names prefixed input:/output: or "labels": none can be one of np.savez's own parameters
        arrays: dict[str, Any] = {f"input:{k}": v for k, v in batch.inputs.items()}
        arrays.update({f"output:{o.name}": out for o, out in zip(ctx.model.outputs, outputs)})
        if batch.labels is not None:
            arrays["labels"] = batch.labels
        metrics: dict[str, Any] = {"samples": len(batch), "origin": batch.origin}
        if ctx.model.task != "text-generation":  # PyTorch eager at batch 1: what every target's latency is set beside
            from buildsys.nodes.bench import build_latency

            metrics["latency"] = build_latency(session, next(iter(batch.chunks(1))), runtime_name)
        intrinsic, truth = self._intrinsic(ctx, session, batch, outputs, seconds)
        if intrinsic:
            import json

            metrics["intrinsic"] = intrinsic
            arrays["intrinsic"] = np.array(json.dumps(intrinsic, sort_keys=True))  # what the checks read
        arrays.update({f"float64:{name}": out for name, out in truth.items()})  # an ill-conditioned output's truth
        np.savez(ctx.out_dir / REFERENCE.filename, **arrays)
        from buildsys.formats.torch.qat import info_of

        import torch

        module = getattr(session, "fn", None)
        if isinstance(module, torch.nn.Module):  # the ideal size of every artifact at its precision (report/console.py)
            metrics["parameters"] = sum(p.numel() for p in module.parameters() if p.is_floating_point())  # tied: once
        info = info_of(module)
        if info is not None:  # what every check of this model compares to: the QAT model as trained
            metrics["reference"] = f"fake-quant outputs of the {info.describe()} model, observers frozen"
        if batch.labels is not None:
            for spec, out in zip(ctx.model.outputs, outputs):
                if spec.kind == "scores" and out.ndim >= 2 and out.shape[:-1] == batch.labels.shape:
                    metrics[f"accuracy:{spec.name}"] = float(np.mean(out.argmax(axis=-1) == batch.labels))
        return metrics

    @staticmethod
    def _intrinsic(ctx: StepContext, session: Any, batch: Any, outputs: list[Any],
                   seconds: float) -> tuple[dict[str, Any], dict[str, Any]]:
        """The model's own error at float64, float16 and simulated int8 (nodes/intrinsic.py), where the source is a PyTorch module
        whose forward is the reference (not a text-generation model's generation, not a QAT model's fake-quant),
        and the float64 outputs of the outputs it finds ill-conditioned."""
        import torch

        from buildsys.nodes.intrinsic import measure
        from buildsys.formats.torch.qat import info_of

        module = getattr(session, "fn", None)
        if ctx.model.task == "text-generation" or not isinstance(module, torch.nn.Module) or info_of(module) is not None:
            return {}, {}
        return measure(module, ctx.model, batch, outputs, seconds, ctx.deadline)
