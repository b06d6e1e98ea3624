"""Release bundles: verified artifacts + references + manifest.json in a reproducible archive,
and `bundle verify`, which checks every hash and re-runs the numeric checks a host can run.

Reproducible: entries sorted, mtimes fixed, owners cleared, gzip header without time or name, so
the same lock and artifacts always give the same bytes.
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
import zipfile
import zlib
from pathlib import Path, PurePosixPath
from typing import Any, Iterator

from pydantic import BaseModel, ConfigDict, Field

from buildsys import __version__
from buildsys.errors import ConfigError, ModelbuildError, did_you_mean
from buildsys.kinds import Bench, Check
from buildsys.verify import not_run_reasons

MANIFEST = "manifest.json"
MANIFEST_SCHEMA = 1
FIXED_MTIME = 315532800  # 1980-01-01: the earliest time a zip entry can carry


class BundleError(ModelbuildError):
    """A bundle cannot be made (a target failed or was not checked) or does not verify."""

    exit_code = 1


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


class Artifact(_M):
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
    toolchain: dict[str, str]
    acceptance: dict[str, Any] = Field(description="Resolved acceptance the check applied.")
    check: dict[str, Any] = Field(description="Observed check metrics: passed, not_run, outputs.")
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
    artifacts: list[Artifact]
    references: list[FileEntry]


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


def make(cfg: Any, lock: Any, dag: Any, name: str, out_dir: Path, cache: Any) -> Path:
    """Write NAME-VERSION.(tar.gz|zip) from the lock and the verified cache blobs; return its path."""
    bundle = resolve(cfg, name)
    entries: dict[str, bytes] = {}
    artifacts = []
    references: dict[str, str] = {}
    for target in bundle.targets:
        check = lock.nodes.get(Check.node_name(target), {})
        metrics = check.get("metrics", {})
        if not check or metrics.get("passed") is False:
            raise BundleError(f"target '{target}' has not passed its check", hint=f"run: modelbuild build {target}")
        not_run = not_run_reasons(metrics)
        if not_run and bundle.require_numeric:
            raise BundleError(f"target '{target}': {not_run[0]}, and bundle '{name}' sets require_numeric",
                              hint="build the bundle on a host that can run it")
        node = dag.nodes[dag.target_nodes[target]]
        model = cfg.project.models[node.model]
        if node.model not in references:
            references[node.model] = f"references/{node.model}.npz"
            ref_files = lock.nodes[f"{node.model}/reference"]["files"]
            entries[references[node.model]] = _blob(cache, ref_files[0][1], references[node.model])
        recorded = lock.targets[target]
        files = []
        for rel, digest, _size, _x in recorded["files"]:
            data = _blob(cache, digest, f"{target}/{rel}")
            entries[f"{target}/{rel}"] = data
            files.append(FileEntry(path=f"{target}/{rel}", sha256=hashlib.sha256(data).hexdigest(), size=len(data)))
        layout = json.loads(entries[f"{target}/layout.json"]) if f"{target}/layout.json" in entries else {}
        chain = _chain(lock, dag, node.name)
        from buildsys.formats import get_format

        artifacts.append(Artifact(
            target=target, model=node.model, format=node.format, precision=node.precision,
            main=f"{target}/{get_format(node.format).filename}", files=files,
            signature=model.model_dump(mode="json", include={"inputs", "outputs"}), layout=layout,
            sources=_sources(lock, chain), chain=chain,
            toolchain={k: v for c in chain for k, v in c.toolchain.items()},
            acceptance=check.get("components", {}).get("acceptance", {}), check=metrics,
            bench=lock.nodes.get(Bench.node_name(target), {}).get("metrics", {}),
            reference=references[node.model], model_config=model.model_dump(mode="json")))
    manifest = Manifest(bundle=name, version=bundle.version, description=bundle.description, modelbuild=__version__,
                        artifacts=artifacts,
                        references=[FileEntry(path=p, sha256=hashlib.sha256(entries[p]).hexdigest(), size=len(entries[p]))
                                    for p in sorted(references.values())])
    entries[MANIFEST] = (json.dumps(manifest.model_dump(mode="json", by_alias=True), indent=2, sort_keys=True) + "\n").encode()
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{name}-{bundle.version}.{bundle.archive}"
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(_tar_gz(entries) if bundle.archive == "tar.gz" else _zip(entries))
    tmp.replace(path)
    return path


def _blob(cache: Any, digest: str, what: str) -> bytes:
    """A blob's bytes, verified: the bundle is made from the cache, never from editable copies."""
    from buildsys.hashing import digest_bytes

    try:
        data = cache.blob(digest).read_bytes()
    except FileNotFoundError:
        data = b""
    if digest_bytes(data) != digest:
        raise BundleError(f"{what}: its cached copy is missing or corrupted", hint="run modelbuild build again")
    return data


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


