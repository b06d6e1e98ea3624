"""Provenance of a bundle: an in-toto Statement v1 whose SLSA Provenance v1 predicate says what went in (the
source commit, deploy.yaml and the lock, every model's weights, code and data, the toolchain with versions),
on what class of host, and what the checks found, over subjects that are every other file of the bundle.

Deterministic: the same lock, record and source give the same bytes, except for the CI run it names
(`invocationId`, on GitHub Actions only). `check` compares a statement with the files it describes.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import re
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

from buildsys import __version__
from buildsys.release.bundle import PROVENANCE, SIGNATURE

if TYPE_CHECKING:
    from buildsys.release.bundle import Manifest
    from buildsys.config.load import LoadedConfig
    from buildsys.release.facts import TargetFacts

STATEMENT = "https://in-toto.io/Statement/v1"
SLSA_PROVENANCE = "https://slsa.dev/provenance/v1"
BUILD_TYPE = "https://modelbuild.dev/provenance/bundle/v1"  # an identifier: docs/releases.md defines it
LOCAL_BUILDER = "https://modelbuild.dev/builders/local"


def statement(cfg: "LoadedConfig", manifest: "Manifest", subjects: dict[str, str], facts: dict[str, "TargetFacts"],
              lock_path: Path, env: Mapping[str, str] = os.environ) -> dict[str, Any]:
    """The statement for a bundle whose files (but provenance and signature) have these sha256 `subjects`."""
    source = git_source(cfg.root)
    deploy = _relative(cfg.path, Path(source["root"])) if source else cfg.path.name
    external: dict[str, Any] = {"bundle": manifest.bundle, "version": manifest.version, "deployFile": deploy,
                                "targets": [a.target for a in manifest.artifacts]}
    deps: list[dict[str, Any]] = []
    if source:
        external["source"] = {k: source[k] for k in ("uri", "commit", "dirty")}
        deps.append({"uri": f"git+{source['uri']}" if source["uri"] else "git", "digest": {"gitCommit": source["commit"]},
                     "annotations": {"dirty": source["dirty"]}})
    for path in cfg.files:
        deps.append({"name": path.name, "uri": f"file:{_relative(path, cfg.root)}", "digest": {"sha256": sha256_file(path)}})
    if lock_path.is_file():
        deps.append({"name": lock_path.name, "uri": f"file:{lock_path.name}", "digest": {"sha256": sha256_file(lock_path)}})
    deps += _model_inputs(cfg, sorted({a.model for a in manifest.artifacts}))
    toolchain = {name: version for f in facts.values() for name, version in f.toolchain.items()}
    deps += [{"uri": f"pkg:pypi/{_purl_name(n)}@{v}", "name": n, "annotations": {"version": v}}
             for n, v in sorted(toolchain.items())]
    builder, run = _builder(env)
    times = sorted(str(c.built["at"]) for a in manifest.artifacts for c in a.chain if c.built.get("at"))
    metadata = {**({"startedOn": _rfc3339(times[0]), "finishedOn": _rfc3339(times[-1])} if times else {}), **run}
    return {
        "_type": STATEMENT,
        "subject": [{"name": name, "digest": {"sha256": digest}} for name, digest in sorted(subjects.items())],
        "predicateType": SLSA_PROVENANCE,
        "predicate": {
            "buildDefinition": {
                "buildType": BUILD_TYPE, "externalParameters": external,
                "internalParameters": {"modelbuild": __version__, "hostClass": host_class()},
                "resolvedDependencies": deps},
            "runDetails": {"builder": builder, "metadata": metadata,
                           "byproducts": [_check(facts[a.target]) for a in manifest.artifacts if a.target in facts]},
        },
    }


def dumps(value: dict[str, Any]) -> bytes:
    return (json.dumps(value, indent=2, sort_keys=True) + "\n").encode()


def check(data: bytes, sums: dict[str, tuple[int, str]], manifest: "Manifest | None") -> list[str]:
    """Every way a provenance statement disagrees with the files beside it (empty: it holds)."""
    try:
        stmt = json.loads(data)
        subjects = {s["name"]: s["digest"]["sha256"] for s in stmt["subject"]}
        external = stmt["predicate"]["buildDefinition"]["externalParameters"]
    except (ValueError, KeyError, TypeError) as exc:
        return [f"{PROVENANCE} is not an in-toto statement with sha256 subjects ({type(exc).__name__}: {exc})"]
    problems = []
    if stmt.get("_type") != STATEMENT or stmt.get("predicateType") != SLSA_PROVENANCE:
        problems.append(f"{PROVENANCE} is not an in-toto Statement v1 with a SLSA Provenance v1 predicate")
    files = {name: sha for name, (_size, sha) in sums.items() if name not in (PROVENANCE, SIGNATURE)}
    problems += [f"{n}: its sha256 is not the one the provenance records (the file or the provenance was modified)"
                 for n in sorted(files) if n in subjects and subjects[n] != files[n]]
    problems += [f"{n}: in the bundle but not a subject of the provenance" for n in sorted(set(files) - set(subjects))]
    problems += [f"{n}: a subject of the provenance but missing from the bundle" for n in sorted(set(subjects) - set(files))]
    if manifest is not None and (external.get("bundle"), external.get("version")) != (manifest.bundle, manifest.version):
        problems.append(f"the provenance describes {external.get('bundle')} {external.get('version')}, the manifest "
                        f"{manifest.bundle} {manifest.version}")
    return problems


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def git_source(root: Path) -> dict[str, Any] | None:
    """The commit checked out at `root` (None outside git): remote URL without credentials, and whether
    tracked files differ from it."""
    def git(*args: str) -> str | None:
        try:
            proc = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, timeout=20)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return proc.stdout.strip() if proc.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    top = git("rev-parse", "--show-toplevel")
    if not commit or not top:
        return None
    remote = git("remote", "get-url", "origin") or ""
    remote = re.sub(r"^(\w+://)[^/@]*@", r"\1", remote)  # https://user:token@host/… → https://host/…
    return {"uri": remote, "commit": commit, "dirty": bool(git("status", "--porcelain", "--untracked-files=no")),
            "root": top}


def host_class() -> dict[str, str]:
    """What kind of machine this is (never which one): OS, architecture, Python, accelerator."""
    from buildsys.storage.keys import nvidia_gpu

    gpu = nvidia_gpu()
    return {"os": sys.platform, "arch": platform.machine().lower() or "unknown",
            "python": platform.python_version(), "accelerator": f"nvidia {gpu.name}" if gpu else "cpu"}


def _model_inputs(cfg: "LoadedConfig", models: list[str]) -> list[dict[str, Any]]:
    """Every file each model's nodes read (code, weights, source files, data sets), with its sha256."""
    from buildsys.config.inputs import data_files, source_files

    out = []
    for model in models:
        roles = dict(source_files(cfg, model))
        for which in ("example", "calibration", "validation"):
            path = data_files(cfg, model, which)
            if path is not None:
                roles[f"data {which}"] = [path]
        for role, paths in sorted(roles.items()):
            for path in sorted(paths):
                out.append({"name": f"{model} {role}", "uri": f"file:{_relative(path, cfg.root)}",
                            "digest": {"sha256": sha256_file(path)}, "annotations": {"model": model, "role": role}})
    return out


