"""modelbuild: a declarative build system for model deployment artifacts."""

__version__ = "0.1.0"
