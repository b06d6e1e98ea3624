"""The ONNX family: export from PyTorch/TorchScript, ORT optimization, fp16, int8, and the ONNX Runtime runtime."""
