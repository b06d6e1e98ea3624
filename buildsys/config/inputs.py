"""The project files a node's key reads: the model's source, weights and factory code, and its data sets.

Each is checked to exist (a missing one is a ConfigError naming deploy.yaml's line); data files are
also checked against the signature from their .npy headers alone, so planning never imports numpy.
"""

from __future__ import annotations

import zipfile
from collections.abc import Mapping
from pathlib import Path

from buildsys.config.load import LoadedConfig
from buildsys.errors import ConfigError


def source_files(cfg: LoadedConfig, model_name: str) -> dict[str, list[Path]]:
    """The files whose contents define a model's source, by role ('code', 'weights', 'source file').

    Raises ConfigError (with the config line) when a file or the factory's module is missing.
    """
    model = cfg.project.models[model_name]
    src = model.source
    root = cfg.root
    key = ("models", model_name, "source")
    out: dict[str, list[Path]] = {}
    if src.factory:
        module, _, attr = src.factory.partition(":")
        module_file = _module_file(root, module)
        if module_file is None:
            raise ConfigError(f"factory module '{module}' not found under {root}", where=cfg.where(*key, "factory"),
                              field=f"models.{model_name}.source.factory",
                              hint="the module path is relative to the deploy file's directory, e.g. 'examples.digits.model:build'")
        if not _defines(module_file, attr):
            raise ConfigError(f"module '{module}' ({module_file.name}) defines no '{attr}'",
                              where=cfg.where(*key, "factory"), field=f"models.{model_name}.source.factory")
        code = code_files(root, module)
        for pattern in src.code:
            matched = sorted(p for p in root.glob(pattern) if p.is_file())
            if not matched:
                raise ConfigError(f"'{pattern}' matches no file", where=cfg.where(*key, "code"),
                                  field=f"models.{model_name}.source.code")
            code += matched
        out["code"] = list(dict.fromkeys(code))
        if src.weights:
            out["weights"] = [_existing(cfg, root / src.weights, (*key, "weights"), f"models.{model_name}.source.weights")]
    elif src.transformers:
        out["model directory"] = transformers_files(cfg, model_name)
    else:
        attr = next(k for k in ("torchscript", "exported", "onnx") if getattr(src, k))
        path = _existing(cfg, root / getattr(src, attr), (*key, attr), f"models.{model_name}.source.{attr}")
        out["source file"] = [path]
        if attr == "onnx" and path.with_name(path.name + ".data").exists():
            out["source file"].append(path.with_name(path.name + ".data"))
    return out


def transformers_files(cfg: LoadedConfig, model_name: str) -> list[Path]:
    """Every file of a model's `source.transformers` directory (config, weights, tokenizer, generation config),
    checked to be a directory with a config.json: what `from_pretrained` reads is what the key reads."""
    rel = cfg.project.models[model_name].source.transformers
    assert rel is not None
    where = cfg.where("models", model_name, "source", "transformers")
    field = f"models.{model_name}.source.transformers"
    path = cfg.root / rel
    if not path.is_dir():
        raise ConfigError(f"transformers directory '{rel}' does not exist", where=where, field=field,
                          hint="give the directory `save_pretrained` wrote, relative to the deploy file")
    if not (path / "config.json").is_file():
        raise ConfigError(f"'{rel}' has no config.json, so it is not a transformers model directory", where=where,
                          field=field, hint="give the directory `save_pretrained` wrote (config.json and the weights)")
    return sorted(p for p in path.rglob("*") if p.is_file())


def generation_files(cfg: LoadedConfig, model_name: str,
                     fields: tuple[str, ...] = ("prompts", "held_text", "tokenizer")) -> list[Path]:
    """The prompts, held text and tokenizer of a text-generation model (or those of `fields`), checked to exist."""
    gen = cfg.project.models[model_name].generation
    assert gen is not None  # only text-generation models evaluate on GENERATION
    key = ("models", model_name, "generation")
    out = []
    for field in fields:
        rel = getattr(gen, field)
        if rel is None:
            continue
        path = cfg.root / rel
        if path.is_dir():  # a tokenizer directory: every file in it ships and enters the key
            out += sorted(p for p in path.rglob("*") if p.is_file())
        else:
            out.append(_existing(cfg, path, (*key, field), f"models.{model_name}.generation.{field}"))
    return out


def data_files(cfg: LoadedConfig, model_name: str, which: str) -> Path | None:
    """The file behind data set `which`, checked to exist and to fit the signature (None: a callable)."""
    from buildsys.config import data

    model = cfg.project.models[model_name]
    spec = getattr(model.data, which)
    if spec is None or spec.path is None:
        return None
    key = ("models", model_name, "data", which)
    path = _existing(cfg, cfg.root / spec.path, key, f"models.{model_name}.data.{which}")
    try:
        shapes = data.peek_shapes(path)
    except (ValueError, OSError, KeyError, zipfile.BadZipFile) as exc:
        raise ConfigError(f"{spec.path} is not a readable .npz/.npy file: {exc}", where=cfg.where(*key),
                          field=f"models.{model_name}.data.{which}") from None
    for inp in model.inputs:
        shape = shapes.get("") if path.suffix == ".npy" else shapes.get(inp.name)
        if shape is None:
            raise ConfigError(f"{spec.path} has no array '{inp.name}' (has: {', '.join(sorted(shapes)) or 'none'})",
                              where=cfg.where(*key), field=f"models.{model_name}.data.{which}",
                              hint="name each array after the model input it feeds")
        problem = data.shape_problem(inp, shape)
        if problem:
            raise ConfigError(f"{spec.path}: {problem}", where=cfg.where(*key), field=f"models.{model_name}.data.{which}",
                              hint="fix the data or the model's inputs[].shape")
    problem = data.count_problem(shapes, [i.name for i in model.inputs] if path.suffix != ".npy" else [""], spec.labels)
    if problem:
        raise ConfigError(f"{spec.path}: {problem}", where=cfg.where(*key), field=f"models.{model_name}.data.{which}",
                          hint="give every input and the labels one entry per sample")
    return path


