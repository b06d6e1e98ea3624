"""The options of the Core ML steps (the deployment target, compute units, I/O types, weight compression,
pruning) and the specification version each deployment target implies. Torch- and coremltools-free: the
planner validates targets' options with them."""

from __future__ import annotations

import re
from typing import Annotated, Literal, Optional, Union

from pydantic import Field, model_validator

from buildsys.formats.base import SearchingOptions, StepOptions

# Core ML specification version of each deployment target (ML Programs start at version 6).
SPEC_VERSION = {f"{os}{v}": spec for os, first in (("iOS", 15), ("macOS", 12), ("tvOS", 15), ("watchOS", 8))
                for spec, v in zip(range(6, 10), range(first, first + 4))}
SPEC_VERSION.update({"iOS26": 10, "macOS26": 10, "tvOS26": 10, "watchOS26": 10})
Target = Literal["iOS15", "iOS16", "iOS17", "iOS18", "iOS26", "macOS12", "macOS13", "macOS14", "macOS15", "macOS26",
                 "tvOS15", "tvOS16", "tvOS17", "tvOS18", "tvOS26", "watchOS8", "watchOS9", "watchOS10",
                 "watchOS11", "watchOS26"]
Compression = Literal["none", "int8", "palettize8", "palettize4"]


def first_target(spec: int, like: str) -> str:
    """The earliest target of the same OS family as `like` with specification version `spec`."""
    family = re.match(r"[A-Za-z]+", like).group(0)  # type: ignore[union-attr]
    return min((t for t, v in SPEC_VERSION.items() if v == spec and t.startswith(family)),
               key=lambda t: int(t[len(family):]))


class Metadata(StepOptions):
    """What Xcode shows for the model, and free key/value pairs for the app."""

    author: str = Field(default="", description="Model author (MLModel.author).")
    license: str = Field(default="", description="License text or SPDX id (MLModel.license).")
    version: str = Field(default="", description="Model version string (MLModel.version).")
    short_description: str = Field(default="", description="One-line description (MLModel.short_description).")
    user_defined: dict[str, str] = Field(default_factory=dict, description="Extra string key/value metadata.")


class CoremlOptions(SearchingOptions):
    """Options of every Core ML step."""

    omitted_when_unset = ("static_shapes",)

    minimum_deployment_target: Target = Field(
        default="iOS16", description="Oldest OS the package must load on. ML Programs need iOS15/macOS12; "
        "compressed weights and float16 I/O need iOS16/macOS13. Newer targets unlock newer ops.")
    compute_units: Literal["ALL", "CPU_ONLY", "CPU_AND_GPU", "CPU_AND_NE"] = Field(
        default="ALL", description="Hardware Core ML may use when the package is loaded (stored in the "
        "package metadata and used by the check on macOS; apps pass their own MLModelConfiguration).")
    input_type: Literal["tensor", "image"] = Field(
        default="tensor", description="'image' makes every input a CVPixelBuffer-friendly image (4-D NCHW, "
        "1 or 3 channels); Core ML then applies image_scale and image_bias to the pixels.")
    image_scale: float = Field(default=1.0, description="image inputs: multiply pixel values (0-255) by this.")
    image_bias: list[float] = Field(
        default_factory=lambda: [0.0], description="image inputs: add after scaling, one value or one per channel.")
    color_layout: Literal["RGB", "BGR"] = Field(
        default="RGB", description="image inputs with 3 channels: channel order the model expects "
        "(1-channel inputs are grayscale).")
    io_dtype: Literal["float32", "float16"] = Field(
        default="float32", description="Element type of float inputs and outputs. float16 avoids conversions "
        "on the Neural Engine but needs iOS16/macOS13.")
    static_shapes: bool = Field(
        default=False, description="Convert with every named axis fixed (the batch axis to 1, the others to the example's "
        "size) instead of bounded ranges. coremltools' symbolic shapes fail in some graphs ('Cannot add const [is0, …]', "
        "a bare AssertionError on a shape, a rank over 5): the planner sets it for such a refusal (docs/lowering.md). "
        "The package then takes one sample per call.")
    dynamic_upper_bound: int = Field(
        default=64, ge=1, description="Largest size of each dynamic (named) axis: ML Programs need bounded "
        "ranges. Dynamic axes accept 1 … this value, with 1 as the default shape.")
    weight_compression: Compression = Field(
        default="none", description="'int8': linear symmetric int8 weights (constexpr_affine_dequantize, about "
        "4x smaller than fp32). 'palettize8' / 'palettize4': k-means palettes of 256 / 16 values per tensor "
        "(constexpr_lut_to_dense). Needs iOS16/macOS13.")
    weight_threshold: Optional[int] = Field(
        default=None, ge=0, description="Weights with fewer elements than this stay uncompressed (biases, "
        "tiny layers: compressing them saves little). Unset: coremltools' 2048, or 256 where the layers under 2048 "
        "elements hold over a tenth of the model's weights (a small model, which would otherwise ship mostly float "
        "under an int8 name); pruning (sparsity) keeps 2048.")
    sparsity: Optional[Union[Annotated[float, Field(gt=0, lt=1)], Literal["auto"]]] = Field(
        default=None, description="Post-training magnitude pruning: this share of each weight tensor "
        "(those with at least weight_threshold elements), the smallest in magnitude, is set to zero and the "
        "tensor stored sparse (coremltools.optimize.coreml.prune_weights, OpMagnitudePrunerConfig; "
        "constexpr_sparse_to_dense, iOS16+). With weight_compression: none only. Pruning changes the "
        "numbers far more than float16 does: set the target's acceptance for it (examples/digits at 0.5: "
        "30% smaller than fp16, top-1 agreement 98.3%, accuracy -1.4 points). 'auto': the highest of "
        "0.1 … 0.9 whose package meets the target's acceptance on the calibration set (bisection, at most "
        "four packages; docs/mobile.md); the ratio chosen and every ratio tried are recorded in deploy.lock.")
    metadata: Metadata = Field(default_factory=Metadata, description="Author, license, version, description.")
    keep_float: Union[Literal["sensitive"], tuple[str, ...]] = Field(
        default=(), description="float16 compute only (coreml-fp16, coreml-int8): MIL operations (by name) kept in "
        "float32, the rest in float16 (coremltools' FP16ComputePrecision op_selector). 'sensitive': measure each "
        "operation's float16 cost on the calibration set in the MIL reference interpreter and keep the fewest "
        "most sensitive ones in float32 that meet the target's tolerance (docs/repair.md); the search is bounded "
        "and its result recorded in deploy.lock. Usually set by accuracy repair, not by hand.")


class CoremlInt8Options(CoremlOptions):
    """Core ML with compressed weights: compression is the point, so 'none' is refused."""

    weight_compression: Compression = Field(
        default="int8", description="'int8': linear symmetric int8 weights (constexpr_affine_dequantize, about "
        "2x smaller than fp16). 'palettize8' / 'palettize4': k-means palettes of 256 / 16 values per tensor "
        "(constexpr_lut_to_dense, 4-bit is about 4x smaller than fp16). Needs iOS16/macOS13.")

    @model_validator(mode="after")
    def _compressed(self) -> "CoremlInt8Options":
        if self.weight_compression == "none":
            raise ValueError("coreml-int8 compresses weights: use int8, palettize8 or palettize4 "
                             "(or target coreml-fp16 for uncompressed weights)")
        return self
