"""Release bundles: verified artifacts + references + manifest.json in a reproducible archive
(`archive.py`), and the file checks of `bundle verify` (release/verify.py re-runs the numeric checks
a host can run): the same lock and artifacts always give the same bytes.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from buildsys import __version__
from buildsys.storage.archive import BundleError, chunks, extract
from buildsys.errors import ConfigError, did_you_mean
from buildsys.planning.kinds import BenchKind, CheckKind
from buildsys.status import CaveatKind, target_status
from buildsys.nodes.verify import not_run_reasons

MANIFEST = "manifest.json"
#: Files about the other files that no manifest can list (buildsys.release): provenance, signature.
PROVENANCE, SIGNATURE = "provenance.intoto.json", "bundle.sig"
MANIFEST_SCHEMA = 2  # 2: documents (model cards, SBOM); manifests of schema 1 read the same

# --- the manifest, as a schema ---------------------------------------------------------------

class _M(BaseModel):
    model_config = ConfigDict(extra="forbid")


class FileEntry(_M):
    path: str = Field(description="Path inside the archive (POSIX).")
    sha256: str = Field(description="SHA-256 of the file's bytes.")
    size: int = Field(description="Bytes.")


class ChainStep(_M):
    node: str = Field(description="Build node, e.g. digits/onnx.")
    step: str = Field(description="Registered step that made it.")
    step_version: int
    options: dict[str, Any] = Field(description="Step options with defaults filled in.")
    key: str = Field(description="Action key (BLAKE3) of the node.")
    toolchain: dict[str, str] = Field(description="Package versions that entered the key.")
    built: dict[str, Any] = Field(default_factory=dict, description="host, at (UTC), seconds.")


class ManifestRoute(_M):
    route: list[str] = Field(description="Formats from the model's source, as in `route`.")
    node: str = Field(description="The node the route failed at: a conversion, or the target's check.")
    reason: str = Field(description="The conversion error, or the first metric that missed its tolerance.")


class BundledArtifact(_M):
    target: str
    model: str
    format: str
    precision: str
    main: str = Field(description="The artifact's main file or directory inside the archive.")
    files: list[FileEntry]
    signature: dict[str, Any] = Field(description="Model inputs and outputs (names, shapes, dtypes, layout).")
    layout: dict[str, Any] = Field(default_factory=dict, description="Input layouts of the artifact, when they differ from the signature.")
    sources: dict[str, str] = Field(description="Digests (BLAKE3) of the model's code, weights, source files and data.")
    chain: list[ChainStep] = Field(description="Steps from the source to this artifact, in order.")
    route: list[str] = Field(default_factory=list, description="The route that made the artifact: formats from "
                             "the model's source to it (`tflite-int8 (dynamic)`: a step's alternative options).")
    dropped_routes: list[ManifestRoute] = Field(default_factory=list, description="Routes tried before it, in order, "
                                               "each with the node it failed at and why.")
    toolchain: dict[str, str]
    acceptance: dict[str, Any] = Field(description="Resolved acceptance the check applied.")
    check: dict[str, Any] = Field(description="Observed check metrics: passed, not_run, outputs.")
    status: dict[str, Any] = Field(default_factory=dict, description="The target's status as every output words "
                                   "it: `status` (words), `verdict`, and `caveats` (parts not run, lesser paths taken, "
                                   "a route fallback), each with kind, what, why and source.")
    bench: dict[str, Any] = Field(default_factory=dict, description="Latency measured by `modelbuild bench` "
                                  "(p50/p95, throughput, peak memory, eager side by side), when measured.")
    reference: str = Field(description="Archive path of the reference inputs/outputs used by the check.")
    model_config_: dict[str, Any] = Field(alias="model_config", description="The model's deploy.yaml entry.")


class Manifest(_M):
    schema_version: int = Field(default=MANIFEST_SCHEMA, alias="schema")
    bundle: str
    version: str
    description: str = ""
    modelbuild: str
    artifacts: list[BundledArtifact]
    references: list[FileEntry]
    documents: list[FileEntry] = Field(default_factory=list, description="Model cards and the SBOM (docs/releases.md).")


def manifest_schema() -> dict[str, Any]:
    return Manifest.model_json_schema(by_alias=True)


# --- making a bundle -------------------------------------------------------------------------------

def resolve(cfg: Any, name: str) -> Any:
    """The bundle config `name` (config.load has already checked that its targets exist)."""
    bundles = cfg.project.bundles
    if name not in bundles:
        raise ConfigError(f"unknown bundle '{name}'", hint=did_you_mean(name, bundles)
                          or f"bundles in {cfg.path.name}: {', '.join(bundles) or 'none'}")
    return bundles[name]


def collect(cfg: Any, lock: Any, dag: Any, name: str, cache: Any) -> tuple[Manifest, dict[str, Path | bytes]]:
    """Bundle `name`'s manifest and files (archive path → verified CAS blob); no manifest.json yet."""
    bundle = resolve(cfg, name)
    entries: dict[str, Path | bytes] = {}  # archive path → CAS blob (or, for the manifest, bytes)
    sums: dict[str, FileEntry] = {}
    artifacts = []
    references: dict[str, str] = {}
    for target in bundle.targets:
        check = lock.nodes.get(CheckKind.node_name(target), {})
        metrics = check.get("metrics", {})
        if not check or metrics.get("passed") is False:
            raise BundleError(f"target '{target}' has not passed its check", hint=f"run: modelbuild build {target}")
        status = target_status(check, delivered=target in lock.targets, route=lock.targets.get(target, {}).get("route"),
                               dropped=lock.routes.get(target, {}).get("dropped", []))
        short = not_run_reasons(metrics) + [str(c) for c in status.caveats if c.strict and c.kind is not CaveatKind.NOT_RUN]
        if short and bundle.require_numeric:
            raise BundleError(f"target '{target}': {short[0]}, and bundle '{name}' sets require_numeric",
                              hint="build the bundle on a host that can run every check in full")
        node = dag.nodes[dag.target_nodes[target]]
        model = cfg.project.models[node.model]
        if node.model not in references:
            ref = references[node.model] = f"references/{node.model}.npz"
            entries[ref], sums[ref] = _blob(cache, lock.nodes[f"{node.model}/reference"]["files"][0][1], ref)
        recorded = lock.targets[target]
        files = []
        for rel, digest, _size, _x in recorded["files"]:
            entries[f"{target}/{rel}"], entry = _blob(cache, digest, f"{target}/{rel}")
            files.append(entry)
        layout_blob = entries.get(f"{target}/layout.json")
        assert not isinstance(layout_blob, bytes)  # a target's files are cache blobs (_blob above): paths
        layout = json.loads(Path(layout_blob).read_bytes()) if layout_blob is not None else {}
        chain = _chain(lock, dag, node.name)
        from buildsys.formats import get_format

        artifacts.append(BundledArtifact(
            target=target, model=node.model, format=node.format, precision=node.precision,
            main=f"{target}/{get_format(node.format).filename}", files=files,
            signature=model.model_dump(mode="json", include={"inputs", "outputs"}), layout=layout,
            sources=_sources(lock, chain), chain=chain, route=recorded.get("route", []),
            dropped_routes=[ManifestRoute(route=r["route"], node=r["node"], reason=r["reason"])
                            for r in lock.routes.get(target, {}).get("dropped", [])],
            toolchain={k: v for c in chain for k, v in c.toolchain.items()},
            acceptance=check.get("components", {}).get("acceptance", {}), check=metrics, status=status.as_dict(),
            bench=lock.nodes.get(BenchKind.node_name(target), {}).get("metrics", {}),
            reference=references[node.model], model_config=model.model_dump(mode="json")))
    manifest = Manifest(bundle=name, version=bundle.version, description=bundle.description, modelbuild=__version__,
                        artifacts=artifacts, references=[sums[p] for p in sorted(references.values())])
    return manifest, entries


