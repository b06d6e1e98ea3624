"""Building a serialized TensorRT engine from an ONNX file with the TensorRT Python builder (GPU only).

The network is *strongly typed* wherever TensorRT offers it (TensorRT ≥ 9; weak typing and the
FP16/INT8 builder flags are deprecated since 10.12): every tensor keeps the type the ONNX graph
gives it, so the precision comes from the model itself: float32 ONNX → fp32 engine, the float16
ONNX model (onnx-fp16) → fp16 engine, a QDQ model → int8 engine (explicit quantization). On an older
TensorRT without strong typing the FP16/INT8 flags are set instead. tensorrt is imported inside
`build_engine` only.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


class EngineError(Exception):
    """TensorRT refused the network or failed to build it; the message says which and why."""


def build_engine(onnx_path: Path, profile: dict[str, Any], out: Path, *, precision: str,
                 workspace_mb: int | None, optimization_level: int) -> dict[str, Any]:
    """Parse `onnx_path`, add the optimization profile from profile.json's inputs, build and write `out`."""
    import tensorrt as trt

    logger = trt.Logger(trt.Logger.ERROR)
    builder = trt.Builder(logger)
    creation = trt.NetworkDefinitionCreationFlag
    strongly_typed = getattr(creation, "STRONGLY_TYPED", None)
    flags = 0
    if strongly_typed is not None:
        flags |= 1 << int(strongly_typed)
    if hasattr(creation, "EXPLICIT_BATCH") and int(trt.__version__.split(".")[0]) < 10:
        flags |= 1 << int(creation.EXPLICIT_BATCH)  # implicit batch is the pre-10 default
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):  # also reads external data next to the file
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        raise EngineError(f"TensorRT's ONNX parser rejected the model: {'; '.join(errors)[:800] or 'no detail'}")
    config = builder.create_builder_config()
    if workspace_mb:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_mb << 20)
    if hasattr(config, "builder_optimization_level"):
        config.builder_optimization_level = optimization_level
    flag = getattr(trt.BuilderFlag, precision.upper(), None) if precision != "fp32" else None
    if strongly_typed is None and flag is not None:  # weakly typed: precision is a permission to the builder
        config.set_flag(flag)
    dynamic = [e for e in profile["inputs"] if e["min"] != e["max"]]
    if dynamic:
        opt_profile = builder.create_optimization_profile()
        for entry in profile["inputs"]:
            opt_profile.set_shape(entry["name"], entry["min"], entry["opt"], entry["max"])
        config.add_optimization_profile(opt_profile)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise EngineError("TensorRT could not build an engine for this network (see the log above for the layer "
                          "it stopped at); try a lower optimization_level, a larger workspace_mb or a smaller "
                          "max_batch")
    data = memoryview(serialized)
    out.write_bytes(data)
    return {"tensorrt": trt.__version__, "strongly_typed": strongly_typed is not None, "layers": network.num_layers,
            "engine_bytes": len(data), "profiles": 1 if dynamic else 0}
