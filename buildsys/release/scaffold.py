"""`modelbuild init`: write a deploy.yaml for a model (a factory with weights or a checkpoint, TorchScript, a
.pt2 program or ONNX), its signature inferred where the model or an example file tells it, asked for (on a
terminal) or taken from flags where not, with the chosen presets as targets and a release bundle.

The file is validated (loaded and expanded into its build graph) before it replaces anything, so a failed
`init` leaves the directory as it was.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import yaml

from buildsys import __version__
from buildsys.errors import ConfigError, Location
from buildsys.release import probe

SOURCES = ("factory", "torchscript", "exported", "onnx")
FORMAT_PRESETS = ("torchscript", "pt2", "onnx", "onnx-optimized", "executorch")
#: Asks the person at a terminal: (question, default) → answer. None: never ask (not a terminal).
Ask = Callable[[str, str], str]


@dataclass
class Request:
    """What `init` was told: one source, optional data, signature flags and presets."""

    factory: str | None = None
    weights: str | None = None
    checkpoint: str | None = None
    torchscript: str | None = None
    exported: str | None = None
    onnx: str | None = None
    name: str | None = None
    example: str | None = None
    calibration: str | None = None
    inputs: list[str] = field(default_factory=list)
    outputs: list[str] = field(default_factory=list)
    presets: list[str] = field(default_factory=list)


@dataclass
class Scaffold:
    path: Path
    targets: list[str]
    notes: list[str]
    written: list[Path]


def presets() -> dict[str, str]:
    """Every preset `init` offers: the shipped recipes (with their descriptions) and the plain formats."""
    from buildsys.config.load import PLATFORMS, builtin_recipes

    out = {name: str(body.get("description", "")) for name, body in sorted(builtin_recipes().items())}
    out.update({p: f"platform preset ({out.get(p, '')})".replace(" ()", "") for p in PLATFORMS})
    out.update({f: f"the {f} format at fp32" for f in FORMAT_PRESETS})
    return out


def scaffold(path: Path, req: Request, *, force: bool = False, ask: Ask | None = None) -> Scaffold:
    """Write `path` (a deploy file) for the model `req` names; ConfigError on anything it cannot settle."""
    root = path.resolve().parent
    if path.exists() and not force:
        raise ConfigError(f"{path} already exists", hint="pass --force to replace it, or -f to write another file")
    given = [k for k in SOURCES if getattr(req, k)] + (["checkpoint"] if req.checkpoint and not req.factory else [])
    if len(given) != 1:
        raise ConfigError("give the model as exactly one of --factory MODULE:FUNCTION (with --weights or --checkpoint), "
                          "--torchscript FILE, --exported FILE.pt2 or --onnx FILE"
                          + (f" (got {', '.join('--' + g for g in given)})" if given else ""))
    if req.weights and req.checkpoint:
        raise ConfigError("give --weights or --checkpoint, not both")
    notes: list[str] = []
    source: dict[str, Any] = {}
    extra: dict[Path, Any] = {}  # files init writes besides the deploy file (a checkpoint's state_dict)
    if req.factory:
        if not re.fullmatch(r"[A-Za-z_][\w.]*:[A-Za-z_]\w*", req.factory):
            raise ConfigError(f"--factory '{req.factory}' must look like 'package.module:function'")
        source["factory"] = req.factory
        weights = req.weights or req.checkpoint
        if weights:
            source["weights"] = _relative(weights, root)
        if req.checkpoint:
            state, why = probe.checkpoint_state(root / source["weights"])
            if state is not None:
                out = root / f"{Path(source['weights']).stem}.state_dict.pt"
                extra[out], source["weights"] = state, out.name
                notes.append(f"{why}: saved as {out.name}, which deploy.yaml names as the weights")
    else:
        key = given[0]
        source[key] = _relative(getattr(req, key), root)
    name = req.name or _default_name(source)
    sig = _signature(source, req, root, extra, ask)
    notes += sig.notes
    # The server recipe sets export options an ONNX source has no step for: it starts from the optimized format.
    chosen = _presets(req.presets, ask, "onnx-optimized" if source.get("onnx") else "server")
    text = render(name, source, sig, chosen, req, root)
    written = _write(path, text, extra)
    return Scaffold(path, [f"{name}-{p}" for p in chosen], notes, written)


def _signature(source: dict[str, Any], req: Request, root: Path, extra: dict[Path, Any], ask: Ask | None) -> probe.Signature:
    sig = probe.Signature()
    labels = False
    sample = None
    if req.example:
        sig.inputs, labels = probe.from_example(root / _relative(req.example, root))
        sig.notes.append(f"inputs from the arrays of {req.example}" + (" (it has labels: outputs of shape [batch, "
                                                                        "classes] are class scores)" if labels else ""))
        import numpy as np

        with np.load(root / _relative(req.example, root)) as data:
            sample = {k: data[k] for k in data.files} if hasattr(data, "files") else {"input": data}
    if req.inputs:
        sig.inputs = [probe.parse_input(t) for t in req.inputs]
        sig.notes.append("inputs as given by --input")
    if source.get("onnx"):
        found = probe.from_onnx(root / source["onnx"])
        sig.inputs, sig.outputs = sig.inputs or found.inputs, found.outputs
        sig.notes += found.notes
    elif source.get("exported") and not sig.inputs:
        found = probe.from_exported(root / source["exported"])
        sig.inputs, sig.outputs = found.inputs, found.outputs
        sig.notes += found.notes
    if req.outputs:
        sig.outputs = [probe.parse_output(t) for t in req.outputs]
    if source.get("onnx") or (sig.inputs and sig.outputs):
        return sig
    import torch

    if extra:  # a checkpoint's state_dict, not written yet: load the factory with it from a temporary file
        import tempfile

        with tempfile.TemporaryDirectory(dir=root) as tmp:
            state_path = Path(tmp) / "weights.pt"
            torch.save(next(iter(extra.values())), state_path)
            module = probe.load({**source, "weights": str(state_path.relative_to(root))}, root)
    else:
        module = probe.load(source, root)
    if not sig.inputs:
        spec, why = probe.first_layer(module)
        if spec is None and ask is not None:
            answer = ask(f"{why}.\nInput as NAME:SHAPE[:DTYPE[:LAYOUT]]", "")
            spec, why = probe.parse_input(answer), "input as answered"
        if spec is None:
            raise ConfigError(f"cannot tell the model's input: {why}", hint="— or give an example file: --example FILE.npz")
        sig.inputs = [spec]
        sig.notes.append(why)
    if not sig.outputs:
        sig.outputs, why = probe.forward(module, sig.inputs, sample, labels)
        sig.notes.append(why)
    return sig


def _presets(asked: list[str], ask: Ask | None, default: str) -> list[str]:
    known = presets()
    if not asked and ask is not None:
        listing = "\n".join(f"  {n:<26} {d}" for n, d in known.items())
        asked = [p.strip() for p in ask(f"Presets:\n{listing}\nTargets to make (comma-separated)", default).split(",")]
    chosen = [p for p in dict.fromkeys(asked or [default]) if p]
    for p in chosen:
        if p not in known:
            from buildsys.errors import did_you_mean

            raise ConfigError(f"unknown preset '{p}'", hint=did_you_mean(p, known) or f"presets: {', '.join(known)}")
    return chosen


def render(name: str, source: dict[str, Any], sig: probe.Signature, chosen: list[str], req: Request, root: Path) -> str:
    """The deploy file's text: flow-style signature lines, comments that say where each guess came from."""
    from buildsys.config.load import PLATFORMS

    def flow(value: Any) -> str:
        text = yaml.safe_dump(value, default_flow_style=True, sort_keys=False, width=1000).strip()
        return text[:-3].strip() if text.endswith("\n...") else text  # a scalar's end-of-document marker

    lines = [f"# Written by `modelbuild init` (modelbuild {__version__}). Every key: docs/deploy-yaml.md or",
             "# `modelbuild schema`. `modelbuild plan` shows what would run, `modelbuild build` makes it.",
             *(f"# {note}" for note in sig.notes), "models:", f"  {name}:", "    source:"]
    lines += [f"      {k}: {flow(v)}" for k, v in source.items()]
    lines.append("    inputs:")
    lines += [f"      - {flow(spec)}" for spec in sig.inputs]
    lines.append("    outputs:")
    lines += [f"      - {flow(spec)}" for spec in sig.outputs]
    data = {}
    if req.example:
        example = _relative(req.example, root)
        data = {"example": example, "validation": example}
    if req.calibration:
        data["calibration"] = _relative(req.calibration, root)
    if data:
        lines += ["    data:", *(f"      {k}: {flow(v)}" for k, v in data.items())]
    else:
        lines.append("    # data: {validation: val.npz, calibration: calib.npz}   # without it, checks use seeded random inputs")
    lines.append("targets:")
    for preset in chosen:
        lines += [f"  {name}-{preset}:", f"    model: {name}"]
        if preset in PLATFORMS:
            lines.append(f"    platform: {preset}")
        elif preset in FORMAT_PRESETS:
            lines.append(f"    format: {preset}")
        else:
            lines.append(f"    recipe: {preset}")
    lines += ["bundles:", "  release:", f"    targets: {flow([f'{name}-{p}' for p in chosen])}", "    version: 0.1.0",
              "    # signing:                      # sign bundles (docs/releases.md); never commit the private key",
              "    #   key: ~/keys/signing.key      # or MODELBUILD_SIGNING_KEY",
              "    #   public_key: signing.pub      # what `bundle verify` checks against", ""]
    return "\n".join(lines)


