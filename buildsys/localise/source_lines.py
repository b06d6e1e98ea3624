"""Where the user's model calls each op (worker side: torch is imported inside the functions).

`model_sites` maps every ATen op of a model to its calls (`sites.Site`: the `nn.Module` path and class,
the file, line and code of the call), read from torch.export's node metadata: `nn_module_stack` gives
the module, `stack_trace` the call (its innermost frame outside PyTorch and the standard library: the
user's line, or an installed model package's such as `timm/layers/mlp.py`). Ops the core ATen
decompositions produce (what ExecuTorch and litert-torch refuse) carry the metadata of the op they came
from. A model torch.export cannot export falls back to its TorchScript trace: each node's scope names
the module, its source range the line.

`refused_sites` is the worker's use of it: a failed step's error names ops (`rewrites.refusal.refused_ops`:
aten::erfinv, 'erfinv', Unsupported fx node …, kind erfinv) or ONNX nodes (`(node /head/Mul)`: onnx2tf,
whose scope names the module); each is located in the step's source model. The op analysis
(buildsys.planning.coverage_probe) records `model_sites` for `plan --ops`.
"""

from __future__ import annotations

import inspect
import json
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Sequence

from buildsys.localise.sites import SITES_PER_OP, Site, short_path, stdlib_file

if TYPE_CHECKING:
    import torch

    from buildsys.config.schema import Model

#: An ONNX node a converter names in its refusal: onnx2tf's "(node /head/Mul)" (buildsys.formats.tflite).
ONNX_NODE = re.compile(r"\(node (/[^\s)]+)\)")
_FRAME = re.compile(r'File "(.+?)", line (\d+), in (\S+)\n(?:\s+(.*))?')
_RANGE = re.compile(r"^(.+)\((\d+)\): (\S+)$")
_cache: dict[str, dict[str, list[Site]]] = {}  # per worker process: the sites of each model located so far


def module_and_args(model: "Model", root: Path, name: str, step: str) -> tuple["torch.nn.Module", tuple[Any, ...]]:
    """The source module as converters see it (a QAT model converted with its learned parameters) and its
    example arguments at fixed shapes: what the op analysis exports (buildsys.planning.coverage_probe) and the sites are
    read from."""
    from buildsys.config import data
    from buildsys.formats.torch.qat import quantized
    from buildsys.formats.torch.loading import example_args, load_module, trace_batch

    module = quantized(load_module(model, root, name=name, step=step).eval(), step=step, eager=True)
    batch = data.eval_batch(model, root, prefer=("example", "validation"))
    return module, example_args(model, trace_batch(model, batch, dynamic=False))


def _outside_torch(file: str) -> bool:
    """Whether a frame's file is the model's code: not PyTorch's own, not the standard library, not modelbuild's."""
    import torch

    return not file.startswith(str(Path(torch.__file__).parent) + "/") and not stdlib_file(file) \
        and "/buildsys/" not in file and not file.startswith("<")


def node_site(node: Any, op: str, root: Path | None) -> Site | None:
    """The site of an exported program's node: its innermost module and the innermost call outside PyTorch."""
    stack = node.meta.get("nn_module_stack") or {}
    path, kind = list(stack.values())[-1] if stack else ("", "")
    path = "" if path in ("", "L['self']") else str(path)
    kind = (kind if isinstance(kind, str) else getattr(kind, "__qualname__", str(kind))).rsplit(".", 1)[-1]
    frames = [m for m in _FRAME.finditer(node.meta.get("stack_trace") or "") if _outside_torch(m.group(1))]
    if not frames and not stack:
        return None
    if not frames:
        return Site(op, path, kind, "", 0)
    last = frames[-1]
    return Site(op, path, kind, short_path(last.group(1), root), int(last.group(2)), (last.group(4) or "").strip())


def program_sites(program: Any, root: Path | None, into: dict[str, list[Site]] | None = None) -> dict[str, list[Site]]:
    """Each ATen op (bare name) of an ExportedProgram's graph → its first `SITES_PER_OP` sites."""
    out: dict[str, list[Site]] = into if into is not None else {}
    for node in program.graph.nodes:
        if node.op != "call_function" or not str(node.target).startswith("aten."):
            continue
        op = str(node.target).split(".")[1]
        site = node_site(node, op, root)
        calls = out.setdefault(op, [])
        if site is not None and len(calls) < SITES_PER_OP and site not in calls:
            calls.append(site)
    return out


