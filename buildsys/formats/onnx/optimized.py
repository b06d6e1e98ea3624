"""The onnx-optimized format: an ONNX model rewritten by ONNX Runtime's offline graph optimizer.

The optimized file is meant for ONNX Runtime alone: its fusions are ONNX Runtime's own ops
(`SimplifiedLayerNormalization`, `com.microsoft.Gelu`, attention and skip-connection kernels), which
the ONNX standard and `onnx.checker` do not know, so ONNX Runtime judges it (onnxfile.finish). When
ONNX Runtime cannot optimize a model, or cannot load what its optimizer wrote, the un-optimized
model is optimized at the next lower level that works (extended, then basic), and only when none does is the
un-optimized model delivered; each with a caveat (`optimized at level 'basic', not 'extended'`, `not optimized`)
that every status output shows.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from buildsys.errors import StepError
from buildsys.formats import register, register_format
from buildsys.formats.base import Format, Step, StepContext, StepOptions
from buildsys.storage.keys import HostBinding
from buildsys.status import Caveat, CaveatKind

ONNX_OPTIMIZED = register_format(Format(
    name="onnx-optimized", filename="model.onnx", runtime="onnxruntime",
    description="ONNX model with ONNX Runtime's graph optimizations applied offline (faster session start).",
))
#: ONNX Runtime's offline optimization levels, highest first: a level whose output ONNX Runtime cannot load (a fusion
#: its own session then refuses, as issue 56 reports of two sequence models) is answered by the next one down.
LEVELS = ("all", "extended", "basic")
#: What a step that reads a float32 ONNX model consumes: the export, or its offline-optimized copy.
FLOAT_ONNX = ("onnx", ONNX_OPTIMIZED.name)


@register
class OnnxOptimizedFromOnnx(Step):
    """Apply ONNX Runtime's graph optimizations once and save the result (SessionOptions.optimized_model_filepath)."""

    name = "onnx-optimized-from-onnx"
    version = 2  # 2: judged by ONNX Runtime, not onnx.checker; un-optimized (with a caveat) when it cannot be
    # (a lower level that loads is tried first: only models that failed before take that path, so no new version)
    consumes = ("onnx",)
    produces = "onnx-optimized"
    packages = ("onnxruntime", "onnx")
    toolchain = "onnx"
    description = "ONNX Runtime offline graph optimization."
    #: Facts of the output that hold on every host: committed to deploy.lock and shown by `explain`.
    committed_metrics = ("optimized", "fused_ops")

    class Options(StepOptions):
        level: Literal["basic", "extended", "all"] = Field(
            default="extended", description="'basic': constant folding and redundant-node removal (portable "
            "ONNX). 'extended': plus fusions into ONNX Runtime contrib ops (com.microsoft domain: runs only "
            "in ONNX Runtime). 'all': plus hardware-specific layout optimizations (NCHWc) tied to this "
            "machine's CPU: the file should only be run where it was optimized. A level ONNX Runtime cannot "
            "optimize at, or whose output it cannot load, is answered by the next lower one (a caveat says so).")

    @classmethod
    def host_binding(cls, options: dict[str, Any], data_sets: tuple[str, ...]) -> HostBinding:
        # 'all' writes layout transforms (NCHWc blocks) for the vector width of the CPU it ran on;
        # ONNX Runtime warns that the result is hardware specific.
        return HostBinding.CPU_CLASS if options.get("level") == "all" else HostBinding.PORTABLE

    @classmethod
    def describe_facts(cls, facts: dict[str, Any]) -> list[str]:
        if facts.get("optimized") is False:
            return ["not optimized: the model as exported"]
        fused = facts.get("fused_ops") or {}
        listed = ", ".join(f"{op} ×{n}" for op, n in sorted(fused.items(), key=lambda kv: (-kv[1], kv[0])))
        return [f"optimized: {sum(fused.values())} fused op(s)" + (f": {listed}" if listed else "")]

    def _run(self, ctx: StepContext[Options]) -> dict[str, Any]:
        from buildsys.formats.onnx.onnxfile import finish

        out = ctx.out_dir / ONNX_OPTIMIZED.filename
        asked = ctx.options.level
        refusals: list[str] = []
        for level in LEVELS[LEVELS.index(asked):]:  # the asked level, then each lower one: the first that loads
            try:
                self._optimize(ctx, out, level)
                fused = _fused_ops(Path(ctx.input_path), out)  # type: ignore[arg-type]
                metrics = finish(self, ctx, out)
            except StepError as exc:
                refusals.append(f"{level}: " + exc.what.removeprefix(f"model '{ctx.model_name}': ")
                                .removesuffix(f" (step {self.name})"))
                continue
            caveats = [] if level == asked else [Caveat(
                CaveatKind.DEGRADED, f"optimized at level '{level}', not '{asked}'",
                "ONNX Runtime could not optimize at the higher level(s) or load what they wrote: " + "; ".join(refusals),
                self.name).as_dict()]
            return {**metrics, "level": level, "optimized": True, "fused_ops": fused,
                    **({"caveats": caveats} if caveats else {})}
        # deliver the model as exported, and say so wherever the target shows
        _copy_unoptimized(Path(ctx.input_path), ctx.out_dir)  # type: ignore[arg-type]
        metrics = finish(self, ctx, out)
        caveat = Caveat(CaveatKind.DEGRADED, "not optimized", "; ".join(refusals), self.name)
        return {**metrics, "level": asked, "optimized": False, "fused_ops": {}, "caveats": [caveat.as_dict()]}

    def _optimize(self, ctx: StepContext[Options], out: Path, level: str) -> None:
        """Run ONNX Runtime's optimizer at `level`, writing `out` (StepError when it cannot)."""
        import onnxruntime as ort

        from buildsys.formats.onnx.onnxfile import SIDE_FILE, uses_external_data

        levels = {"basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
                  "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
                  "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL}
        so = ort.SessionOptions()
        so.graph_optimization_level = levels[level]
        so.optimized_model_filepath = str(out)
        so.log_severity_level = 3  # 'all' warns that the result is hardware specific: the option says so
        if uses_external_data(ctx.input_path):  # type: ignore[arg-type]
            so.add_session_config_entry("session.optimized_model_external_initializers_file_name", SIDE_FILE)
            so.add_session_config_entry("session.optimized_model_external_initializers_min_size_in_bytes", "1024")
        try:
            ort.InferenceSession(str(ctx.input_path), so, providers=["CPUExecutionProvider"])
        except Exception as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise self.fail(ctx, f"ONNX Runtime could not optimize the model: {first}") from exc
        if not out.exists():
            raise self.fail(ctx, "ONNX Runtime's optimizer wrote no file")


def _fused_ops(before: Path, after: Path) -> dict[str, int]:
    """Op types the optimizer introduced (its fusions), with how many of each: the types in the
    optimized graph that the input graph did not have."""
    import onnx

    from buildsys.formats.onnx.onnxfile import op_counts

    old = op_counts(onnx.load(str(before), load_external_data=False))
    new = op_counts(onnx.load(str(after), load_external_data=False))
    return {op: n for op, n in sorted(new.items()) if op not in old}


def _copy_unoptimized(source: Path, out_dir: Path) -> None:
    """The input model (and its side file) as the step's output, replacing whatever was written."""
    from buildsys.formats.onnx.onnxfile import MODEL_FILE, SIDE_FILE

    for name in (MODEL_FILE, SIDE_FILE):
        (out_dir / name).unlink(missing_ok=True)
        if (source.parent / name).exists():
            shutil.copyfile(source.parent / name, out_dir / name)
