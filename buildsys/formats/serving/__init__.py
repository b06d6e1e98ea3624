"""The serving family: Triton model repositories and TorchServe archives, their layout runtimes and real servers."""
