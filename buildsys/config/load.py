"""Load deploy.yaml: YAML with a line for every key, recipe includes and merges, strict validation.

Every error names the file and line of the offending key, the key path and how to fix it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_args, get_origin

import yaml
from pydantic import BaseModel, ValidationError

from buildsys.config.schema import DeployConfig
from buildsys.errors import ConfigError, Location, did_you_mean
from buildsys.formats.precision import format_name

KeyPath = tuple[str | int, ...]
MAX_NODES = 1_000_000  # far above any real deploy.yaml

try:  # the C composer is several times faster on big files
    _Loader: type = yaml.CSafeLoader
except AttributeError:  # pragma: no cover - libyaml missing
    _Loader = yaml.SafeLoader


@dataclass
class LoadedConfig:
    """A validated project plus where each key came from (for errors raised after loading)."""

    project: DeployConfig
    path: Path
    root: Path
    locations: dict[KeyPath, Location] = field(default_factory=dict)
    files: list[Path] = field(default_factory=list)  # deploy.yaml and every included file

    def where(self, *key: str | int) -> Location:
        """The location of `key`, or of its nearest ancestor that has one."""
        return _nearest(self.locations, key, self.path)


def _nearest(locations: dict[KeyPath, Location], key: KeyPath, default: Path) -> Location:
    for n in range(len(key), -1, -1):
        if key[:n] in locations:
            return locations[key[:n]]
    return Location(default, 0)


def read_yaml(path: Path) -> tuple[Any, dict[KeyPath, Location]]:
    """Parse one YAML file into plain data plus a map from key path to (file, line)."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path} does not exist", hint="pass the deploy file with -f PATH") from None
    except IsADirectoryError:
        raise ConfigError(f"{path} is a directory, not a deploy.yaml") from None
    except UnicodeDecodeError as exc:
        line = path.read_bytes()[: exc.start].count(b"\n") + 1
        raise ConfigError(f"byte 0x{exc.object[exc.start]:02x} is not UTF-8 text", where=Location(path, line),
                          hint="save the file as UTF-8") from None
    except OSError as exc:
        raise ConfigError(f"{path} cannot be read: {exc.strerror or exc}") from None
    try:
        node = yaml.compose(text, Loader=_Loader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else 0
        raise ConfigError(f"malformed YAML: {exc.problem or exc.context}", where=Location(path, line),
                          hint="check the indentation and quoting on this line") from None
    locations: dict[KeyPath, Location] = {}
    data = _construct(node, (), path, locations, set()) if node is not None else {}
    return data, locations


def _construct(node: yaml.Node, key: KeyPath, path: Path, locs: dict[KeyPath, Location], within: set[int]) -> Any:
    """Plain data from `node`, recording each key's location. `within`: the nodes being constructed
    above this one, so that an alias to its own ancestor (`a: &x [*x]`) is an error, not a recursion."""
    locs.setdefault(key, Location(path, node.start_mark.line + 1))
    if id(node) in within:
        raise ConfigError("an alias refers to a node that contains it (a recursive anchor)",
                          where=Location(path, node.start_mark.line + 1), field=_dotted(key) or "(top level)",
                          hint="anchors may only repeat a finished node")
    if isinstance(node, (yaml.MappingNode, yaml.SequenceNode)):
        within = within | {id(node)}
        if len(locs) > MAX_NODES:  # aliases of aliases can multiply a small file into billions of nodes
            raise ConfigError(f"the file expands to more than {MAX_NODES:,} values through its aliases",
                              where=Location(path, node.start_mark.line + 1), hint="write the values out instead")
    if isinstance(node, yaml.MappingNode):
        out: dict[str, Any] = {}
        for k_node, v_node in node.value:
            k = k_node.value
            if k in out:
                raise ConfigError(f"duplicate key '{k}'", where=Location(path, k_node.start_mark.line + 1),
                                  field=_dotted(key), hint="each key may appear once in a mapping")
            locs[key + (k,)] = Location(path, k_node.start_mark.line + 1)
            out[k] = _construct(v_node, key + (k,), path, locs, within)
        return out
    if isinstance(node, yaml.SequenceNode):
        return [_construct(v, key + (i,), path, locs, within) for i, v in enumerate(node.value)]
    return yaml.constructor.SafeConstructor.construct_object(_SCALARS, node)


_SCALARS = yaml.constructor.SafeConstructor()


def _dotted(key: KeyPath) -> str:
    out = ""
    for part in key:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def load(path: Path) -> LoadedConfig:
    """Load, merge includes and recipes, and validate `path`. Raises ConfigError on any problem."""
    path = Path(path)
    data, locs = read_yaml(path)
    if not isinstance(data, dict):
        raise ConfigError("the top level must be a mapping with 'models' and 'targets'", where=Location(path, 1))
    files = [path]
    recipes: dict[str, Any] = {}
    for i, inc in enumerate(data.get("include") or []):
        inc_path = path.parent / str(inc)
        if not inc_path.is_file():
            raise ConfigError(f"included file '{inc}' does not exist", where=_nearest(locs, ("include", i), path),
                              field=f"include[{i}]", hint="paths are relative to the deploy file")
        inc_data, inc_locs = read_yaml(inc_path)
        if not isinstance(inc_data, dict) or set(inc_data) - {"recipes"}:
            extra = sorted(set(inc_data) - {"recipes"}) if isinstance(inc_data, dict) else []
            raise ConfigError(f"an included file may only define 'recipes' (found {', '.join(extra) or 'no mapping'})",
                              where=Location(inc_path, 1))
        files.append(inc_path)
        for name, body in (inc_data.get("recipes") or {}).items():
            recipes[name] = body
            locs.update({("recipes", name) + k[2:]: v for k, v in inc_locs.items() if k[:2] == ("recipes", name)})
    recipes.update(data.get("recipes") or {})  # the deploy file's own recipes win over included ones
    if recipes:
        data["recipes"] = recipes
    declared = data.get("models")
    models: dict[Any, Any] = declared if isinstance(declared, dict) else {}
    for tname, target in (data.get("targets") or {}).items():
        if not isinstance(target, dict):
            continue
        platform = target.get("platform")
        if platform is not None and platform not in PLATFORMS:
            # Checked before the preset is applied: the preset is what would have supplied 'format'.
            raise ConfigError(f"{platform!r} is not one of {', '.join(PLATFORMS)}", where=_nearest(
                locs, ("targets", tname, "platform"), path), field=f"targets.{tname}.platform",
                hint=did_you_mean(str(platform), PLATFORMS) or "or leave 'platform' out and set 'format'")
        if target.get("recipe") is None and platform in PLATFORMS:
            target = {**target, "recipe": _platform_recipe(target["platform"], models.get(target.get("model")))}
        if target.get("recipe") is not None:
            if target["recipe"] not in recipes:
                recipes = {**builtin_recipes(), **recipes}  # the deploy file's own recipes win
            data["targets"][tname] = _apply_recipe(target, tname, recipes, locs, path)
    try:
        project = DeployConfig.model_validate(data)
    except ValidationError as exc:
        raise _config_error(exc, locs, path) from None
    cfg = LoadedConfig(project, path, path.parent.resolve(), locs, files)
    _check_references(cfg)
    return cfg


def _check_references(cfg: LoadedConfig) -> None:
    """Names that must point at something defined elsewhere in the file: a bundle's targets."""
    targets = cfg.project.targets
    for name, bundle in cfg.project.bundles.items():
        for i, target in enumerate(bundle.targets):
            if target not in targets:
                raise ConfigError(f"unknown target '{target}'", where=cfg.where("bundles", name, "targets", i),
                                  field=f"bundles.{name}.targets[{i}]",
                                  hint=did_you_mean(target, targets) or f"targets: {', '.join(targets)}")


PLATFORMS = ("ios", "android", "server", "intel")


def _platform_recipe(platform: str, model: Any) -> str:
    """The preset a platform starts from; android and intel quantize to int8 only when calibration data exists.
    A text-generation model on intel gets the stateful LLM IR with int8 weights (needs no data), on ios the
    stateful Core ML program."""
    if platform in ("intel", "ios") and isinstance(model, dict) and model.get("task") == "text-generation":
        return f"{platform}-llm"
    if platform in ("android", "intel"):
        data = model.get("data") if isinstance(model, dict) else None
        return f"{platform}-int8" if isinstance(data, dict) and data.get("calibration") else platform
    return platform


def builtin_recipes() -> dict[str, Any]:
    """The presets shipped with modelbuild (the repo's recipes/, packaged as buildsys.recipes)."""
    import buildsys

    installed = Path(buildsys.__file__).parent / "recipes"  # a wheel: packaged as buildsys.recipes
    folder = installed if installed.is_dir() else Path(buildsys.__file__).parent.parent / "recipes"  # a checkout
    out: dict[str, Any] = {}
    for path in sorted(folder.glob("*.yaml")):
        out.update((yaml.load(path.read_text(encoding="utf-8"), Loader=_Loader) or {}).get("recipes", {}))
    return out


def _apply_recipe(target: dict[str, Any], tname: str, recipes: dict[str, Any], locs: dict[KeyPath, Location],
                  path: Path) -> dict[str, Any]:
    """Merge a target over its recipe chain (target wins); recipe keys keep their recipe's lines."""
    chain: list[str] = []
    name = target.get("recipe")
    while name is not None:
        if name in chain:
            raise ConfigError(f"recipes include each other in a cycle: {' → '.join(chain + [name])}",
                              where=_nearest(locs, ("targets", tname, "recipe"), path), field=f"targets.{tname}.recipe")
        if name not in recipes:
            raise ConfigError(f"unknown recipe '{name}'", where=_nearest(locs, ("targets", tname, "recipe"), path),
                              field=f"targets.{tname}.recipe",
                              hint=did_you_mean(name, recipes) or f"known recipes: {', '.join(sorted(recipes)) or 'none'}")
        chain.append(name)
        name = recipes[name].get("recipe") if isinstance(recipes[name], dict) else None
    merged: dict[str, Any] = {}
    for rname in reversed(chain):
        body = {k: v for k, v in recipes[rname].items() if k != "recipe"}
        merged = _deep_merge(merged, body)
        for k, loc in list(locs.items()):
            if k[:2] == ("recipes", rname) and len(k) > 2:
                locs.setdefault(("targets", tname) + k[2:], loc)
    # A target that changes the preset's format or precision leaves the preset's goal behind, so the
    # preset's options for that goal no longer apply (platform: ios + precision: fp32 → plain coreml).
    goal = format_name(str(merged.get("format")), merged.get("precision", "fp32"))
    if goal != format_name(str(target.get("format", merged.get("format"))),
                           target.get("precision", merged.get("precision", "fp32"))):
        own = target.get("options") or {}
        kept = {k: v for k, v in (merged.get("options") or {}).items()
                if k in own or k not in (goal, merged.get("format"))}
        merged = {**merged, "options": kept}
    return _deep_merge(merged, target)


def _deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        out[k] = _deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _config_error(exc: ValidationError, locs: dict[KeyPath, Location], path: Path) -> ConfigError:
    """Turn the first pydantic error into a one-line message with file:line, key path and a hint."""
    err = exc.errors()[0]
    loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and p.startswith("function-")))
    field_path = _dotted(loc)
    where = _nearest(locs, loc, path)
    kind = err["type"]
    if kind == "extra_forbidden":
        allowed = _allowed_keys(loc[:-1])
        return ConfigError(f"unknown key '{loc[-1]}'", where=where, field=_dotted(loc[:-1]) or "(top level)",
                           hint=did_you_mean(str(loc[-1]), allowed) or (f"allowed: {', '.join(allowed)}" if allowed else ""))
    if kind == "missing":
        return ConfigError(f"required key '{loc[-1]}' is missing", where=_nearest(locs, loc[:-1], path),
                           field=_dotted(loc[:-1]) or "(top level)")
    if kind == "literal_error":
        choices = re.findall(r"'([^']*)'", err.get("ctx", {}).get("expected", ""))
        return ConfigError(f"{err['input']!r} is not one of {', '.join(choices)}", where=where, field=field_path,
                           hint=did_you_mean(str(err["input"]), choices))
    msg = err["msg"].removeprefix("Value error, ")
    if "input" in err and kind not in ("value_error", "assertion_error") and not isinstance(err["input"], (dict, list)):
        msg = f"{msg} (got {err['input']!r})"
    return ConfigError(msg, where=where, field=field_path)


def _allowed_keys(loc: KeyPath) -> list[str]:
    """Field names of the model found by walking `loc` from DeployConfig (dict keys and list indexes skip)."""
    model: Any = DeployConfig
    for part in loc:
        # dict keys (model and target names) and list indexes leave the model as it is
        if isinstance(part, str) and isinstance(model, type) and issubclass(model, BaseModel) and part in model.model_fields:
            model = _unwrap(model.model_fields[part].annotation)
    if isinstance(model, type) and issubclass(model, BaseModel):
        return list(model.model_fields)
    return []


def _unwrap(annotation: Any) -> Any:
    """Optional[X] / list[X] / dict[str, X] → X, so a key path can walk through containers."""
    origin = get_origin(annotation)
    if origin is None:
        return annotation
    args = [a for a in get_args(annotation) if a is not type(None)]
    return _unwrap(args[-1]) if args else annotation
