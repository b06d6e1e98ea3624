"""The tfjs format: a TensorFlow SavedModel converted to a TensorFlow.js graph model by `tensorflowjs`.

The SavedModel is onnx2tf's (the tflite family's `saved_model` format), so the graph model is in
its layout (channels last) and layout.json travels along. The step writes `model.json` with its
weight shards, modelbuild's `model.js` loader and `signature.json` (see artifact.py). tensorflowjs
is installed without its dependencies (its pins conflict with this toolchain): its converter
module imports tensorflow_decision_forests (to register TF-DF ops) and tensorflow_hub (to convert
TF Hub modules) at import time, neither of which converting a SavedModel uses, so where they are
not installed empty modules stand in for them for the duration of the import.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import sys
import types
from pathlib import Path
from typing import Any, Iterator

from pydantic import Field

from buildsys.formats import register, register_format
from buildsys.formats.base import TENSORFLOW_IMPORT_PROBES, Format, Step, StepContext, StepOptions
from buildsys.formats.tfjs import artifact
from buildsys.formats.tflite.layout import SIGNATURE, copy_layout

TFJS = register_format(Format(
    name="tfjs", filename=artifact.MODEL_FILE, runtime="tfjs-chromium",
    description="TensorFlow.js graph model (model.json + weight shards) converted from the SavedModel, with "
    "model.js (an ES-module loader: load(url), predict(model, inputs)) and signature.json; checked in "
    "headless Chromium on TensorFlow.js's wasm backend.",
))

#: Modules tensorflowjs's converter imports but a SavedModel conversion never calls: where they are not
#: installed, empty modules stand in while it loads. (Unlike the worker's unused imports (Step.unused_imports), which make a
#: package unimportable, these must import: tensorflowjs imports them unconditionally.)
_STAND_INS = ("tensorflow_decision_forests", "tensorflow_hub")


@register
class TfjsFromSavedModel(Step):
    """Convert a SavedModel to a TensorFlow.js graph model with tensorflowjs, plus loader and signature."""

    name = "tfjs-from-saved-model"
    consumes = ("saved_model",)
    produces = "tfjs"
    packages = ("tensorflowjs", "tensorflow")
    extra = "tfjs"
    toolchain = "tf"
    probed_imports = TENSORFLOW_IMPORT_PROBES
    version = 1
    shipped_files = artifact.LOADER_PARTS
    description = "tensorflowjs.converters.convert_tf_saved_model (op check on, debug ops stripped), then " \
                  "model.js and signature.json."

    class Options(StepOptions):
        shard_bytes: int = Field(
            default=4 * 1024 * 1024, ge=1024, description="Largest weight shard file in bytes (the converter's "
            "weight_shard_size_bytes): a browser fetches the shards in parallel and caches each.")

    def _run(self, ctx: StepContext[Options]) -> dict[str, Any]:
        src = Path(str(ctx.input_path))
        layout = copy_layout(src.parent, ctx.out_dir)
        if layout is None:
            raise self.fail(ctx, f"the SavedModel has no {src.parent.name}/layout.json: tfjs converts only "
                                 "SavedModels that modelbuild made (format saved_model)")
        if importlib.util.find_spec("tensorflowjs") is None:
            raise self.fail(ctx, "tensorflowjs is not installed: pip install -c constraints.txt --no-deps tensorflowjs "
                                 "(its declared dependencies conflict with this toolchain; the 'tfjs' extra installs "
                                 "what it uses)")
        try:
            with _stand_ins():
                from tensorflowjs.converters import tf_saved_model_conversion_v2 as convert
        except ImportError as exc:  # a module of its own that the 'tfjs' extra should have installed
            raise self.fail(ctx, f"tensorflowjs could not be imported: {exc} (pip install -c constraints.txt "
                                 "'modelbuild[tfjs]')") from exc

        try:
            with contextlib.redirect_stdout(sys.stderr):  # the converter prints a summary
                convert.convert_tf_saved_model(str(src), str(ctx.out_dir), signature_def=SIGNATURE,
                                               saved_model_tags="serve", skip_op_check=False, strip_debug_ops=True,
                                               weight_shard_size_bytes=ctx.options.shard_bytes)
        except ValueError as exc:  # "Unsupported Ops in the model ...": ops TensorFlow.js has no kernel for
            raise self.fail(ctx, f"tensorflowjs refused the SavedModel: {' '.join(str(exc).split())[:400]}") from exc
        model_json = ctx.out_dir / artifact.MODEL_FILE
        graph = json.loads(model_json.read_text(encoding="utf-8"))
        # The converter writes protobuf maps (a node's attrs) in hash order: sorted keys give the same
        # bytes from every worker and host.
        model_json.write_text(json.dumps(graph, sort_keys=True), encoding="utf-8")
        sig = signature(graph, layout)
        (ctx.out_dir / artifact.SIGNATURE_FILE).write_text(json.dumps(sig, indent=2) + "\n", encoding="utf-8")
        (ctx.out_dir / artifact.LOADER_FILE).write_bytes(artifact.loader())
        shards = sorted(p for p in ctx.out_dir.glob("group*-shard*of*.bin"))
        return {"bytes": sum(p.stat().st_size for p in ctx.out_dir.iterdir() if p.is_file()),
                "weight_bytes": sum(p.stat().st_size for p in shards), "shards": len(shards),
                "ops": sorted({n["op"] for n in graph["modelTopology"]["node"]})}


def signature(graph: dict[str, Any], layout: dict[str, Any]) -> dict[str, Any]:
    """signature.json: each input and output with its graph node, tfjs dtype, shape and perm.

    The names are the ONNX (deploy.yaml) names; the graph's signature is keyed by the SavedModel's
    keys, which layout.json maps them to."""
    tensors = graph["signature"]

    def describe(entry: dict[str, Any], role: str) -> dict[str, Any]:
        info = tensors[role][entry["key"]]
        dims = [int(d.get("size", -1)) for d in info.get("tensorShape", {}).get("dim", [])]
        shape = [d if d >= 0 else (entry["shape"][i] if role == "inputs" else None) for i, d in enumerate(dims)]
        return {"name": entry["name"], "node": info["name"].split(":")[0],
                "type": artifact.TENSOR_TYPES.get(info["dtype"], info["dtype"]), "shape": shape, "perm": entry["perm"]}

    return {"inputs": [describe(e, "inputs") for e in layout["inputs"]],
            "outputs": [describe(e, "outputs") for e in layout["outputs"]]}


@contextlib.contextmanager
def _stand_ins() -> Iterator[None]:
    """Empty modules for those of `_STAND_INS` that are not installed, while tensorflowjs loads."""
    added = [name for name in _STAND_INS if name not in sys.modules and importlib.util.find_spec(name) is None]
    for name in added:
        sys.modules[name] = types.ModuleType(name, "stand-in: not installed, unused by SavedModel conversion")
    try:
        yield
    finally:
        for name in added:  # other code in this worker must not mistake the stand-in for the package
            sys.modules.pop(name, None)
