"""Worker process: runs steps on request, one at a time, isolated from the orchestrator.

Protocol: one JSON request per line on stdin, one JSON reply per line on the file descriptor that
was stdout at start. While a step runs, fds 1 and 2 point at the node's log file, so whatever the
converters print (C++ libraries included) lands in that log and never corrupts the protocol.
Started as `python -m buildsys.running.worker`; a crash or hang kills only this process.
"""

from __future__ import annotations

import json
import os
import sys
import time
import traceback
from pathlib import Path
from typing import Any


def handle(request: dict[str, Any]) -> dict[str, Any]:
    """Run one step request and return the reply (never raises for step failures)."""
    from buildsys.config.schema import Model
    from buildsys.errors import ModelbuildError, UnmetOnEveryRoute
    from buildsys.formats import StepContext, get_step

    try:
        step_cls = get_step(request["step"])
        ctx = StepContext(
            model_name=request["model_name"],
            model=Model.model_validate(request["model"]),
            root=Path(request["root"]),
            input_path=Path(request["input"]) if request.get("input") else None,
            out_dir=Path(request["out_dir"]),
            options=step_cls.Options.model_validate(request["options"]),
            precision=request.get("precision", "fp32"),
            extra=request.get("extra", {}),
            deadline=time.monotonic() + float(request["extra"]["budget_s"])
            if request.get("extra", {}).get("budget_s") else None,
        )
        metrics = step_cls().run(ctx)
        return {"ok": True, "metrics": metrics}
    except ModelbuildError as exc:
        traceback.print_exc()
        reply = {"ok": False, "error": str(exc), "user": True}
        if isinstance(exc, UnmetOnEveryRoute):
            reply["every_route"] = True
    except Exception as exc:  # a converter's own exception: report it as the step's failure
        traceback.print_exc()
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        reply = {"ok": False, "error": f"{type(exc).__name__}: {first}"[:500], "user": False}
    return located(request, reply)  # out of the except block: the failed step's frames are freed first


def located(request: dict[str, Any], reply: dict[str, Any]) -> dict[str, Any]:
    """A failed step's reply with where the user's model calls what its error says a converter refused
    (buildsys.localise.source_lines): the error ends with it and `refused` lists every site. The reply as it
    was when the error names nothing, the source is no PyTorch module, or locating fails (said in the log)."""
    try:
        from buildsys.localise.sites import with_sites
        from buildsys.localise.source_lines import refused_sites

        sites = refused_sites(request, reply["error"])
    except Exception:  # noqa: BLE001 - the step's own failure is what the reply must carry
        print("modelbuild: the refused op could not be located in the model's source:", file=sys.stderr)
        traceback.print_exc()
        return reply
    decomposable = _decomposable(reply["error"])
    reply = {**reply, "decomposable": decomposable} if decomposable is not None else reply
    if not sites:
        return reply
    return {**reply, "error": with_sites(reply["error"], sites), "refused": [s.as_dict() for s in sites]}


def _decomposable(error: str) -> list[str] | None:
    """The ATen ops `error` names that PyTorch's tables decompose (buildsys.lowering), where this worker has
    torch loaded; None where it has not (a TensorFlow worker's refusal names ONNX or TF ops anyway)."""
    if "torch" not in sys.modules:
        return None
    from buildsys.lowering import refused_ops
    from buildsys.lowering.decompose import decomposes

    try:
        return [op for op in refused_ops(error) if decomposes(op)]
    except Exception:  # noqa: BLE001 - an answer's hint, never the step's failure
        return None


def unused_imports(toolchain: str) -> list[str]:
    """The packages `toolchain`'s worker treats as not installed: what its steps declare (`Step.unused_imports`)."""
    from buildsys.formats import steps

    return sorted({name for s in steps().values() if s.toolchain == toolchain for name in s.unused_imports})


def block_unused_imports(toolchain: str) -> None:
    """Make the packages `toolchain`'s worker never needs unimportable in this process: `import`
    raises ImportError for a name whose sys.modules entry is None (the import system's own rule)."""
    for name in unused_imports(toolchain):
        sys.modules.setdefault(name, None)  # type: ignore[arg-type]  # None: "not importable", by design


def probed_imports(toolchain: str) -> dict[str, set[str]]:
    """Package → what it only probes for at its import, over `toolchain`'s steps (`Step.probed_imports`)."""
    from buildsys.formats import steps

    probed: dict[str, set[str]] = {}
    for step in steps().values():
        if step.toolchain == toolchain:
            for package, hidden in step.probed_imports.items():
                probed.setdefault(package, set()).update(hidden)
    return probed


def import_hiding(package: str, hidden_names: set[str]) -> None:
    """Import `package` with `hidden_names` reading as not installed (formats/hidden_imports.py); afterwards they
    are importable again. A failure to import `package` itself is left for the step that needs it to report."""
    from buildsys.formats.hidden_imports import hidden

    with hidden(hidden_names):
        try:
            __import__(package)
        except Exception:  # noqa: BLE001 - the step that imports it again reports the failure, with its node's log
            pass


def preload_probing_packages(toolchain: str) -> None:
    """Import the packages `toolchain`'s steps declare in `Step.probed_imports`, hiding what they probe for."""
    for package, hidden in probed_imports(toolchain).items():
        import_hiding(package, hidden)


def _exit_with_parent() -> None:
    """End this worker if the orchestrator dies (kill -9 included): no orphan keeps converting."""
    import threading
    import time

    parent = int(os.environ.get("MODELBUILD_PARENT_PID", "0"))

    def watch() -> None:
        while True:
            time.sleep(0.5)
            if os.getppid() != parent:
                os._exit(3)

    if parent:
        threading.Thread(target=watch, daemon=True).start()


def _stack_on_signal() -> None:
    """On SIGUSR1, write every thread's Python stack to fd 2 (during a step: the node's log). The watchdog
    asks for it before it stops a step past its budget (buildsys.running.limits, watchdog); faulthandler writes from the signal
    handler itself, so a worker busy in C code answers too."""
    import faulthandler
    import signal

    if hasattr(signal, "SIGUSR1"):
        faulthandler.register(signal.SIGUSR1, file=sys.stderr, all_threads=True)


def main() -> None:
    _exit_with_parent()
    _stack_on_signal()
    toolchain = os.environ.get("MODELBUILD_WORKER_TOOLCHAIN", "")
    block_unused_imports(toolchain)
    protocol = os.fdopen(os.dup(1), "w", buffering=1)
    original_err = os.dup(2)
    os.dup2(2, 1)  # stray prints between requests go to stderr, not into the protocol
    preload_probing_packages(toolchain)
    for line in sys.stdin:
        request = json.loads(line)
        with open(request["log"], "ab", buffering=0) as log:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(log.fileno(), 1)
            os.dup2(log.fileno(), 2)
            try:
                reply = handle(request)
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os.dup2(original_err, 1)
                os.dup2(original_err, 2)
        protocol.write(json.dumps(reply, default=str) + "\n")
    _exit_without_teardown()


def _exit_without_teardown() -> None:
    """Leave once the orchestrator closes stdin, skipping the interpreter's teardown.

    Every reply and file is written before this point, and tearing down torch's, TensorFlow's or
    coremltools's modules costs 0.3 s, 1.7 s and 3-5 s of CPU per worker at the end of every build
    (measured on this project's 2-core host). Line coverage, the one thing CI's coverage mode writes at
    exit, is saved by coverage's own `_exit` patch ([tool.coverage.run] in pyproject.toml)."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
