"""TensorRT engines (fp32, fp16, explicit-quantization int8) built from ONNX for one NVIDIA GPU, their runtime and Triton layout."""
