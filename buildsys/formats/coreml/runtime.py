"""The "coreml" runtime: .mlpackage files on Core ML (macOS only), and their structural inspection.

Running a package needs Core ML itself, which exists only on Apple platforms: off macOS the runtime
says so and the check is reported as not run. `inspect_mlpackage` reads the package's protobuf
(coremltools, any OS) and returns the facts a check can still assert on Linux: signature, spec
version and deployment target, compute precision, and whether weights are really compressed.
"""

from __future__ import annotations

import importlib.util
import sys
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

from buildsys.errors import StepError
from buildsys.formats import register_runtime
from buildsys.formats.runtime import Runtime, Session, fixed_batch

if TYPE_CHECKING:
    import numpy as np

    from buildsys.config.schema import Model

# Ops that hold compressed weights and expand them when the model loads (iOS16+; iOS18 adds the
# blockwise / sparse family).
COMPRESSED_OPS = ("constexpr_affine_dequantize", "constexpr_lut_to_dense", "constexpr_sparse_to_dense",
                  "constexpr_cast", "constexpr_blockwise_shift_scale", "constexpr_lut_to_sparse",
                  "constexpr_sparse_blockwise_shift_scale")
SPEC_TARGETS = {4: "iOS13", 5: "iOS14", 6: "iOS15", 7: "iOS16", 8: "iOS17", 9: "iOS18", 10: "iOS26"}


def inspect_mlpackage(path: Path) -> dict[str, Any]:
    """Structural facts of an .mlpackage (or .mlmodel), without Core ML: works on Linux.

    Keys: spec_version, minimum_deployment_target (the iOS release of that spec version), model_type,
    inputs / outputs (name, kind tensor|image, dtype, shape, ranges), opsets, ops (count per MIL op
    type), weight_dtypes ({dtype: {tensors, elements}} over every constant tensor), compressed_weight_ops
    (count per constexpr op type), weights_compressed, compute_precision ('float16' when the
    program's float weights are fp16), metadata (author, license, version, short_description,
    user_defined), bytes (package size on disk).
    """
    import coremltools as ct
    from coremltools.proto import FeatureTypes_pb2, MIL_pb2

    path = Path(path)
    spec = ct.utils.load_spec(str(path))
    kind = spec.WhichOneof("Type")
    facts: dict[str, Any] = {
        "spec_version": spec.specificationVersion,
        "minimum_deployment_target": SPEC_TARGETS.get(spec.specificationVersion, f"spec {spec.specificationVersion}"),
        "model_type": kind,
        "inputs": [_feature(f, FeatureTypes_pb2) for f in spec.description.input],
        "outputs": [_feature(f, FeatureTypes_pb2) for f in spec.description.output],
        "metadata": {
            "author": spec.description.metadata.author,
            "license": spec.description.metadata.license,
            "version": spec.description.metadata.versionString,
            "short_description": spec.description.metadata.shortDescription,
            "user_defined": dict(sorted(spec.description.metadata.userDefined.items())),
        },
        "bytes": (sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.is_dir()
                  else path.stat().st_size),
    }
    ops: Counter[str] = Counter()
    weights: dict[str, dict[str, int]] = {}
    opsets = set()
    if kind == "mlProgram":
        for function in spec.mlProgram.functions.values():
            opsets.add(function.opset)
            for block in function.block_specializations.values():
                _walk(block, ops, weights, MIL_pb2)
    compressed = {op: ops[op] for op in COMPRESSED_OPS if ops.get(op)}
    floats = {d: weights.get(d, {}).get("elements", 0) for d in ("FLOAT16", "FLOAT32")}
    facts.update({
        "opsets": sorted(opsets),
        "ops": dict(sorted(ops.items())),
        "weight_dtypes": {d.lower(): v for d, v in sorted(weights.items())},
        "compressed_weight_ops": compressed,
        "weights_compressed": bool(compressed),
        # A float32 program holds no float16 constant at all; a float16 one may keep some weights in
        # float32 (coremltools leaves LSTM weights so), so any float16 constant means float16 compute.
        "compute_precision": "float16" if floats["FLOAT16"] > 0 else "float32",
    })
    return facts