def manifest_bytes(manifest: Manifest) -> bytes:
    return (json.dumps(manifest.model_dump(mode="json", by_alias=True), indent=2, sort_keys=True) + "\n").encode()


def _blob(cache: Any, digest: str, what: str) -> tuple[Path, FileEntry]:
    """A blob's path and manifest entry, verified in one streaming read: the bundle is made from the
    cache, never from editable copies."""
    import blake3

    blob = Path(cache.blob(digest))
    check, sha, size = blake3.blake3(), hashlib.sha256(), 0
    try:
        with open(blob, "rb") as f:
            for chunk in chunks(f):
                check.update(chunk)
                sha.update(chunk)
                size += len(chunk)
    except FileNotFoundError:
        pass
    if check.hexdigest() != digest:
        raise BundleError(f"{what}: its cached copy is missing or corrupted", hint="run modelbuild build again")
    return blob, FileEntry(path=what, sha256=sha.hexdigest(), size=size)


def _chain(lock: Any, dag: Any, name: str) -> list[ChainStep]:
    chain = []
    while name:
        entry = lock.nodes[name]
        comp = entry["components"]
        chain.append(ChainStep(node=name, step=comp["step"], step_version=comp["step_version"], options=comp["options"],
                               key=entry["key"], toolchain=comp["toolchain"], built=entry.get("built", {})))
        deps = dag.nodes[name].deps
        name = deps[0] if deps else ""
    return chain[::-1]


