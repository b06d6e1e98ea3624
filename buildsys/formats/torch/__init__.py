"""The torch family: the PyTorch source, TorchScript, torch.export (.pt2), PyTorch Mobile (.ptl), and the torch runtimes."""
