"""The OpenVINO family: IR (model.xml + model.bin) from ONNX, fp16-compressed and NNCF int8 variants, and the OpenVINO CPU runtime."""
