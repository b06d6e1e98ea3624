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
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import IO, Any

from pydantic import BaseModel, ConfigDict, Field

from buildsys import __version__
from buildsys.errors import ConfigError, ModelbuildError, did_you_mean
from buildsys.kinds import Bench, Check
from buildsys.status import CaveatKind, target_status
from buildsys.verify import not_run_reasons

MANIFEST = "manifest.json"
#: Files about the other files that no manifest can list (buildsys.release): provenance, signature.
PROVENANCE, SIGNATURE = "provenance.intoto.json", "bundle.sig"
MANIFEST_SCHEMA = 2  # 2: documents (model cards, SBOM); manifests of schema 1 read the same
FIXED_MTIME = 315532800  # 1980-01-01: the earliest time a zip entry can carry
_CHUNK = 1 << 20  # files are hashed, archived and extracted in pieces this size


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


class DroppedRoute(_M):
    route: list[str] = Field(description="Formats from the model's source, as in `route`.")
    node: str = Field(description="The node the route failed at: a conversion, or the target's check.")
    reason: str = Field(description="The conversion error, or the first metric that missed its tolerance.")


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
    route: list[str] = Field(default_factory=list, description="The route that made the artifact: formats from "
                             "the model's source to it (`tflite-int8 (dynamic)`: a step's alternative options).")
    dropped_routes: list[DroppedRoute] = Field(default_factory=list, description="Routes tried before it, in order, "
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
    artifacts: list[Artifact]
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
        check = lock.nodes.get(Check.node_name(target), {})
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
        layout = json.loads(Path(layout_blob).read_bytes()) if layout_blob is not None else {}
        chain = _chain(lock, dag, node.name)
        from buildsys.formats import get_format

        artifacts.append(Artifact(
            target=target, model=node.model, format=node.format, precision=node.precision,
            main=f"{target}/{get_format(node.format).filename}", files=files,
            signature=model.model_dump(mode="json", include={"inputs", "outputs"}), layout=layout,
            sources=_sources(lock, chain), chain=chain, route=recorded.get("route", []),
            dropped_routes=[DroppedRoute(route=r["route"], node=r["node"], reason=r["reason"])
                            for r in lock.routes.get(target, {}).get("dropped", [])],
            toolchain={k: v for c in chain for k, v in c.toolchain.items()},
            acceptance=check.get("components", {}).get("acceptance", {}), check=metrics, status=status.as_dict(),
            bench=lock.nodes.get(Bench.node_name(target), {}).get("metrics", {}),
            reference=references[node.model], model_config=model.model_dump(mode="json")))
    manifest = Manifest(bundle=name, version=bundle.version, description=bundle.description, modelbuild=__version__,
                        artifacts=artifacts, references=[sums[p] for p in sorted(references.values())])
    return manifest, entries


def manifest_bytes(manifest: Manifest) -> bytes:
    return (json.dumps(manifest.model_dump(mode="json", by_alias=True), indent=2, sort_keys=True) + "\n").encode()


def write_archive(entries: dict[str, Path | bytes], path: Path, archive: str) -> Path:
    """Write `entries` to `path` atomically, streaming every file: memory stays flat for bundles of GB."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with open(tmp, "wb") as out:
            (_tar_gz if archive == "tar.gz" else _zip)(entries, out)
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def _blob(cache: Any, digest: str, what: str) -> tuple[Path, FileEntry]:
    """A blob's path and manifest entry, verified in one streaming read: the bundle is made from the
    cache, never from editable copies."""
    import blake3

    blob = Path(cache.blob(digest))
    check, sha, size = blake3.blake3(), hashlib.sha256(), 0
    try:
        with open(blob, "rb") as f:
            for chunk in _chunks(f):
                check.update(chunk)
                sha.update(chunk)
                size += len(chunk)
    except FileNotFoundError:
        pass
    if check.hexdigest() != digest:
        raise BundleError(f"{what}: its cached copy is missing or corrupted", hint="run modelbuild build again")
    return blob, FileEntry(path=what, sha256=sha.hexdigest(), size=size)


def _chunks(f: IO[bytes]) -> Iterator[bytes]:
    while chunk := f.read(_CHUNK):
        yield chunk


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


def _open(source: Path | bytes) -> IO[bytes]:
    return io.BytesIO(source) if isinstance(source, bytes) else open(source, "rb")


def _size(source: Path | bytes) -> int:
    return len(source) if isinstance(source, bytes) else source.stat().st_size


def _tar_gz(entries: dict[str, Path | bytes], out: IO[bytes]) -> None:
    """A PAX tar in a gzip stream with a fixed header (no name, mtime 0), written as it goes.

    Byte-for-byte the archive earlier versions built in memory: deflate's output does not depend on
    how its input is cut into writes.
    """
    import gzip

    with (gzip.GzipFile(filename="", mode="wb", fileobj=out, mtime=0) as gz,
          tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT, copybufsize=_CHUNK) as tar):
        for path in sorted(entries):
            info = tarfile.TarInfo(path)
            info.size, info.mtime, info.mode = _size(entries[path]), FIXED_MTIME, 0o644
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            with _open(entries[path]) as src:
                tar.addfile(info, src)


def _zip(entries: dict[str, Path | bytes], out: IO[bytes]) -> None:
    """A deflated zip with fixed dates, each member streamed (zip64 where a member needs it)."""
    import shutil

    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for path in sorted(entries):
            info = zipfile.ZipInfo(path, date_time=(1980, 1, 1, 0, 0, 0))
            info.external_attr = 0o644 << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            info.file_size = _size(entries[path])  # what writestr sets: same bytes, zip64 when needed
            with _open(entries[path]) as src, zf.open(info, "w") as dest:
                shutil.copyfileobj(src, dest, _CHUNK)


# --- verifying a bundle ------------------------------------------------------------------------------

def read_members(path: Path) -> Iterator[tuple[str, IO[bytes]]]:
    """Yield (name, stream) of every regular file in archive order, rejecting anything that could
    escape the bundle. Each stream is valid until the next one is asked for: read it then.

    Names come back normalized ('./manifest.json' → 'manifest.json'), as `tar -czf x.tar.gz .` or a
    zip tool may write them. The archive is read front to back once, never whole into memory.
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
                    with zf.open(info) as handle:
                        yield name, handle
        except (zipfile.BadZipFile, zipfile.LargeZipFile, NotImplementedError, EOFError, zlib.error) as exc:
            raise BundleError(f"{path.name} is not a readable zip archive ({exc})") from None
        return
    try:
        with tarfile.open(path, "r:*") as tar:
            for member in tar:  # one forward pass: getmembers() would decompress everything twice
                name = _safe_name(member.name)
                if member.issym() or member.islnk():
                    raise BundleError(f"bundle entry '{member.name}' is a link to '{member.linkname}'; bundles hold "
                                      "only files")
                if member.isdir() or not name:
                    continue
                if not member.isfile():
                    raise BundleError(f"bundle entry '{member.name}' is not a regular file")
                handle = tar.extractfile(member)
                yield name, handle if handle is not None else io.BytesIO()
                tar.members.clear()  # a long archive's member list would otherwise grow with it
    except (tarfile.TarError, EOFError, OSError, zlib.error) as exc:
        raise _unreadable(path, exc) from None


def _unreadable(path: Path, exc: BaseException) -> BundleError:
    detail = str(exc).splitlines()[0] if str(exc).strip() else type(exc).__name__
    if detail.startswith("file could not be opened"):  # tarfile tried every compression
        detail = "it is neither a tar archive (gz, bz2, xz or plain) nor a zip file"
    return BundleError(f"{path.name} is not a readable bundle archive: {detail}")


def _safe_name(name: str) -> str:
    """`name` without './' segments ('' for the archive's root), or BundleError if it could escape."""
    p = PurePosixPath(name.replace("\\", "/"))
    if p.is_absolute() or ".." in p.parts or name.startswith("\\") or (p.parts and ":" in p.parts[0]):
        raise BundleError(f"bundle entry '{name}' points outside the bundle (path traversal); refusing it")
    return p.as_posix() if p.parts else ""


def _extract(path: Path, staging: Path) -> dict[str, tuple[int, str]]:
    """Stream every file of the archive under `staging`, hashing as it goes: name → (size, sha256).

    Names were validated and links refused, so nothing written can land outside `staging`.
    """
    sums: dict[str, tuple[int, str]] = {}
    for name, handle in read_members(path):
        if name in sums:
            raise BundleError(f"bundle entry '{name}' appears twice in {path.name}; a bundle holds each file once")
        out = staging / name
        sha, size = hashlib.sha256(), 0
        try:
            out.parent.mkdir(parents=True, exist_ok=True)
            with open(out, "xb") as f:
                for chunk in _chunks(handle):
                    sha.update(chunk)
                    size += len(chunk)
                    f.write(chunk)
        except (FileExistsError, NotADirectoryError, IsADirectoryError):
            raise BundleError(f"bundle entry '{name}' clashes with another entry's path in {path.name}") from None
        except (tarfile.TarError, zipfile.BadZipFile, EOFError, zlib.error) as exc:  # raised while reading a member
            raise _unreadable(path, exc) from None
        sums[name] = (size, sha.hexdigest())
    return sums


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
        sums = _extract(path, staging)
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