def _write(path: Path, text: str, extra: dict[Path, Any]) -> list[Path]:
    """Validate the text as a deploy file (load + expand), then write it and the extra files."""
    from buildsys.config.load import load
    from buildsys.planning.expand import expand
    from buildsys.config.inputs import data_files

    tmp = path.with_name(f".{path.name}.init.yaml")
    written = []
    try:
        tmp.write_text(text, encoding="utf-8")
        try:
            cfg = load(tmp)
            expand(cfg)
            for model in cfg.project.models:
                for which in ("example", "calibration", "validation"):
                    data_files(cfg, model, which)
        except ConfigError as exc:  # name the file being written, not its temporary twin
            where = Location(path, exc.where.line) if exc.where is not None else None
            raise ConfigError(exc.what, where=where, field=exc.field, hint=exc.hint) from None
        for out, state in extra.items():
            import torch

            torch.save(state, out)
            written.append(out)
        os.replace(tmp, path)
    except BaseException:
        for out in written:
            out.unlink(missing_ok=True)
        raise
    finally:
        tmp.unlink(missing_ok=True)
    return [*written, path]


def _relative(value: str, root: Path) -> str:
    """A path as deploy.yaml writes it: relative to the deploy file's directory (it must lie under it)."""
    path = Path(value).expanduser()
    full = (path if path.is_absolute() else Path.cwd() / path).resolve()
    if not full.exists():
        raise ConfigError(f"{value} does not exist")
    try:
        return full.relative_to(root).as_posix()
    except ValueError:
        raise ConfigError(f"{value} lies outside {root}", hint="deploy.yaml names files relative to itself: put the "
                          "model and its data under the project directory") from None


def _default_name(source: dict[str, Any]) -> str:
    ref = source.get("factory", "").split(":")[0].split(".")[-1] if source.get("factory") else Path(
        next(str(v) for k, v in source.items() if k != "weights")).stem
    name = re.sub(r"[^A-Za-z0-9_.-]+", "-", ref).strip("-.") or "model"
    return name if name[0].isalnum() else f"m{name}"