def _sources(lock: Any, chain: list[ChainStep]) -> dict[str, str]:
    first = lock.nodes[chain[0].node]["components"]["inputs"]
    return {role: digest for role, digest in sorted(first.items()) if not role.startswith("upstream ")}


# --- verifying a bundle ------------------------------------------------------------------------------


def unpack_and_check(path: Path, dest: Path) -> Manifest:
    """Extract a bundle into `dest` (`unpack`), then check every file's size and SHA-256 against its manifest."""
    return check_files(path, dest, unpack(path, dest))


def unpack(path: Path, dest: Path) -> dict[str, tuple[int, str]]:
    """Extract a bundle into an absent or empty `dest`, names validated, streaming: each file's (size, sha256).
    A bundle packed from its parent (`tar -czf x.tar.gz release/`) is read as if packed from inside."""
    import shutil

    staging = dest.with_name(f".{dest.name}.partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        sums = extract(path, staging)
        root = staging
        tops = {name.split("/", 1)[0] for name in sums}
        if MANIFEST not in sums and len(tops) == 1 and f"{next(iter(tops))}/{MANIFEST}" in sums:
            prefix = next(iter(tops))
            root = staging / prefix
            sums = {name[len(prefix) + 1:]: value for name, value in sums.items()}
        if dest.exists():
            dest.rmdir()  # only an empty one: OSError otherwise, rather than mixing old files in
        root.rename(dest)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return sums


def check_files(path: Path, root: Path, sums: dict[str, tuple[int, str]]) -> Manifest:
    """The manifest under `root`, after checking every file it lists against `sums` and no more."""
    if MANIFEST not in sums:
        raise BundleError(f"{path.name} has no {MANIFEST}")
    try:
        manifest = Manifest.model_validate(json.loads((root / MANIFEST).read_bytes()))
    except ValueError as exc:
        raise BundleError(f"{MANIFEST} in {path.name} is not a valid manifest: {str(exc).splitlines()[0]}") from None
    expected = {f.path: f for a in manifest.artifacts for f in a.files} | {f.path: f for f in manifest.references} \
        | {f.path: f for f in manifest.documents}
    for name, entry in sorted(expected.items()):
        if name not in sums:
            raise BundleError(f"{name}: listed in the manifest but missing from the bundle")
        if sums[name] != (entry.size, entry.sha256):
            raise BundleError(f"{name}: sha256 does not match the manifest (the file was modified)")
    extra = sorted(set(sums) - set(expected) - {MANIFEST, PROVENANCE, SIGNATURE})
    if extra:
        raise BundleError(f"{extra[0]}: in the bundle but not in the manifest")
    return manifest
