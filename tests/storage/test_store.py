"""Hashing, stat cache, CAS store and lock: content addressing and atomic publishing."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from buildsys.storage.hashing import StatCache, digest_bytes, digest_file
from buildsys.storage.lock import Lock, lock_path_for
from buildsys.storage.store import CorruptBlob, Store


def make_store(tmp_path: Path) -> Store:
    stat = StatCache(tmp_path / "cache" / "statcache.json")
    return Store(tmp_path / "cache", stat)


def test_digest_file_matches_bytes(tmp_path: Path) -> None:
    f = tmp_path / "a.bin"
    f.write_bytes(b"hello" * 1000)
    assert digest_file(f) == digest_bytes(b"hello" * 1000)


def test_stat_cache_rehashes_only_on_change(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    f = tmp_path / "w.bin"
    f.write_bytes(b"x" * 100)
    stat = StatCache(tmp_path / "stat.json")
    first = stat.digest(f)
    stat.save()
    calls = []
    import buildsys.storage.hashing as hashing

    real = hashing.digest_file
    monkeypatch.setattr(hashing, "digest_file", lambda p: calls.append(p) or real(p))
    again = StatCache(tmp_path / "stat.json")
    assert again.digest(f) == first and calls == []  # unchanged file: no read
    f.write_bytes(b"y" * 100)
    os.utime(f, ns=(f.stat().st_atime_ns, f.stat().st_mtime_ns + 1_000_000))
    assert again.digest(f) != first and calls == [f]


def test_put_tree_and_checkout_roundtrip(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    out = store.scratch("m/onnx")
    (out / "model.onnx").write_bytes(b"graph")
    (out / "model.onnx.data").write_bytes(b"weights")
    tree, entries = store.put_tree(out)
    assert [e.path for e in entries] == ["model.onnx", "model.onnx.data"]
    assert not (out / "model.onnx").exists()  # moved, not copied
    files = [e.as_list() for e in entries]
    store.checkout(files, tmp_path / "copy", link=False)
    assert (tmp_path / "copy" / "model.onnx.data").read_bytes() == b"weights"
    # same content again: same tree digest, blob deduplicated
    out2 = store.scratch("m/onnx")
    (out2 / "model.onnx").write_bytes(b"graph")
    (out2 / "model.onnx.data").write_bytes(b"weights")
    assert store.put_tree(out2)[0] == tree


def test_corrupt_blob_is_a_miss_and_removed(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    out = store.scratch("n")
    (out / "f").write_bytes(b"good")
    _, entries = store.put_tree(out)
    blob = store.blob(entries[0].digest)
    os.chmod(blob, 0o644)
    blob.write_bytes(b"evil")
    with pytest.raises(CorruptBlob, match="corrupted"):
        store.checkout([e.as_list() for e in entries], tmp_path / "x", link=True)
    assert not blob.exists()
    store.put_action("k" * 64, {"tree": "t", "files": [e.as_list() for e in entries]})
    assert store.get_action("k" * 64) is None  # its blob is gone: a miss, never a result


def test_lock_roundtrip_is_sorted_and_atomic(tmp_path: Path) -> None:
    lock = Lock(tmp_path / "deploy.lock")
    lock.nodes["b/x"] = {"key": "2", "files": [["f", "d2", 1, False]]}
    lock.nodes["a/x"] = {"key": "1", "files": [["f", "d1", 1, False]]}
    lock.write()
    text = (tmp_path / "deploy.lock").read_text()
    assert text.index('"a/x"') < text.index('"b/x"')
    assert not list(tmp_path.glob(".*.tmp"))
    again = Lock.read(tmp_path / "deploy.lock")
    assert again.nodes == lock.nodes
    assert again.referenced_blobs() == {"d1", "d2"} and again.referenced_keys() == {"1", "2"}
    assert json.loads(text)["version"] == 1


def test_lock_path_for() -> None:
    assert lock_path_for(Path("x/deploy.yaml")) == Path("x/deploy.lock")
    assert lock_path_for(Path("deploy.yaml.example")) == Path("deploy.lock")
    assert lock_path_for(Path("svc.yml")) == Path("svc.lock")


def test_gc_keeps_only_referenced(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    kept, dropped = store.scratch("a"), store.scratch("b")
    (kept / "f").write_bytes(b"keep")
    (dropped / "f").write_bytes(b"drop")
    _, keep_entries = store.put_tree(kept)
    _, drop_entries = store.put_tree(dropped)
    store.put_action("a" * 64, {"files": [e.as_list() for e in keep_entries]})
    store.put_action("b" * 64, {"files": [e.as_list() for e in drop_entries]})
    entries, blobs, freed = store.gc({"a" * 64}, {keep_entries[0].digest})
    assert (entries, blobs, freed) == (1, 1, 4)
    assert store.get_action("a" * 64) is not None and store.get_action("b" * 64) is None
