"""What `modelbuild init` can learn about a model: its inputs from an example data file, a torch.export
program, an ONNX graph or the model's first layer, and its outputs from one forward run. torch (and onnx)
are imported only inside the functions that need them; every guess says how it was made."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, get_args

from buildsys.config.schema import DType
from buildsys.errors import ConfigError, describe

if TYPE_CHECKING:
    import numpy as np
    import torch

DTYPES = get_args(DType)
#: Where a checkpoint keeps the state_dict, besides being one (modelbuild's loader reads "state_dict" itself).
CHECKPOINT_KEYS = ("model_state_dict", "model", "net", "weights", "ema")


@dataclass
class Signature:
    """Inputs and outputs as deploy.yaml writes them, and how each was found."""

    inputs: list[dict[str, Any]] = field(default_factory=list)  # {"name", "shape", "dtype", "layout"?}
    outputs: list[dict[str, Any]] = field(default_factory=list)  # {"name", "kind"}
    notes: list[str] = field(default_factory=list)


def parse_input(text: str) -> dict[str, Any]:
    """'image:batch,3,224,224:float32:NCHW' (dtype and layout optional) → an input spec."""
    parts = text.split(":")
    if len(parts) < 2 or not parts[0] or not parts[1]:
        raise ConfigError(f"--input '{text}': write NAME:SHAPE[:DTYPE[:LAYOUT]], e.g. image:batch,3,224,224:float32:NCHW")
    shape: list[int | str] = [int(d) if d.strip().isdigit() else d.strip() for d in parts[1].replace("x", ",").split(",")]
    spec: dict[str, Any] = {"name": parts[0], "shape": shape, "dtype": parts[2] if len(parts) > 2 and parts[2] else "float32"}
    if spec["dtype"] not in DTYPES:
        raise ConfigError(f"--input '{text}': dtype '{spec['dtype']}' is not one of {', '.join(DTYPES)}")
    if len(parts) > 3 and parts[3]:
        if len(parts[3]) != len(shape):
            raise ConfigError(f"--input '{text}': layout '{parts[3]}' has {len(parts[3])} axes, the shape {len(shape)}")
        spec["layout"] = parts[3]
    return spec


def parse_output(text: str) -> dict[str, Any]:
    """'logits:scores' or 'embedding' (kind values) → an output spec."""
    name, _, kind = text.partition(":")
    if not name or kind not in ("", "scores", "values"):
        raise ConfigError(f"--output '{text}': write NAME[:scores|values]")
    return {"name": name, "kind": kind or "values"}


def from_example(path: Path, labels: str = "labels") -> tuple[list[dict[str, Any]], bool]:
    """Inputs named after the file's arrays (an .npy: one input 'input'), first axis dynamic; and whether it has labels."""
    import numpy as np

    try:
        loaded = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{path}: not a readable .npz/.npy file ({describe(exc)})") from None
    arrays = {"input": loaded} if isinstance(loaded, np.ndarray) else {k: loaded[k] for k in loaded.files}
    inputs = [{"name": name, "shape": ["batch", *a.shape[1:]], "dtype": _dtype(a.dtype)}
              for name, a in arrays.items() if name != labels]
    if not inputs:
        raise ConfigError(f"{path} holds no input array (only '{labels}')")
    return inputs, labels in arrays


def from_exported(path: Path) -> Signature:
    """A torch.export program knows its inputs and outputs: names, shapes (symbolic axes stay dynamic), dtypes."""
    import torch

    program = torch.export.load(str(path))
    placeholders = {n.name: n for n in program.graph.nodes if n.op == "placeholder"}
    sig = Signature(notes=[f"inputs and outputs read from the torch.export program {path.name}"])
    for spec in program.graph_signature.input_specs:
        if spec.kind.name == "USER_INPUT" and spec.arg.name in placeholders:
            val = placeholders[spec.arg.name].meta.get("val")
            sig.inputs.append({"name": spec.arg.name, "shape": _dims(val.shape, "batch"), "dtype": _dtype(val.dtype)})
    out = next(n for n in program.graph.nodes if n.op == "output")
    values = out.args[0] if isinstance(out.args[0], (tuple, list)) else [out.args[0]]
    sig.outputs = [{"name": "output" if len(values) == 1 else f"output_{i}", "kind": "values"} for i in range(len(values))]
    return sig