def _existing(cfg: LoadedConfig, path: Path, key: tuple[str | int, ...], field_name: str) -> Path:
    if not path.is_file():
        raise ConfigError(f"file '{path.relative_to(cfg.root) if path.is_relative_to(cfg.root) else path}' does not exist",
                          where=cfg.where(*key), field=field_name, hint="paths are relative to the deploy file")
    return path


def code_files(root: Path, module: str) -> list[Path]:
    """The factory's module and every module under `root` it imports, transitively (plus the
    packages' __init__ files, which run on import). Found by parsing, never by importing."""
    return _scan(root, module)[0]


def factory_distributions(root: Path, module: str) -> list[str]:
    """The installed distributions a factory's code imports or locates, transitively through the
    project's own modules: `import transformers`, and also a package named in a literal call of
    `find_spec`, `import_module`, `files` (importlib.resources), `version` or `distribution` (how a
    factory reads weights that a package ships). Their versions enter the key of the nodes that run
    the factory, so upgrading the package that ships the weights rebuilds what was made from them.
    Standard-library modules and modules no installed distribution provides are left out."""
    return _distributions(_scan(root, module)[1])


#: Calls whose first argument, a string literal, names a package the code reads from.
_LOCATING_CALLS = {"find_spec", "import_module", "files", "version", "distribution"}


def _scan(root: Path, module: str) -> tuple[list[Path], set[str]]:
    """(project modules, top-level names of other modules) that `module` imports, transitively."""
    import ast
    import sys

    found: dict[Path, None] = {}
    external: set[str] = set()
    todo = [module]
    while todo:
        name = todo.pop()
        parts = name.split(".")
        if _module_file(root, parts[0]) is None and not (root / parts[0]).is_dir():
            external.add(parts[0])  # not the project's own: an installed package (or the standard library)
            continue
        for i in range(1, len(parts) + 1):  # package __init__s along the dotted path run too
            path = _module_file(root, ".".join(parts[:i]))
            if path is None or path in found:
                continue
            found[path] = None
            try:
                tree = ast.parse(path.read_text(encoding="utf-8"))
            except (SyntaxError, UnicodeDecodeError):
                continue
            package = ".".join(parts[:i]) if path.name == "__init__.py" else ".".join(parts[: i - 1])
            for stmt in ast.walk(tree):
                if isinstance(stmt, ast.Import):
                    todo += [a.name for a in stmt.names]
                elif isinstance(stmt, ast.ImportFrom):
                    base = stmt.module or ""
                    if stmt.level:
                        anchor = package.split(".")[: len(package.split(".")) - (stmt.level - 1)] if package else []
                        base = ".".join([*anchor, base] if base else anchor)
                    todo += [base] + [f"{base}.{a.name}" for a in stmt.names if base]
                elif isinstance(stmt, ast.Call) and stmt.args and isinstance(stmt.args[0], ast.Constant) \
                        and isinstance(stmt.args[0].value, str) and _call_name(stmt.func) in _LOCATING_CALLS:
                    external.add(stmt.args[0].value.split(".")[0])
    external -= set(sys.stdlib_module_names) | {"__future__", ""}
    return sorted(found), external


def _call_name(func: object) -> str:
    import ast

    return func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""


def _distributions(names: set[str]) -> list[str]:
    """Distribution names providing these top-level modules (or named so), from package metadata."""
    from importlib import metadata

    out: set[str] = set()
    table: Mapping[str, list[str]] | None = None
    for name in sorted(names):
        try:  # most distributions are named like their module (silero_vad ↔ silero-vad): no scan needed
            out.add(metadata.distribution(name).metadata["Name"])
            continue
        except (metadata.PackageNotFoundError, ValueError):
            pass
        if table is None:  # PIL ↔ pillow, sklearn ↔ scikit-learn: read every installed distribution once
            table = metadata.packages_distributions()
        out.update(table.get(name, []))
    return sorted(out)


def _module_file(root: Path, module: str) -> Path | None:
    base = root.joinpath(*module.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _defines(module_file: Path, name: str) -> bool:
    """Whether a module's top level defines `name` (def, class, assignment or import), without importing it."""
    import ast

    try:
        tree = ast.parse(module_file.read_text(encoding="utf-8"))
    except SyntaxError:
        return True  # let the import report the syntax error with its line
    for stmt in tree.body:
        if isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and stmt.name == name:
            return True
        if isinstance(stmt, ast.Assign) and any(isinstance(t, ast.Name) and t.id == name for t in stmt.targets):
            return True
        if isinstance(stmt, (ast.Import, ast.ImportFrom)) and any((a.asname or a.name) == name for a in stmt.names):
            return True
    return False