def traced_sites(module: "torch.nn.Module", args: tuple[Any, ...], root: Path | None) -> dict[str, list[Site]]:
    """Each ATen op of the TorchScript trace → its sites: the node's scope (`__module.head/__module.head.fc`)
    names the module, its source range (`probit.py(13): forward`, innermost first) the line."""
    import warnings

    import torch

    kinds = {path: type(m).__name__ for path, m in module.named_modules()}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        graph = torch.jit.trace(module, args, check_trace=False).inlined_graph
    out: dict[str, list[Site]] = {}
    for node in graph.nodes():
        if not node.kind().startswith("aten::"):
            continue
        op = node.kind().split("::", 1)[1]
        path = node.scopeName().rsplit("/", 1)[-1].removeprefix("__module.") if node.scopeName() else ""
        path = "" if path == "__module" else path
        frames = [m for m in (_RANGE.match(line.strip()) for line in node.sourceRange().splitlines())
                  if m and _outside_torch(m.group(1))]
        file, line = (short_path(frames[0].group(1), root), int(frames[0].group(2))) if frames else ("", 0)
        site, calls = Site(op, path, kinds.get(path, ""), file, line, _line_of(frames[0].group(1), line) if frames else ""), \
            out.setdefault(op, [])
        if len(calls) < SITES_PER_OP and site not in calls:
            calls.append(site)
    return out


def _line_of(file: str, line: int) -> str:
    import linecache

    return linecache.getline(file, line).strip()


def model_sites(module: "torch.nn.Module", args: tuple[Any, ...], root: Path | None,
                program: Any = None, core: Any = None) -> dict[str, list[Site]]:
    """Every ATen op of the model → its sites: torch.export's program (`program`, exported here when not given)
    and its core ATen decomposition (`core`, made here when not given), else the TorchScript trace."""
    import torch

    try:
        if program is None:
            with torch.no_grad():
                program = torch.export.export(module, args, strict=False)
        out = program_sites(program, root)
        if core is None:
            with torch.no_grad():
                core = program.run_decompositions()
        return program_sites(core, root, out)
    except Exception:  # noqa: BLE001 - a model torch.export refuses: its trace still has scopes and lines
        if program is not None:
            return program_sites(program, root)
        return traced_sites(module, args, root)


def locate(sites: dict[str, list[Site]], ops: Iterable[str]) -> list[Site]:
    """The sites of `ops`, named as converters name them: the ATen name (erfinv), or a spelling that differs
    only in underscores and case (PyTorch's prims `erf_inv`, the dynamo exporter's refusal of aten.erfinv)."""
    loose: dict[str, str] = {}
    for op in sites:
        loose.setdefault(op.replace("_", "").lower(), op)
    found: list[Site] = []
    for op in ops:
        name = op if op in sites else loose.get(op.replace("_", "").lower(), "")
        found += [s for s in sites.get(name, []) if s not in found]
    return found


def onnx_node_sites(module: "torch.nn.Module", nodes: Sequence[str], sites: dict[str, list[Site]],
                    root: Path | None) -> list[Site]:
    """The sites of ONNX nodes a converter names (`/head/Mul`): the module their scope names, the call of the
    node's op in it when the model's sites have one (Mul → aten mul), else the module's forward."""
    from buildsys.localise.names import from_scope

    modules = dict(module.named_modules())
    out: list[Site] = []
    for name in nodes:
        path = from_scope(name, modules)
        op = name.rstrip("/").rsplit("/", 1)[-1].split("_")[0]
        calls = [s for s in locate(sites, [op]) if s.module == path] or \
            [s for calls in sites.values() for s in calls if s.module == path][:1]
        if calls:
            out.append(Site(op, path, calls[0].module_type, calls[0].file, calls[0].line, calls[0].code))
            continue
        cls = type(modules.get(path, module))
        try:
            file, line = inspect.getsourcefile(cls) or "", inspect.getsourcelines(cls.forward)[1]
        except (OSError, TypeError):
            file, line = "", 0
        out.append(Site(op, path, cls.__name__, short_path(file, root) if file else "", line))
    return out


def refused_sites(request: dict[str, Any], error: str) -> list[Site]:
    """The sites of what a failed step's `error` refused, in the source model of its `request` (a worker
    request: model, model_name, root, and `extra.sites`, the op analysis' sites of the model when the build
    has them); [] when the error names nothing or the source is not a PyTorch module. Without the analysis'
    sites the model is exported here, once per model and worker process; an ONNX node needs the module."""
    import gc

    from buildsys.config.schema import Model
    from buildsys.rewrites.refusal import refused_ops

    ops, nodes = refused_ops(error), ONNX_NODE.findall(error)
    model = Model.model_validate(request["model"])
    if not (ops or nodes) or model.source.format != "pytorch":
        return []
    root = Path(request["root"]).resolve()
    key = json.dumps([request["model"], str(root)], sort_keys=True)
    known = (request.get("extra") or {}).get("sites")
    if known and key not in _cache:
        _cache[key] = {op: [Site.from_dict(s) for s in calls] for op, calls in known.items()}
    module = None
    if key not in _cache or nodes:
        gc.collect()  # what the failed step held goes before the module is loaded again
        module, args = module_and_args(model, root, request.get("model_name", ""), "locating the refused op")
        if key not in _cache:
            _cache[key] = model_sites(module, args, root)
    found = locate(_cache[key], ops)
    return found + (onnx_node_sites(module, nodes, _cache[key], root) if module is not None and nodes else [])