def from_onnx(path: Path) -> Signature:
    """An ONNX graph's inputs (initializers left out) and outputs, named as the graph names them."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    weights = {i.name for i in graph.initializer}
    names = {v: k.lower() for k, v in onnx.TensorProto.DataType.items()}

    def spec(value: Any) -> dict[str, Any]:
        dims = [d.dim_value if d.HasField("dim_value") else (d.dim_param or "batch") for d in value.type.tensor_type.shape.dim]
        dtype = {"float": "float32", "double": "float64", "float16": "float16"}.get(names.get(value.type.tensor_type.elem_type, ""),
                                                                               names.get(value.type.tensor_type.elem_type, ""))
        return {"name": value.name, "shape": dims, "dtype": dtype if dtype in DTYPES else "float32"}

    return Signature([spec(v) for v in graph.input if v.name not in weights],
                     [{"name": v.name, "kind": "values"} for v in graph.output], [f"inputs and outputs read from {path.name}"])


def checkpoint_state(path: Path) -> tuple[dict[str, Any] | None, str]:
    """(state_dict to save, why) when a checkpoint nests its weights where modelbuild's loader does not look;
    (None, '') when the file can be used as `weights:` as it is. ConfigError for a file it cannot read."""
    import torch

    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ConfigError(f"checkpoint {path.name} cannot be loaded safely ({describe(exc)})",
                          hint="if it holds a whole pickled model, save its weights instead: "
                          "torch.save(model.state_dict(), 'weights.pt'), and pass --weights") from None
    if not isinstance(state, dict):
        raise ConfigError(f"checkpoint {path.name} holds a {type(state).__name__}, not a state_dict")
    if "state_dict" in state or all(isinstance(v, torch.Tensor) for v in state.values()):
        return None, ""
    for key in CHECKPOINT_KEYS:
        if isinstance(state.get(key), dict) and all(isinstance(v, torch.Tensor) for v in state[key].values()):
            return state[key], f"the weights are the checkpoint's '{key}' entry"
    raise ConfigError(f"checkpoint {path.name} has no state_dict modelbuild can find (keys: {', '.join(map(str, state))})",
                      hint="save one with torch.save(model.state_dict(), 'weights.pt') and pass --weights")


def load(source: dict[str, Any], root: Path) -> "torch.nn.Module":
    """The model, loaded the way the build will load it (factory + weights, TorchScript or .pt2)."""
    import torch

    if source.get("torchscript"):
        return torch.jit.load(str(root / source["torchscript"]), map_location="cpu").eval()
    if source.get("exported"):
        return torch.export.load(str(root / source["exported"])).module()
    from buildsys.config.schema import Model
    from buildsys.errors import StepError
    from buildsys.formats.torch.loading import load_module

    placeholder = Model.model_validate({"source": source, "inputs": [{"name": "x", "shape": [1]}],
                                        "outputs": [{"name": "y"}]})
    try:
        return load_module(placeholder, root, name="")
    except StepError as exc:
        raise ConfigError(exc.what) from None


def first_layer(module: "torch.nn.Module") -> tuple[dict[str, Any] | None, str]:
    """An input spec from the first layer that fixes one (Linear: [batch, in_features]; Embedding: int64
    token ids), or None and what is missing (a convolution's spatial size)."""
    import torch

    for name, layer in module.named_modules():
        if isinstance(layer, torch.nn.Linear):
            return {"name": "x", "shape": ["batch", layer.in_features], "dtype": "float32"}, \
                f"input shape from the first layer {name or 'module'}: Linear({layer.in_features} → {layer.out_features})"
        if isinstance(layer, torch.nn.Embedding):
            return None, f"the first layer {name} is an Embedding: give the sequence length (--input tokens:batch,128:int64)"
        if isinstance(layer, (torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Conv3d)):
            size, example, layout = {torch.nn.Conv1d: ("length", "128", "NCL"), torch.nn.Conv2d: ("height and width",
                                     "224,224", "NCHW"), torch.nn.Conv3d: ("depth, height and width", "16,112,112",
                                                                           "NCDHW")}[type(layer)]
            return None, (f"the first layer {name} is a {type(layer).__name__} with {layer.in_channels} channel(s): give "
                          f"the input's {size} (e.g. --input x:batch,{layer.in_channels},{example}:float32:{layout})")
    return None, "no layer tells the input shape: give it (--input NAME:SHAPE[:DTYPE[:LAYOUT]])"


def forward(module: "torch.nn.Module", inputs: list[dict[str, Any]], sample: dict[str, "np.ndarray"] | None,
            scores: bool) -> tuple[list[dict[str, Any]], str]:
    """Run the model once (on two samples of the example, else zeros) and name its outputs; 'scores' for
    [batch, classes] outputs when the data has labels."""
    import numpy as np
    import torch

    args = []
    for spec in inputs:
        if sample is not None and spec["name"] in sample:
            array = sample[spec["name"]][:2]
        else:
            dims = [2 if i == 0 and isinstance(d, str) else d for i, d in enumerate(spec["shape"])]
            if any(isinstance(d, str) for d in dims):
                raise ConfigError(f"input '{spec['name']}' has the dynamic axis {dims} besides the batch: give an example "
                                  "file (--example) so that init can run the model")
            array = np.zeros(dims, dtype=spec["dtype"])
        args.append(torch.from_numpy(np.ascontiguousarray(array)))
    try:
        with torch.no_grad():
            result = module(*args)
    except Exception as exc:
        raise ConfigError(f"the model does not run on inputs {[list(a.shape) for a in args]}: {describe(exc)}",
                          hint="give the input signature with --input NAME:SHAPE[:DTYPE[:LAYOUT]]") from None
    if isinstance(result, dict):
        items = list(result.items())
    else:
        values = list(result) if isinstance(result, (tuple, list)) else [result]
        items = [("output" if len(values) == 1 else f"output_{i}", v) for i, v in enumerate(values)]
    outputs = []
    for name, value in items:
        kind = "scores" if scores and getattr(value, "ndim", 0) == 2 and value.shape[-1] > 1 and value.is_floating_point() else "values"
        outputs.append({"name": str(name), "kind": kind})
    shapes = ", ".join(f"{n}: {list(getattr(v, 'shape', []))}" for n, v in items)
    return outputs, f"outputs from one forward run ({shapes})"


def _dims(shape: Any, first: str) -> list[int | str]:
    out: list[int | str] = []
    for i, d in enumerate(shape):
        out.append(int(d) if str(d).isdigit() else (first if i == 0 else f"dim{i}"))
    return out


def _dtype(dtype: Any) -> str:
    name = str(dtype).replace("torch.", "")
    return name if name in DTYPES else "float32"
