"""Distributed builds: run a plan's steps on a `dask.distributed` cluster instead of local workers.

    modelbuild build --executor dask --scheduler tcp://HOST:8786   (or MODELBUILD_SCHEDULER)

The Builder is unchanged: it plans, schedules and publishes in this process, and hands each step to
an executor as `run(Job) -> reply`. DaskExecutor submits the job as one Dask task. On the
Dask worker the task

1. pulls the step's input trees (the upstream artifact, the reference) from the remote cache into a
   worker-local store, by digest, verifying every blob;
2. runs the step in a `python -m buildsys.running.worker` subprocess (a LocalExecutor kept per Dask worker
   process, so toolchain imports are paid once and a crashing converter kills only that subprocess,
   never the Dask worker);
3. pushes the output tree's blobs to the remote and returns the reply with the tree listing.

This process then pulls the tree into the local store and fills the step's scratch directory from
it, so the Builder publishes exactly as after a local step. Only the Builder writes the lock, and
only after a successful publish: a worker that dies cannot leave a half-written lock behind.

Requirements and conventions (also in docs/performance.md, "Distributed builds"):
- A remote cache (MODELBUILD_REMOTE or deploy.yaml `cache.remote`), writable: artifacts travel
  through it, never through local paths.
- The project directory is visible on every worker at the same absolute path (a shared
  filesystem): steps read the model's sources and data (weights, factory module, npz files) there.
- Routing: a step of toolchain T needs the Dask resource `toolchain-T` (torch, onnx, tf, coreml,
  openvino, tensorrt, …); TensorRT steps also need `gpu`. A resource is requested only when some
  worker of the cluster declares it (`dask worker … --resources "toolchain-coreml=1"`); otherwise
  the step may run anywhere.
- Budgets: each step runs under its node's time budget and memory ceiling (running/limits.py) in the Dask
  worker's subprocess, watched there as locally; a ceiling the target did not set is that host's default
  (half its memory). Dask's own nanny limits watch the Dask worker process, not the step's subprocess.
- A worker that dies mid-step: the scheduler moves the task to another worker (up to
  `distributed.scheduler.allowed-failures` deaths, then the node fails). Errors raised by the task
  itself (a remote storage hiccup) are retried MODELBUILD_DASK_RETRIES times (default 1).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import threading
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

from buildsys.errors import ModelbuildError, install_command

if TYPE_CHECKING:
    from buildsys.planning.planner import Planner
    from buildsys.records import WorkerReply
    from buildsys.running.pool import Executor, Job
    from buildsys.storage.remote import Remote

ENV_SCHEDULER = "MODELBUILD_SCHEDULER"
ENV_RETRIES = "MODELBUILD_DASK_RETRIES"
EXECUTORS = ("local", "dask")
_LOG_TAIL = 1 << 20  # bytes of a step's log sent back from the worker


class ExecutorError(ModelbuildError):
    """The executor cannot start: unknown kind, no scheduler, no remote cache, dask missing."""


def make_executor(kind: str, scheduler: str | None, log_dir: Path, jobs: int, planner: Planner) -> "Executor":
    """The executor for `build --executor KIND`: a LocalExecutor (the default) or a DaskExecutor.

    Both expose `run(job) -> reply`, `close()` and `jobs` (how many nodes to keep in flight)."""
    from buildsys.running.pool import LocalExecutor

    if kind == "local":
        if scheduler:
            raise ExecutorError("--scheduler is only used by the dask executor", hint="add --executor dask")
        return LocalExecutor(log_dir, jobs)
    if kind != "dask":
        raise ExecutorError(f"unknown executor {kind!r}", hint=f"use one of {', '.join(EXECUTORS)}")
    return DaskExecutor(scheduler or os.environ.get(ENV_SCHEDULER, ""), planner, jobs)


def resources_for(toolchain: str) -> list[str]:
    """The Dask resources a step of `toolchain` asks for (when the cluster declares them)."""
    from buildsys.formats import steps

    gpu = any(s.gpu for s in steps().values() if s.toolchain == toolchain)  # declared by the steps (Step.gpu)
    return [f"toolchain-{toolchain}"] + (["gpu"] if gpu else [])


class DaskExecutor:
    """Runs actions as tasks on a Dask cluster; artifacts travel through the remote cache."""

    def __init__(self, address: str, planner: Planner, jobs: int = 1):
        remote = planner.remote
        if remote is None:
            raise ExecutorError("--executor dask needs a remote cache (MODELBUILD_REMOTE) so workers can exchange "
                                "artifacts", hint="set MODELBUILD_REMOTE=s3://bucket/prefix or file:///shared/path, "
                                "or cache.remote in deploy.yaml")
        if remote.readonly:
            raise ExecutorError("--executor dask needs a writable remote cache: workers push the artifacts they "
                                "build", hint="unset MODELBUILD_REMOTE_READONLY (or cache.remote_readonly)")
        if not address:
            raise ExecutorError("--executor dask needs a scheduler address",
                                hint=f"pass --scheduler tcp://HOST:8786 or set {ENV_SCHEDULER}")
        try:
            from distributed import Client
        except ImportError:
            raise ExecutorError("--executor dask needs dask.distributed", hint=install_command("dask")) from None
        try:
            self.client = Client(address, timeout=15, set_as_default=False)
        except (OSError, TimeoutError) as exc:
            raise ExecutorError(f"cannot reach the Dask scheduler at {address}: {exc}",
                                hint="start one with `dask scheduler` and workers with `dask worker ADDRESS`") from None
        self.address = address
        self.remote: Remote = remote
        self.store = planner.store
        self.retries = int(os.environ.get(ENV_RETRIES, "1"))
        workers = self.client.scheduler_info(n_workers=-1)["workers"]
        # As many nodes in flight as the cluster has threads (at least -j): the Builder's threads only wait.
        self.jobs = max(jobs, sum(int(w.get("nthreads", 1)) for w in workers.values()))
        self._uploaded: set[str] = set()
        self._lock = threading.Lock()
        self._warn_other_platforms()

    # --- the Builder's interface -------------------------------------------------------------------
    def warm(self, toolchain: str, worker: str | None = None) -> bool:
        """Never known here: the cluster's workers keep their own toolchains warm."""
        return False

    def expect(self, toolchains: dict[str, int]) -> None:
        """The scheduler places tasks; nothing to prepare."""

    def run(self, job: Job) -> "WorkerReply":
        """Run one job on the cluster; the reply is LocalExecutor's, plus where it ran."""
        from distributed import KilledWorker

        out_dir = Path(job.request["out_dir"])
        try:
            self._upload_inputs(job)
        except Exception as exc:  # noqa: BLE001 - storage errors: this node fails, with the reason
            return {"ok": False, "error": f"cannot upload the step's inputs to {self.remote.url}: {_first_line(exc)}",
                    "user": False}
        future = self.client.submit(
            run_on_worker, job.request, str(out_dir.parent), job.inputs, job.toolchain, self.remote.url,
            self.remote.storage_options, job.timeout, job.memory, job.basis,
            key=f"modelbuild-{job.node}-{uuid.uuid4().hex[:8]}",
            resources=self._resources(job.toolchain) or None, retries=self.retries, pure=False)
        try:
            reply: dict[str, Any] = future.result()
        except KilledWorker as exc:
            return {"ok": False, "user": False, "error": f"the Dask workers running it died ({_first_line(exc)})"}
        except Exception as exc:  # noqa: BLE001 - the task raised (after its retries) or the cluster went away
            return {"ok": False, "user": False, "error": f"dask task failed: {type(exc).__name__}: {_first_line(exc)}"}
        finally:
            future.release()
        self._append_log(job, reply.pop("log_text", ""), reply.get("worker", "?"))
        files = reply.pop("files", None)
        if reply.get("ok"):
            try:
                self._fetch_outputs(files or [], out_dir)
            except Exception as exc:  # noqa: BLE001 - a blob missing or corrupt on the remote
                return {"ok": False, "user": False, "error": f"cannot pull the step's outputs: {_first_line(exc)}"}
        return WorkerReply(**reply)  # type: ignore[typeddict-item]  # (the task's reply: ok, metrics, error, built)

    def close(self) -> None:
        self.client.close()

    # --- helpers ------------------------------------------------------------------------------------
    def _warn_other_platforms(self) -> None:
        """Keys of platform-bound nodes (checks, static int8) name this host's OS/architecture; a
        worker on another platform would file its results under this host's. Say so once."""
        import sys

        from buildsys.storage.keys import host_platform

        here = host_platform()
        others = {a: p for a, p in self.client.run(host_platform).items() if p != here}
        if others:
            listed = ", ".join(f"{a} ({p})" for a, p in sorted(others.items()))
            print(f"warning: Dask worker(s) {listed} differ from this host ({here}); platform-bound results "
                  f"they build are recorded for {here}", file=sys.stderr)

    def _resources(self, toolchain: str) -> dict[str, int]:
        """Resources to require: those of `resources_for` that some worker declares (else: anywhere)."""
        declared: set[str] = set()
        for worker in self.client.scheduler_info(n_workers=-1)["workers"].values():
            declared.update(worker.get("resources") or {})
        return {name: 1 for name in resources_for(toolchain) if name in declared}

    def _upload_inputs(self, job: Job) -> None:
        """Make sure the remote has every blob of the step's input trees. The Builder pushes results
        after publishing, on its own thread; a downstream node may start before that push ends, and
        results that were already in the local cache may never have been pushed."""
        for files in job.inputs.values():
            for _rel, digest, size, _x in files:
                with self._lock:
                    if digest in self._uploaded:
                        continue
                if not self.remote.has_blob(digest, size):
                    self.remote.put_file(self.store.blob(digest), self.remote.blob_path(digest))
                with self._lock:
                    self._uploaded.add(digest)

    def _fetch_outputs(self, files: list[list[Any]], out_dir: Path) -> None:
        """Pull the worker's output tree into the local store, then lay it out in the scratch `out`
        directory (hard links), where the Builder hashes and publishes it as after a local step."""
        for rel, digest, size, _x in files:
            if not self.store.blob(digest).exists() and not self.remote.fetch_blob(digest, size, self.store):
                raise RuntimeError(f"blob {digest[:12]} of {rel} is missing or corrupt on {self.remote.url}")
        self.store.checkout(files, out_dir, link=True)

    @staticmethod
    def _append_log(job: Job, text: str, worker: str) -> None:
        with open(job.request["log"], "a", encoding="utf-8", errors="replace") as log:
            log.write(f"# dask worker: {worker}\n{text}")


