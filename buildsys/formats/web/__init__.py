"""The web family: ONNX models packaged for ONNX Runtime Web (wasm), checked in headless Chromium."""