def _tar_gz(entries: dict[str, bytes]) -> bytes:
    import gzip

    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for path in sorted(entries):
            info = tarfile.TarInfo(path)
            info.size, info.mtime, info.mode = len(entries[path]), FIXED_MTIME, 0o644
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            tar.addfile(info, io.BytesIO(entries[path]))
    out = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=out, mtime=0) as gz:
        gz.write(raw.getvalue())
    return out.getvalue()


def _zip(entries: dict[str, bytes]) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for path in sorted(entries):
            info = zipfile.ZipInfo(path, date_time=(1980, 1, 1, 0, 0, 0))
            info.external_attr = 0o644 << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, entries[path])
    return out.getvalue()


# --- verifying a bundle ------------------------------------------------------------------------------

def read_members(path: Path) -> Iterator[tuple[str, bytes]]:
    """Yield (name, bytes) of every regular file, rejecting anything that could escape the bundle.

    Names come back normalized ('./manifest.json' → 'manifest.json'), as `tar -czf x.tar.gz .` or a
    zip tool may write them.
    """
    if not path.is_file():
        raise BundleError(f"{path} does not exist")
    if zipfile.is_zipfile(path):
        try:
            with zipfile.ZipFile(path) as zf:
                for info in zf.infolist():
                    name = _safe_name(info.filename)
                    if info.is_dir() or not name:
                        continue
                    if (info.external_attr >> 16) & 0o170000 == 0o120000:
                        raise BundleError(f"bundle entry '{info.filename}' is a symbolic link; bundles hold only files")
                    yield name, zf.read(info)
        except (zipfile.BadZipFile, zipfile.LargeZipFile, NotImplementedError, EOFError, zlib.error) as exc:
            raise BundleError(f"{path.name} is not a readable zip archive ({exc})") from None
        return
    try:
        tar = tarfile.open(path, "r:*")
        with tar:
            for member in tar.getmembers():
                name = _safe_name(member.name)
                if member.issym() or member.islnk():
                    raise BundleError(f"bundle entry '{member.name}' is a link to '{member.linkname}'; bundles hold "
                                      "only files")
                if member.isdir() or not name:
                    continue
                if not member.isfile():
                    raise BundleError(f"bundle entry '{member.name}' is not a regular file")
                handle = tar.extractfile(member)
                yield name, handle.read() if handle else b""
    except (tarfile.TarError, EOFError, OSError, zlib.error) as exc:
        detail = str(exc).splitlines()[0] if str(exc).strip() else type(exc).__name__
        if detail.startswith("file could not be opened"):  # tarfile tried every compression
            detail = "it is neither a tar archive (gz, bz2, xz or plain) nor a zip file"
        raise BundleError(f"{path.name} is not a readable bundle archive: {detail}") from None


def _safe_name(name: str) -> str:
    """`name` without './' segments ('' for the archive's root), or BundleError if it could escape."""
    p = PurePosixPath(name.replace("\\", "/"))
    if p.is_absolute() or ".." in p.parts or name.startswith("\\") or (p.parts and ":" in p.parts[0]):
        raise BundleError(f"bundle entry '{name}' points outside the bundle (path traversal); refusing it")
    return p.as_posix() if p.parts else ""


def _members(path: Path) -> dict[str, bytes]:
    """Every file of the archive by normalized name. A bundle packed from its parent directory
    (every entry under one folder, `tar -czf x.tar.gz release/`) is read as if packed from inside."""
    members: dict[str, bytes] = {}
    for name, data in read_members(path):
        if name in members:
            raise BundleError(f"bundle entry '{name}' appears twice in {path.name}; a bundle holds each file once")
        members[name] = data
    tops = {name.split("/", 1)[0] for name in members}
    if MANIFEST not in members and len(tops) == 1 and f"{next(iter(tops))}/{MANIFEST}" in members:
        prefix = next(iter(tops)) + "/"
        members = {name[len(prefix):]: data for name, data in members.items()}
    return members


def unpack_and_check(path: Path, dest: Path) -> Manifest:
    """Extract a bundle into `dest` after validating names, and check every file's size and SHA-256."""
    members = _members(path)
    if MANIFEST not in members:
        raise BundleError(f"{path.name} has no {MANIFEST}")
    try:
        manifest = Manifest.model_validate(json.loads(members[MANIFEST]))
    except ValueError as exc:
        raise BundleError(f"{MANIFEST} in {path.name} is not a valid manifest: {str(exc).splitlines()[0]}") from None
    expected = {f.path: f for a in manifest.artifacts for f in a.files} | {f.path: f for f in manifest.references}
    for name, entry in sorted(expected.items()):
        if name not in members:
            raise BundleError(f"{name}: listed in the manifest but missing from the bundle")
        data = members[name]
        if len(data) != entry.size or hashlib.sha256(data).hexdigest() != entry.sha256:
            raise BundleError(f"{name}: sha256 does not match the manifest (the file was modified)")
    extra = sorted(set(members) - set(expected) - {MANIFEST})
    if extra:
        raise BundleError(f"{extra[0]}: in the bundle but not in the manifest")
    for name, data in members.items():
        out = dest / name
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_bytes(data)
    return manifest
