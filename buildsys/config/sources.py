"""`models.NAME.source` of deploy.yaml: where a model comes from (a factory and its weights, a transformers
directory, a TorchScript, torch.export or ONNX file) and the format it enters the format graph as."""

from __future__ import annotations

from typing import Any, Optional

from pydantic import BaseModel, ConfigDict, Field, model_validator

#: The ways a model's source can be given (exactly one per model).
SOURCE_KINDS = ("factory", "transformers", "torchscript", "exported", "onnx")


class Source(BaseModel):
    """Where the PyTorch model comes from: exactly one of factory, transformers, torchscript, exported, onnx."""

    model_config = ConfigDict(extra="forbid", frozen=True)  # as every config model (schema.Strict)

    factory: Optional[str] = Field(
        default=None, description="'module:callable' that returns a torch.nn.Module; the module is "
        "imported with the deploy.yaml directory on sys.path."
    )
    weights: Optional[str] = Field(
        default=None, description="state_dict file for the factory's module: a .safetensors file, or a torch.save "
        "file loaded with weights_only=True (a {'state_dict': ...} checkpoint wrapper is unwrapped)."
    )
    kwargs: dict[str, Any] = Field(default_factory=dict, description="Keyword arguments for the factory.")
    transformers: Optional[str] = Field(
        default=None, description="A local Hugging Face model directory (config.json and the weights, as "
        "`save_pretrained` writes it), loaded with `AutoModelForCausalLM.from_pretrained(dir, local_files_only=True)` "
        "in float32; every file in it enters the cache key. Text-generation models only; nothing is downloaded.")
    torchscript: Optional[str] = Field(default=None, description="A TorchScript file (torch.jit.save).")
    exported: Optional[str] = Field(default=None, description="A torch.export program file (.pt2).")
    onnx: Optional[str] = Field(default=None, description="An ONNX file used as the source.")
    code: list[str] = Field(
        default_factory=list,
        description="Extra files or globs whose contents enter the cache key (the factory's own module "
        "or package is always included).",
    )

    @model_validator(mode="after")
    def _exactly_one(self) -> "Source":
        given = [k for k in SOURCE_KINDS if getattr(self, k)]
        if len(given) != 1:
            raise ValueError(f"give exactly one of {', '.join(SOURCE_KINDS)}" + (f" (got {', '.join(given)})" if given else ""))
        if self.weights and not self.factory:
            raise ValueError("'weights' only applies to a 'factory' source")
        if self.factory and ":" not in self.factory:
            raise ValueError(f"factory '{self.factory}' must look like 'package.module:callable'")
        return self

    @property
    def format(self) -> str:
        """The format name of this source in the format graph."""
        if self.factory or self.transformers:
            return "pytorch"
        if self.torchscript:
            return "torchscript-file"
        if self.exported:
            return "pt2-file"
        return "onnx-file"
