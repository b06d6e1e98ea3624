"""The ExecuTorch family: .pte programs lowered to the XNNPACK delegate (fp32, int8) and ExecuTorch's runtime."""
