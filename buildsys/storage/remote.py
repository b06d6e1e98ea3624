"""The remote cache: the local store's layout on any fsspec storage, shared by CI and laptops.

Layout under the remote URL (s3://bucket/prefix, file:///mnt/shared, gs://…):
  cas/ab/abcdef…        immutable blobs named by their full BLAKE3 digest
  ac/ab/abcdef….json    action entries, {"tree", "files", "metrics", "built"}, as in the local store

Guarantees, the same as Bazel's remote cache and DVC remotes give:
- An action entry is written only after every blob it lists is present, so a reader that finds an
  entry finds its blobs (a crashed pusher leaves unreferenced blobs, never a dangling entry).
- Objects appear whole: object stores commit a PUT at once, and on a filesystem remote every write
  goes to a temporary name first and is renamed. Two builders racing on one key each write a
  complete entry; the last rename (or PUT) wins, and either one is valid for that key.
- Nothing pulled is trusted: every blob is hashed while it streams to disk and must match its
  digest and size, else the node is a miss (built locally) and the bad bytes never reach the local
  store. A blob found bad is re-uploaded by the next push of that node, which repairs the remote.
- The remote is optional at run time: if it cannot be reached the build warns once and goes on
  locally. Nothing here talks to it until a stale node asks (a no-op plan never does).

Settings: MODELBUILD_REMOTE (a URL; "" or "off" disables a configured one) over deploy.yaml's
`cache.remote`; MODELBUILD_REMOTE_READONLY=1 over `cache.remote_readonly` (pull, never push: for CI
consumers and untrusted branches). Credentials and endpoints come from the storage's own settings
(for S3: AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY/AWS_PROFILE, AWS_ENDPOINT_URL, AWS_DEFAULT_REGION).
"""

from __future__ import annotations

import json
import os
import re
import sys
import threading
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

from buildsys.errors import ModelbuildError, install_command

if TYPE_CHECKING:
    from buildsys.planning.node import Node
    from buildsys.storage.store import Store

ENV_URL = "MODELBUILD_REMOTE"
ENV_READONLY = "MODELBUILD_REMOTE_READONLY"
_CHUNK = 1 << 20
_HEX = re.compile(r"^[0-9a-f]{64}$")
_OFF = ("", "off", "none", "0")


class RemoteError(ModelbuildError):
    """The remote cache is misconfigured or unreachable (only `modelbuild cache` commands raise it)."""


def settings(config: Any) -> tuple[str, bool] | None:
    """(url, read-only) from the environment over deploy.yaml's `cache:` section; None: no remote."""
    cache = getattr(config.project, "cache", None)
    url = os.environ.get(ENV_URL)
    if url is None:
        url = getattr(cache, "remote", None)
    elif url.strip().lower() in _OFF:
        url = None
    if not url:
        return None
    flag = os.environ.get(ENV_READONLY)
    readonly = bool(getattr(cache, "remote_readonly", False)) if flag is None else flag.strip().lower() not in _OFF + ("false", "no")
    return url.strip(), readonly


def remote_for(config: Any) -> Remote | None:
    """The project's remote cache, or None. Cheap: no import of fsspec, no network."""
    found = settings(config)
    return Remote(*found) if found else None


