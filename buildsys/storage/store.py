"""The local store: content-addressed blobs plus an action cache (key → outputs and metrics).

Layout under the cache directory (default `<project>/.modelbuild`):
  cas/ab/cdef…   read-only blobs named by their BLAKE3 digest
  ac/ab/cdef….json  action entries: {"tree": digest, "files": [[path, digest, size, x]], "metrics": …}
  tmp/           scratch directories for steps (same filesystem, so publishing is a rename)

Publish order is blobs → action entry → lock, each by atomic rename, so a crash at any point leaves
either nothing or a complete, verifiable result. A blob whose bytes no longer match its name is
deleted and treated as a miss.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterable

from buildsys.storage.hashing import StatCache, TreeEntry, digest_file, tree_digest


class CorruptBlob(Exception):
    """A stored blob does not match its digest (it was deleted; rebuild the node)."""


class Store:
    """Local CAS + action cache. The remote cache (buildsys.storage.remote) keeps the same layout on fsspec
    storage and pulls into this store (verified blobs, then the action entry)."""

    def __init__(self, cache_dir: Path, stat: StatCache):
        self.dir = cache_dir
        self.stat = stat
        self.cas = cache_dir / "cas"
        self.ac = cache_dir / "ac"
        self.tmp = cache_dir / "tmp"

    # --- blobs ---------------------------------------------------------------------------
    def blob(self, digest: str) -> Path:
        return self.cas / digest[:2] / digest[2:]

    def has_files(self, files: Iterable[list[Any]]) -> bool:
        """Whether every blob of a tree listing is present (existence only; restore verifies)."""
        return all(self.blob(f[1]).exists() for f in files)

    def put_tree(self, src: Path) -> tuple[str, list[TreeEntry]]:
        """Move every file under `src` into the CAS; return the tree digest and listing."""
        entries = []
        for path in sorted(p for p in src.rglob("*") if p.is_file() or p.is_symlink()):
            if path.is_symlink():
                raise CorruptBlob(f"step output {path.relative_to(src)} is a symlink; outputs must be plain files")
            digest = digest_file(path)
            st = path.stat()
            entries.append(TreeEntry(path.relative_to(src).as_posix(), digest, st.st_size, bool(st.st_mode & 0o111)))
            dest = self.blob(digest)
            if dest.exists():
                path.unlink()
                continue
            dest.parent.mkdir(parents=True, exist_ok=True)
            os.chmod(path, 0o444)
            os.replace(path, dest)
        return tree_digest(entries), entries

    def checkout(self, files: list[list[Any]], dest: Path, *, link: bool) -> None:
        """Recreate a tree at `dest` from blobs, verifying each one.

        link=True hard-links (cheap inputs for steps, which must not write to them); link=False
        copies (materialized artifacts a user may edit without touching the CAS).
        """
        dest.mkdir(parents=True, exist_ok=True)
        for rel, digest, _size, executable in files:
            blob = self.blob(digest)
            if not blob.exists():
                raise CorruptBlob(f"blob {digest[:12]} for {rel} is missing from the cache")
            if self.stat.digest(blob) != digest:
                blob.unlink()
                self.stat.forget(blob)
                raise CorruptBlob(f"blob {digest[:12]} for {rel} was corrupted; it has been removed")
            out = dest / rel
            out.parent.mkdir(parents=True, exist_ok=True)
            if link:
                try:
                    os.link(blob, out)
                    continue
                except OSError:
                    pass  # another filesystem: fall back to a copy
            shutil.copyfile(blob, out)
            os.chmod(out, 0o755 if executable else 0o644)

    # --- action cache --------------------------------------------------------------------
    def _action_path(self, key: str) -> Path:
        return self.ac / key[:2] / f"{key[2:]}.json"

    def get_action(self, key: str) -> dict[str, Any] | None:
        """The cached result for `key` if present and all its blobs still exist."""
        try:
            entry = json.loads(self._action_path(key).read_text())
        except (FileNotFoundError, ValueError):
            return None
        return entry if self.has_files(entry.get("files", [])) else None

    def put_action(self, key: str, entry: dict[str, Any]) -> None:
        path = self._action_path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, json.dumps(entry, sort_keys=True, indent=1))

    # --- scratch and garbage ------------------------------------------------------------------
    def scratch(self, label: str) -> Path:
        """A fresh private directory on the store's filesystem."""
        self.tmp.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(prefix=label.replace("/", "_").replace(":", "_") + "-", dir=self.tmp))

    def gc(self, keep_keys: set[str], keep_blobs: set[str]) -> tuple[int, int, int]:
        """Delete action entries and blobs not kept; return (entries, blobs, bytes) removed."""
        entries = blobs = freed = 0
        for path in self.ac.glob("*/*.json") if self.ac.exists() else []:
            key = path.parent.name + path.stem
            if key not in keep_keys:
                path.unlink()
                entries += 1
        for path in self.cas.glob("*/*") if self.cas.exists() else []:
            digest = path.parent.name + path.name
            if digest not in keep_blobs:
                freed += path.stat().st_size
                path.unlink()
                blobs += 1
        shutil.rmtree(self.tmp, ignore_errors=True)
        return entries, blobs, freed


def atomic_write(path: Path, text: str) -> None:
    """Write `text` to `path` so readers see the old or the new file, never a torn one."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
