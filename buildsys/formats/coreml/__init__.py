"""The Core ML family: ML Programs from TorchScript (fp32/fp16/int8/palettized) and the Core ML runtime."""
