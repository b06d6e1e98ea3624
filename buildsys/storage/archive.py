"""Reproducible archives (tar.gz, zip) written and read as streams, names checked on the way in.

Writing: entries sorted, mtimes fixed, owners cleared, a gzip header without time or name, so the
same entries always give the same bytes; every file is copied in 1 MiB pieces, so memory stays flat
for archives of GB. Reading: one forward pass, every name validated and links refused before
anything is written, so nothing extracted can land outside its folder.
"""

from __future__ import annotations

import hashlib
import io
import tarfile
import zipfile
import zlib
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import IO

from buildsys.errors import ModelbuildError

FIXED_MTIME = 315532800  # 1980-01-01: the earliest time a zip entry can carry
CHUNK = 1 << 20  # files are hashed, archived and extracted in pieces this size


class BundleError(ModelbuildError):
    """A bundle cannot be made (a target failed or was not checked) or does not verify."""

    exit_code = 1


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


def chunks(f: IO[bytes]) -> Iterator[bytes]:
    while chunk := f.read(CHUNK):
        yield chunk


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
          tarfile.TarFile(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT, copybufsize=CHUNK) as tar):
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
                shutil.copyfileobj(src, dest, CHUNK)


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
                stream = tar.extractfile(member)
                yield name, stream if stream is not None else io.BytesIO()
                # a long archive's member list would otherwise grow with it; TarFile.members is the list
                # getmembers() returns (after reading the whole archive), undocumented and not in typeshed
                tar.members.clear()  # type: ignore[attr-defined]
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


def extract(path: Path, staging: Path) -> dict[str, tuple[int, str]]:
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
                for chunk in chunks(handle):
                    sha.update(chunk)
                    size += len(chunk)
                    f.write(chunk)
        except (FileExistsError, NotADirectoryError, IsADirectoryError):
            raise BundleError(f"bundle entry '{name}' clashes with another entry's path in {path.name}") from None
        except (tarfile.TarError, zipfile.BadZipFile, EOFError, zlib.error) as exc:  # raised while reading a member
            raise _unreadable(path, exc) from None
        sums[name] = (size, sha.hexdigest())
    return sums