# --- on the Dask worker -------------------------------------------------------------------------------
_local: dict[str, Any] = {}  # per Dask worker process: its LocalExecutor, remotes, store
_local_lock = threading.Lock()


def _worker_state(url: str, storage_options: dict[str, Any] | None) -> tuple[Any, Any, Remote]:
    """This Dask worker's (LocalExecutor, Store, Remote). The store lives in the worker's local
    directory, so it is deleted with the worker and outputs it built stay at hand for downstream
    steps that land on the same worker."""
    from distributed import get_worker

    from buildsys.running.pool import LocalExecutor
    from buildsys.storage.hashing import StatCache
    from buildsys.storage.remote import Remote
    from buildsys.storage.store import Store

    worker = get_worker()
    base = Path(worker.local_directory) / "modelbuild"
    with _local_lock:
        if "executor" not in _local:
            _local["executor"] = LocalExecutor(base / "logs", max(1, worker.state.nthreads))
            _local["store"] = Store(base / "store", StatCache(None))
        if url not in _local:
            _local[url] = Remote(url, storage_options=storage_options)
        return _local["executor"], _local["store"], _local[url]


def run_on_worker(request: dict[str, Any], local_scratch: str, inputs: dict[str, list[list[Any]]], toolchain: str, url: str,
                  storage_options: dict[str, Any] | None, timeout: float, memory: int | None = None,
                  basis: str = "") -> dict[str, Any]:
    """The Dask task: inputs from the remote, the step in a subprocess, outputs to the remote.

    The step runs under the node's budget (running/limits.py): `timeout` seconds, and `memory` bytes for the
    subprocess with its children, or, where the target set none, the Dask worker host's own default ceiling.

    Step failures come back as replies (they are deterministic: retrying would not help); storage
    errors raise, so Dask's `retries` covers them."""
    from distributed import get_worker

    from buildsys.running.pool import Job

    address = get_worker().address
    where = {"worker": address, "built": {"host": socket.gethostname(), "worker": address}}
    root = Path(request["root"])
    if not root.is_dir():
        return {"ok": False, "user": True, **where,
                "error": f"the project directory {root} is not visible on Dask worker {address} (the dask executor "
                         f"needs the project at the same path on every worker: a shared filesystem)"}
    executor, store, remote = _worker_state(url, storage_options)
    scratch = store.scratch("dask")
    try:
        for sub, files in inputs.items():
            for rel, digest, size, _x in files:
                if not store.blob(digest).exists() and not remote.fetch_blob(digest, size, store):
                    raise RuntimeError(f"input blob {digest[:12]} ({rel}) is missing or corrupt on {url}")
            store.checkout(files, scratch / sub, link=True)
        (scratch / "out").mkdir()
        # The request names this process's scratch paths; the same layout is recreated here.
        old, new = json.dumps(local_scratch)[1:-1], json.dumps(str(scratch))[1:-1]
        here = json.loads(json.dumps(request).replace(old, new))
        here["log"] = str(scratch / "step.log")
        reply = executor.run(Job(request.get("model_name", "") + ":" + request["step"], toolchain, here, timeout,
                                 memory=memory, basis=basis))
        reply.update(where)
        reply["log_text"] = _tail(scratch / "step.log")
        if reply.get("ok"):
            _tree, entries = store.put_tree(scratch / "out")
            reply["files"] = [e.as_list() for e in entries]
            for _rel, digest, size, _x in reply["files"]:
                if not remote.has_blob(digest, size):
                    remote.put_file(store.blob(digest), remote.blob_path(digest))
        return reply
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _tail(path: Path) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(max(0, path.stat().st_size - _LOG_TAIL))
            return f.read().decode("utf-8", errors="replace")
    except FileNotFoundError:
        return ""


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