class Remote:
    """One remote cache. Lookups are memoized per process; failures disable it with one warning."""

    def __init__(self, url: str, readonly: bool = False, storage_options: dict[str, Any] | None = None):
        self.url = url
        self.readonly = readonly
        self.storage_options = storage_options
        self.failure: str | None = None  # why the remote was given up for this run
        self._fs: Any = None
        self._root = ""
        self._entries: dict[str, dict[str, Any] | None] = {}
        self._bad: set[str] = set()  # digests whose remote bytes were found corrupt
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"Remote({self.url!r}{', read-only' if self.readonly else ''})"

    # --- storage -------------------------------------------------------------------------------
    @property
    def fs(self) -> Any:
        """The fsspec filesystem (created on first use; creating one makes no request)."""
        if self._fs is None:
            try:
                from fsspec.core import url_to_fs
            except ImportError:
                raise RemoteError("a remote cache needs fsspec", hint=install_command("remote")) from None
            try:
                self._fs, self._root = url_to_fs(self.url, **self._options())
            except (ImportError, ValueError) as exc:  # unknown protocol, or its package (s3fs, gcsfs) missing
                raise RemoteError(f"cannot open remote cache {self.url}: {exc}",
                                  hint="install the storage's fsspec package, e.g. pip install s3fs") from None
            self._root = self._root.rstrip("/")
        return self._fs

    def _options(self) -> dict[str, Any]:
        if self.storage_options is not None:
            return dict(self.storage_options)
        if self.url.startswith(("s3://", "s3a://")):
            # Fail over to a local build in seconds, not botocore's default minutes of retries.
            # AWS_ENDPOINT_URL (a MinIO, Ceph or moto endpoint): botocore ≥ 1.31 reads it itself;
            # passing it on covers older ones.
            opts: dict[str, Any] = {"config_kwargs": {"connect_timeout": 5, "read_timeout": 60,
                                                      "retries": {"max_attempts": 3, "mode": "standard"}}}
            endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
            if endpoint:
                opts["client_kwargs"] = {"endpoint_url": endpoint}
            return opts
        return {}

    @property
    def local(self) -> bool:
        protocol = self.fs.protocol
        return bool({"file", "local"} & set([protocol] if isinstance(protocol, str) else protocol))

    def action_path(self, key: str) -> str:
        return f"{self._root}/ac/{key[:2]}/{key}.json"

    def blob_path(self, digest: str) -> str:
        return f"{self._root}/cas/{digest[:2]}/{digest}"

    def serves(self, node: Node) -> bool:
        """Whether `node`'s result may be shared: not a host-bound one (benchmark latencies)."""
        from buildsys.planning.kinds import kind_of

        return self.failure is None and not kind_of(node).host_bound

    def _give_up(self, exc: BaseException) -> None:
        """Disable the remote for this run after a storage error, saying so once on stderr."""
        with self._lock:
            if self.failure is None:
                self.failure = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
                print(f"warning: remote cache {self.url} unavailable ({self.failure}); building without it",
                      file=sys.stderr)

    # --- reading ---------------------------------------------------------------------------------
    def lookup(self, key: str) -> dict[str, Any] | None:
        """The remote's action entry for `key` if it exists and is well formed (memoized)."""
        if key in self._entries:
            return self._entries[key]
        entry = None
        if self.failure is None:
            try:
                entry = _valid_entry(self.fs.cat_file(self.action_path(key)))
            except FileNotFoundError:
                entry = None
            except RemoteError:
                raise
            except Exception as exc:  # noqa: BLE001 - network, credentials, permissions: build locally
                self._give_up(exc)
                return None
        self._entries[key] = entry
        return entry

    def pull(self, key: str, store: Store) -> dict[str, Any] | None:
        """Copy `key`'s entry and the blobs the local store lacks into it, verifying each blob.

        Returns the entry, now also in the local action cache, or None (a miss: absent, malformed,
        a blob missing or corrupt, or the remote unreachable)."""
        entry = self.lookup(key)
        if entry is None:
            return None
        try:
            for _rel, digest, size, _x in entry["files"]:
                if not store.blob(digest).exists() and not self.fetch_blob(digest, size, store):
                    return None
        except Exception as exc:  # noqa: BLE001 - any storage error: warn once, build locally
            self._give_up(exc)
            return None
        store.put_action(key, entry)
        return entry

    def fetch_blob(self, digest: str, size: int, store: Store) -> bool:
        """Stream one blob into the local CAS, hashing as it arrives; False if it does not match."""
        import blake3

        tmp = store.scratch(f"pull-{digest[:12]}") / "blob"
        h = blake3.blake3()
        got = 0
        try:
            with self.fs.open(self.blob_path(digest), "rb") as src, open(tmp, "wb") as dst:
                while chunk := src.read(_CHUNK):
                    h.update(chunk)
                    got += len(chunk)
                    dst.write(chunk)
        except FileNotFoundError:
            _discard(tmp)
            return False
        if got != size or h.hexdigest() != digest:
            _discard(tmp)
            self._bad.add(digest)
            print(f"warning: remote cache blob {digest[:12]} does not match its digest; ignoring it", file=sys.stderr)
            return False
        dest = store.blob(digest)
        dest.parent.mkdir(parents=True, exist_ok=True)
        os.chmod(tmp, 0o444)
        os.replace(tmp, dest)
        _discard(tmp)
        return True

    # --- writing ---------------------------------------------------------------------------------
    def push(self, key: str, entry: dict[str, Any], store: Store) -> bool:
        """Publish a local result: its missing blobs first, then the action entry. False when
        read-only, when a local blob is gone, or when the remote failed (already warned)."""
        if self.readonly or self.failure is not None:
            return False
        try:
            for _rel, digest, size, _x in entry["files"]:
                blob = store.blob(digest)
                if not blob.exists():
                    return False
                if not self.has_blob(digest, size):
                    self.put_file(blob, self.blob_path(digest))
            self._put_bytes(json.dumps(entry, sort_keys=True, indent=1).encode(), self.action_path(key))
        except Exception as exc:  # noqa: BLE001 - any storage error: warn once, build locally
            self._give_up(exc)
            return False
        self._entries[key] = entry
        return True

    def has_blob(self, digest: str, size: int) -> bool:
        """Whether the remote holds a blob of this digest and size (a blob known bad counts as absent)."""
        if digest in self._bad:
            return False  # overwrite the corrupt copy with the verified local one
        try:
            return int(self.fs.info(self.blob_path(digest))["size"]) == size
        except FileNotFoundError:
            return False

    def put_file(self, src: Path, dest: str) -> None:
        """Upload a file by streaming it (s3fs sends big files as a multipart upload)."""
        if self.local:
            tmp = self._tmp_name(dest)
            self.fs.put_file(str(src), tmp)
            self.fs.mv(tmp, dest)
        else:
            self.fs.put_file(str(src), dest)
        self._bad.discard(dest.rsplit("/", 1)[-1])

    def _put_bytes(self, data: bytes, dest: str) -> None:
        if self.local:
            tmp = self._tmp_name(dest)
            self.fs.pipe_file(tmp, data)
            self.fs.mv(tmp, dest)
        else:
            self.fs.pipe_file(dest, data)

    def _tmp_name(self, dest: str) -> str:
        parent, name = dest.rsplit("/", 1)
        self.fs.makedirs(parent, exist_ok=True)
        return f"{parent}/.{name}.{uuid.uuid4().hex}.tmp"

    # --- inventory (modelbuild cache status) -----------------------------------------------------
    def inventory(self) -> tuple[int, int, int]:
        """(action entries, blobs, blob bytes) stored under the remote URL."""
        entries = blobs = size = 0
        for path, info in self.fs.find(self._root, detail=True).items():
            rel = path[len(self._root):].lstrip("/")
            if rel.startswith("ac/") and rel.endswith(".json"):
                entries += 1
            elif rel.startswith("cas/") and not rel.rsplit("/", 1)[-1].startswith("."):
                blobs += 1
                size += int(info.get("size") or 0)
        return entries, blobs, size


def _valid_entry(raw: bytes) -> dict[str, Any] | None:
    """An action entry whose listing is well formed and agrees with its tree digest, else None."""
    from buildsys.storage.hashing import TreeEntry, tree_digest

    try:
        entry = json.loads(raw)
        files = entry["files"]
        listing = [TreeEntry(str(p), str(d), int(s), bool(x)) for p, d, s, x in files]
    except (ValueError, KeyError, TypeError):
        return None
    if not all(_HEX.match(e.digest) for e in listing) or any(".." in e.path.split("/") or e.path.startswith("/") for e in listing):
        return None
    return entry if entry.get("tree") == tree_digest(listing) else None


def _discard(path: Path) -> None:
    import shutil

    shutil.rmtree(path.parent, ignore_errors=True)
