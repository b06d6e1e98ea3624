"""The TensorFlow Lite family: SavedModel (onnx2tf), TFLite (fp32/fp16/int8), and the LiteRT and TensorFlow runtimes."""
