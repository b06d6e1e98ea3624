"""Why NNCF int8 (openvino-int8) delivered fewer public architectures than TFLite full int8 (docs/repair.md, "OpenVINO
int8 against TFLite int8"): the same seeded timm models, the same calibration and validation inputs, quantized by
NNCF with what modelbuild passed (performance preset, overflow_fix on every layer: 7-bit weights) and with each
setting changed alone, and by ONNX Runtime static QDQ in TFLite's full-int8 scheme (int8 weights per channel on
8 bits, asymmetric 8-bit activations, min/max ranges), each judged against its own float model by the check's
comparisons (range error of the logits treated as `values`, as in the matrix, and the per-sample cosine).

Needs the public-architecture site on PYTHONPATH after the worktree (timm): not part of the test suite.
    PYTHONPATH=$PWD:/work/matrix-site python benchmarks/int8_quantizers.py [model ...]
Writes benchmarks/results/int8_quantizers.json.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

MODELS = {"mobilenetv4_conv_small": {}, "resnet18": {}, "efficientnet_b0": {}, "vit_tiny_patch16_224": {"img_size": 128}}
SIZE, CALIBRATION, VALIDATION = 128, 32, 32


def _declare_torchvision_ops() -> None:
    import torch

    lib = torch.library.Library("torchvision", "DEF")
    lib.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    lib.define("qnms(Tensor qdets, Tensor scores, float iou_threshold) -> Tensor")
    globals()["_torchvision_lib"] = lib


def judged(reference: Any, observed: Any) -> dict[str, float]:
    from buildsys.comparison import compare

    result = compare("logits", "values", reference, observed, None)
    return {m.name: round(float(m.observed), 4) for m in result.metrics if m.name in ("range_error", "cosine", "max_rel")}


def measure(name: str, kwargs: dict[str, Any], work: Path) -> dict[str, Any]:
    import nncf
    import numpy as np
    import onnxruntime as ort
    import openvino as ov
    import timm
    import torch
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False, num_classes=100, **kwargs).eval()
    rng = np.random.default_rng(0)
    cal = rng.standard_normal((CALIBRATION, 3, SIZE, SIZE)).astype("float32")
    val = np.random.default_rng(1).standard_normal((VALIDATION, 3, SIZE, SIZE)).astype("float32")
    onnx_path = work / f"{name}.onnx"
    torch.onnx.export(model, (torch.from_numpy(val[:1]),), str(onnx_path), input_names=["x"], output_names=["logits"],
                      dynamo=False, opset_version=17)
    core = ov.Core()
    float_ir = core.read_model(str(onnx_path))

    def run_ir(m: Any) -> Any:
        compiled = core.compile_model(m, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
        return np.concatenate([compiled(val[i:i + 1])[0] for i in range(VALIDATION)])

    reference = run_ir(float_ir)
    dataset = nncf.Dataset([cal[i:i + 1] for i in range(CALIBRATION)])
    variants = {
        "nncf: as modelbuild passed (performance, overflow_fix all layers)": {},
        "nncf: overflow_fix first layer (NNCF's default)": {"overflow": nncf.OverflowFix.FIRST_LAYER},
        "nncf: mixed preset (asymmetric activations), overflow_fix first layer": {
            "overflow": nncf.OverflowFix.FIRST_LAYER, "preset": nncf.QuantizationPreset.MIXED},
        "nncf: mixed, first layer, full bias correction": {
            "overflow": nncf.OverflowFix.FIRST_LAYER, "preset": nncf.QuantizationPreset.MIXED, "fast_bias_correction": False},
    }
    out: dict[str, Any] = {}
    for label, v in variants.items():
        started = time.perf_counter()
        quantized = nncf.quantize(
            float_ir, dataset, subset_size=CALIBRATION, preset=v.get("preset", nncf.QuantizationPreset.PERFORMANCE),
            fast_bias_correction=v.get("fast_bias_correction", True),
            advanced_parameters=nncf.AdvancedQuantizationParameters(overflow_fix=v.get("overflow", nncf.OverflowFix.ENABLE)))
        out[label] = {**judged(reference, run_ir(quantized)), "seconds": round(time.perf_counter() - started, 1)}

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.items = iter([{"x": cal[i:i + 1]} for i in range(CALIBRATION)])

        def get_next(self) -> Any:
            return next(self.items, None)

    qdq = work / f"{name}.int8.onnx"
    quantize_static(str(onnx_path), str(qdq), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                    extra_options={"ActivationSymmetric": False, "WeightSymmetric": True})
    session = ort.InferenceSession(str(qdq), providers=["CPUExecutionProvider"])
    ort_out = np.concatenate([session.run(None, {"x": val[i:i + 1]})[0] for i in range(VALIDATION)])
    out["TFLite full-int8 scheme (ONNX Runtime QDQ: int8 per-channel weights, asymmetric int8 activations)"] = \
        judged(reference, ort_out)
    return out


def main(names: list[str]) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    _declare_torchvision_ops()
    results: dict[str, Any] = {}
    path = Path(__file__).parent / "results" / "int8_quantizers.json"
    if path.exists():
        results = json.loads(path.read_text())
    with tempfile.TemporaryDirectory() as tmp:
        for name in names or list(MODELS):
            results[name] = measure(name, MODELS.get(name, {}), Path(tmp))
            print(name, json.dumps(results[name], indent=1), flush=True)
            path.write_text(json.dumps(results, indent=1, sort_keys=True) + "\n")


if __name__ == "__main__":
    main(sys.argv[1:])