def _check(facts: "TargetFacts") -> dict[str, Any]:
    """A target's check as a byproduct: its verdict and what it observed (digest: of that record)."""
    record = {"target": facts.target, "verdict": facts.verdict, "acceptance": facts.acceptance,
              "observed": facts.headline, "samples": facts.check.get("samples"), "runtime": facts.check.get("runtime"),
              "hostClass": facts.platform, "notRun": facts.check.get("not_run")}
    digest = hashlib.sha256(json.dumps(record, sort_keys=True, default=str).encode()).hexdigest()
    return {"name": f"verify:{facts.target}", "digest": {"sha256": digest}, "annotations": record}


def _builder(env: Mapping[str, str]) -> tuple[dict[str, Any], dict[str, str]]:
    """Who built: the GitHub Actions workflow (and its run), else a local modelbuild."""
    version = {"modelbuild": __version__, "python": platform.python_version()}
    if env.get("GITHUB_ACTIONS") == "true" and env.get("GITHUB_WORKFLOW_REF"):
        server = env.get("GITHUB_SERVER_URL", "https://github.com")
        run = {"invocationId": f"{server}/{env.get('GITHUB_REPOSITORY', '')}/actions/runs/{env.get('GITHUB_RUN_ID', '')}"
                               f"/attempts/{env.get('GITHUB_RUN_ATTEMPT', '1')}"}
        return {"id": f"{server}/{env['GITHUB_WORKFLOW_REF']}", "version": version}, run
    return {"id": LOCAL_BUILDER, "version": version}, {}


def _rfc3339(at: str) -> str:
    return at.replace("+00:00", "Z")


def _relative(path: Path, root: Path) -> str:
    try:
        return Path(path).resolve().relative_to(root.resolve()).as_posix()
    except ValueError:
        return Path(path).name


def _purl_name(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()  # PEP 503 normalization, as purl's pypi type wants