def _walk(block: Any, ops: "Counter[str]", weights: dict[str, dict[str, int]], mil: Any) -> None:
    """Count op types and constant tensors (by element type) in a MIL block and its nested blocks."""
    for op in block.operations:
        ops[op.type] += 1
        # Constants live in const ops' attributes (and iOS16 constexpr ops' attributes); iOS18 binds
        # the constexpr ops' data (indices, palettes, scales) inline as input values.
        values = [*op.attributes.values(),
                  *(arg.value for argument in op.inputs.values() for arg in argument.arguments
                    if arg.WhichOneof("binding") == "value")]
        for value in values:
            if not value.type.HasField("tensorType") or not value.type.tensorType.dimensions:
                continue  # scalars (axes, flags, names) are parameters, not weights
            tensor = value.type.tensorType
            elements = 1
            for dim in tensor.dimensions:
                elements *= dim.constant.size if dim.HasField("constant") else 1
            entry = weights.setdefault(mil.DataType.Name(tensor.dataType), {"tensors": 0, "elements": 0})
            entry["tensors"] += 1
            entry["elements"] += elements
        for nested in op.blocks:
            _walk(nested, ops, weights, mil)


def _feature(feature: Any, ft: Any) -> dict[str, Any]:
    kind = feature.type.WhichOneof("Type")
    out: dict[str, Any] = {"name": feature.name}
    if kind == "multiArrayType":
        array = feature.type.multiArrayType
        out.update(kind="tensor", dtype=ft.ArrayFeatureType.ArrayDataType.Name(array.dataType).lower(),
                   shape=list(array.shape))
        if array.HasField("shapeRange"):
            out["ranges"] = [[r.lowerBound, r.upperBound] for r in array.shapeRange.sizeRanges]
    elif kind == "imageType":
        image = feature.type.imageType
        out.update(kind="image", color_space=ft.ImageFeatureType.ColorSpace.Name(image.colorSpace),
                   shape=[image.height, image.width])
    else:
        out["kind"] = kind
    return out


class PackageSession(Session):
    """What every session of a Core ML package reads from its facts (`inspect_mlpackage`): its inputs, which are
    images, the pixel normalization (scale, bias, channel order) the step asked Core ML to apply, how many samples
    a call takes, and the outputs in the signature's order."""

    def __init__(self, model: "Model", facts: dict[str, Any]):
        self.model = model
        self.inputs = {f["name"]: f for f in facts["inputs"]}
        self.images = {name for name, f in self.inputs.items() if f["kind"] == "image"}
        user = facts["metadata"]["user_defined"]
        self.scale = float(user.get("com.modelbuild.image_scale", "1.0"))
        self.bias = [float(b) for b in user.get("com.modelbuild.image_bias", "0.0").split(",")]
        self.bgr = user.get("com.modelbuild.image_color_layout") == "BGR"
        # A fixed-size input keeps its batch in the program's reshapes: run as Core ML would.
        self.max_batch = session_batch(self.inputs.values(), model, bool(self.images))
        self.output_names = [o.name for o in model.outputs]


class CoreMLSession(PackageSession):
    """MLModel.predict fed by input name; image inputs become PIL images of the un-normalized pixels."""

    def __init__(self, mlmodel: Any, model: "Model", facts: dict[str, Any]):
        super().__init__(model, facts)
        self.mlmodel = mlmodel

    def run(self, feeds: dict[str, "np.ndarray"]) -> list["np.ndarray"]:
        import numpy as np

        ready: dict[str, Any] = {}
        for name, array in feeds.items():
            if name in self.images:
                ready[name] = self._image(array)
            else:
                dtype = np.float16 if self.inputs[name].get("dtype") == "float16" else None
                ready[name] = array.astype(dtype) if dtype else array
        result = self.mlmodel.predict(ready)
        return [np.asarray(result[n], dtype=np.float32) for n in self.output_names]

    def _image(self, array: "np.ndarray") -> Any:
        """A one-sample NCHW float array → the 8-bit PIL image whose normalized pixels give it back."""
        import numpy as np
        from PIL import Image

        pixels = image_pixels(array[0], self.scale, self.bias).astype(np.uint8)
        if pixels.shape[0] == 1:
            return Image.fromarray(pixels[0], mode="L")
        if self.bgr:  # the model's tensor is BGR; Core ML swaps an RGB image's channels itself
            pixels = pixels[::-1]
        return Image.fromarray(np.ascontiguousarray(pixels.transpose(1, 2, 0)), mode="RGB")


