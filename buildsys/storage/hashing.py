"""Content digests (BLAKE3) of files and trees, and a stat cache so unchanged files are not re-read.

A tree digest is the digest of a canonical listing of (relative path, file digest, size, executable),
so a directory output (.mlpackage, SavedModel, two-file ONNX) has one digest like a file does.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import blake3

_CHUNK = 1 << 20
_BIG = 64 << 20  # from this size, 16 MiB reads hashed with BLAKE3's threads
_BIG_CHUNK = 16 << 20


def digest_bytes(data: bytes) -> str:
    return blake3.blake3(data).hexdigest()


def digest_file(path: Path) -> str:
    """BLAKE3 hex digest of a file's bytes, streamed: memory stays at one buffer whatever the size.

    Big files are read into one reused 16 MiB buffer that BLAKE3 hashes on all cores: as fast as
    `update_mmap` here, without mapping the whole file (mapped pages count in the process's RSS,
    so hashing a 4 GB weight file would have raised the build's peak by 4 GB).
    """
    if path.stat().st_size >= _BIG:
        h = blake3.blake3(max_threads=blake3.blake3.AUTO)
        buf = bytearray(_BIG_CHUNK)
        view = memoryview(buf)
        with open(path, "rb", buffering=0) as f:
            while n := f.readinto(buf):
                h.update(view[:n])
        return h.hexdigest()
    h = blake3.blake3()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def canonical_json(value: Any) -> str:
    """JSON with sorted keys and no whitespace: the same value always gives the same bytes."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


def digest_json(value: Any) -> str:
    return digest_bytes(canonical_json(value).encode())


@dataclass(frozen=True)
class TreeEntry:
    path: str  # posix, relative to the tree root
    digest: str
    size: int
    executable: bool = False

    def as_list(self) -> list[Any]:
        return [self.path, self.digest, self.size, self.executable]


def tree_digest(entries: list[TreeEntry]) -> str:
    return digest_json([e.as_list() for e in sorted(entries, key=lambda e: e.path)])


class StatCache:
    """Maps a file's (inode, size, mtime_ns) to its digest, persisted as JSON under the cache dir.

    A file whose stat fingerprint is unchanged is trusted not to have changed (ninja, git and DVC
    make the same bet); anything else is re-hashed. Keys are absolute paths.
    """

    def __init__(self, path: Path | None):
        self.path = path
        self._entries: dict[str, list[Any]] = {}
        self._dirty = False
        if path is not None:
            try:
                self._entries = json.loads(path.read_text())
            except (FileNotFoundError, ValueError):
                self._entries = {}

    def digest(self, path: Path) -> str:
        """Digest of `path` (a file), re-hashing only when its stat fingerprint changed."""
        st = path.stat()
        fingerprint = [st.st_ino, st.st_size, st.st_mtime_ns]
        key = str(path.absolute())
        hit = self._entries.get(key)
        if hit is not None and hit[:3] == fingerprint:
            return hit[3]
        value = digest_file(path)
        self._entries[key] = fingerprint + [value]
        self._dirty = True
        return value

    def tree(self, root: Path) -> tuple[str, list[TreeEntry]]:
        """Digest and entries of a file or directory (a lone file is a one-entry tree)."""
        entries = []
        if root.is_file():
            files = [root]
            base = root.parent
        else:
            files = sorted(p for p in root.rglob("*") if p.is_file())
            base = root
        for f in files:
            entries.append(TreeEntry(f.relative_to(base).as_posix(), self.digest(f), f.stat().st_size,
                                     bool(f.stat().st_mode & 0o111)))
        return tree_digest(entries), entries

    def record(self, path: Path, digest: str) -> None:
        """Remember the digest of a file this process just wrote from known bytes."""
        st = path.stat()
        self._entries[str(path.absolute())] = [st.st_ino, st.st_size, st.st_mtime_ns, digest]
        self._dirty = True

    def forget(self, path: Path) -> None:
        if self._entries.pop(str(path.absolute()), None) is not None:
            self._dirty = True

    def save(self) -> None:
        """Write the cache atomically if it changed (a lost update only costs a re-hash)."""
        if not self._dirty or self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(self._entries, separators=(",", ":")))
        os.replace(tmp, self.path)
        self._dirty = False