def session_batch(inputs: Any, model: "Model", images: bool) -> int:
    """How many samples a package takes per call: one for image inputs and for a package converted at static shapes
    (`static_shapes`: a first axis of 1 with no range), else up to the smallest upper bound of its first axes' ranges."""
    tensors = [f for f in inputs if f["kind"] == "tensor"]
    if images or any(not f.get("ranges") and f.get("shape", [0])[:1] == [1] for f in tensors):
        return 1
    return min([fixed_batch(model), *(f["ranges"][0][1] for f in tensors if f.get("ranges"))])


def image_pixels(chw: "np.ndarray", scale: float, bias: list[float]) -> "np.ndarray":
    """The 8-bit pixel values (0-255, as float32, in the model's channel order) whose normalization
    (pixel · scale + bias, what the package's image input applies) gives back `chw`, rounded."""
    import numpy as np

    shift = np.array(bias * chw.shape[0] if len(bias) == 1 else bias, dtype=np.float32)
    return np.clip(np.round((chw - shift[:, None, None]) / scale), 0, 255).astype(np.float32)


class AppleCoreML(Runtime):
    """The base of the runtimes that run a package in Core ML itself: macOS only, with coremltools; elsewhere
    their MIL stand-in runs (`stand_in`)."""

    requires, extra = ("coremltools",), "coreml"
    only_on = ("darwin", "Core ML execution needs macOS")

    def out_of_reach(self) -> str | None:
        return None if sys.platform == "darwin" else self.unavailable()

    def mlmodel(self, path: Path, units: str) -> Any:
        """The package at `path` loaded by Core ML on `units` (a ct.ComputeUnit name); a StepError naming the
        package where it cannot be loaded, or where this host has no Core ML."""
        why = self.unavailable()
        if why:
            raise StepError(why)
        import coremltools as ct

        try:
            return ct.models.MLModel(str(path), compute_units=getattr(ct.ComputeUnit, units, ct.ComputeUnit.ALL))
        except Exception as exc:
            text = str(exc).strip()
            raise StepError(f"Core ML could not load '{Path(path).name}': {type(exc).__name__}: "
                            f"{text.splitlines()[0][:300] if text else ''}") from exc


@register_runtime
class CoreML(AppleCoreML):
    """Core ML through coremltools' MLModel (macOS only)."""

    name = "coreml"
    no_intermediates = ('Core ML\'s runtime does not expose intermediate tensors; the stand-in "coreml-mil" '
                        "(the MIL reference interpreter) shows them all")
    stand_in = "coreml-mil"  # off macOS, the MIL reference interpreter (mil_runtime.py), when opted in

    def load(self, path: Path, model: "Model", root: Path) -> Session:
        why = self.unavailable()
        if why:
            raise StepError(why)  # before reading the package: this host cannot run it whatever it holds
        facts = inspect_mlpackage(Path(path))
        units = facts["metadata"]["user_defined"].get("com.modelbuild.compute_units", "ALL")
        return CoreMLSession(self.mlmodel(path, units), model, facts)

    def inspect(self, path: Path, model: "Model", fmt: str) -> dict | None:
        """The structural half of the check, which holds on Linux too: an ML Program whose inputs and
        outputs are the signature's, computing in the precision its format promises, with weights
        really compressed for coreml-int8."""
        if importlib.util.find_spec("coremltools") is None:
            return None
        facts = inspect_mlpackage(Path(path))
        problems = []
        if facts.get("model_type") != "mlProgram":
            problems.append(f"expected an ML Program, found {facts.get('model_type')}")
        for side in ("inputs", "outputs"):
            want = [s.name for s in getattr(model, side)]
            got = [f["name"] for f in facts.get(side, [])]
            if sorted(want) != sorted(got):
                problems.append(f"{side} are {got}, the signature says {want}")
        half = facts.get("compute_precision") == "float16"
        if fmt == "coreml" and half:
            problems.append(f"format coreml promises float32 compute, but {facts['weight_dtypes']['float16']['tensors']} "
                            "weight tensor(s) are float16")
        if fmt in ("coreml-fp16", "coreml-int8") and not half and not facts.get("weights_compressed"):
            problems.append(f"format {fmt} promises float16 compute, but no weight of the program is float16 "
                            "and none is compressed")
        if fmt == "coreml-int8" and not facts.get("weights_compressed"):
            problems.append("format coreml-int8 promises compressed weights, but no weight is compressed")
        keep = ("spec_version", "minimum_deployment_target", "inputs", "outputs", "compute_precision",
                "weights_compressed", "compressed_weight_ops", "weight_dtypes", "bytes")
        return {"facts": {k: facts.get(k) for k in keep}, "problems": problems}
