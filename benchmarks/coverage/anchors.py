"""The anchor of the coverage matrices: each converter alone, with its default call, on the same modules.

For every row and converter, the module is converted by that converter alone (tests/helpers/rewrite_converters.py:
torch.onnx.export dynamo and legacy run in ONNX Runtime, onnx2tf and litert-torch in LiteRT, coremltools from
the trace and from torch.export in the MIL reference interpreter, ExecuTorch's to_edge_transform_and_lower with
XNNPACK in ExecuTorch's runtime, openvino.convert_model of the module on the CPU plugin), run on the row's
validation inputs and judged by modelbuild's own comparison (buildsys.comparison.compare at the fp32 defaults).

One worker process per converter takes the rows one after another (the converter is imported once). The
parent gives each row `timeout` seconds and the worker `memory_mb` of resident memory: past either, or when
the worker dies, the row is recorded as `timeout`, `memory` or `crashed` and a fresh worker takes the next.

    python -m benchmarks.coverage.anchors --serve CONVERTER    # a worker: JSON requests on stdin, one per line
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Any, Callable

REPO = Path(__file__).resolve().parents[2]

#: Each converter and the target family it is the single-converter alternative for.
CONVERTERS = {"onnx-dynamo": "server", "onnx-legacy": "server", "onnx2tf": "android", "litert": "android",
              "coreml": "ios", "coreml-export": "ios", "executorch": "executorch", "openvino-torch": "intel"}


def judge(request: dict[str, Any], converter: str) -> dict[str, Any]:
    """Convert the request's module with `converter`, run it on the request's inputs, compare every output."""
    import importlib
    import tempfile
    import warnings

    import numpy as np
    import torch

    from buildsys.config.schema import Acceptance, OutputSpec
    from buildsys.comparison import compare
    from buildsys.nodes.verify import resolve_acceptance
    from tests.helpers.rewrite_converters import RUNNERS, nchw

    warnings.simplefilter("ignore")
    root = request["root"]
    if root not in sys.path:
        sys.path.insert(0, root)
    module_name, _, attr = request["factory"].partition(":")
    module = getattr(importlib.import_module(module_name), attr)(**request.get("kwargs", {})).eval()
    with np.load(Path(root) / request["data"]) as data:
        args = tuple(torch.from_numpy(np.ascontiguousarray(data[name])) for name in request["inputs"])
    with torch.no_grad():
        want = module(*args)
    want = [w.numpy() for w in (want if isinstance(want, (tuple, list)) else (want,))]
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        try:
            got = RUNNERS[converter](module, args, Path(tmp))
        except Exception as exc:  # noqa: BLE001 - a refusal is a result
            return {"status": "failed", "error": f"{type(exc).__name__}: {exc}"[:2000],
                    "trace": traceback.format_exc()[-1500:], "seconds": round(time.perf_counter() - started, 2)}
    names = [f"out{i}" for i in range(len(want))]  # 'values' outputs at fp32: what a modelbuild check resolves
    limits = resolve_acceptance(Acceptance(), "fp32", [OutputSpec(name=n) for n in names])["outputs"]
    misses = []
    if len(got) != len(want):
        misses.append(f"{len(got)} outputs, PyTorch's {len(want)}")
    for i, (ref, obs) in enumerate(zip(want, got)):
        try:
            obs = nchw(np.asarray(obs), ref.shape)
        except ValueError:
            misses.append(f"out{i}: shape {list(np.shape(obs))}, PyTorch's {list(ref.shape)}")
            continue
        result = compare(names[i], "values", ref, obs.astype(ref.dtype), limits[names[i]])
        if not result:
            misses.append(f"out{i}: " + "; ".join(result.failures()))
    seconds = round(time.perf_counter() - started, 2)
    return {"status": "wrong", "error": misses[0][:500], "seconds": seconds} if misses else \
        {"status": "verified", "seconds": seconds}


def serve(converter: str) -> None:
    """The worker loop: one JSON request per stdin line, one `RESULT {json}` line per request on stdout."""
    sys.path.insert(0, str(REPO))
    out = os.fdopen(os.dup(1), "w")  # converters print to stdout; results go to a private copy of it
    os.dup2(2, 1)
    for line in sys.stdin:
        try:
            result = judge(json.loads(line), converter)
        except Exception as exc:  # noqa: BLE001 - the module itself failed: said, not fatal
            result = {"status": "failed", "error": f"{type(exc).__name__}: {exc}"[:2000], "stage": "setup"}
        out.write("RESULT " + json.dumps(result) + "\n")
        out.flush()


class Worker:
    """A `--serve` subprocess for one converter, restarted after a crash, a timeout or a memory overrun."""

    def __init__(self, converter: str, env: dict[str, str], memory_mb: int):
        self.converter, self.env, self.memory_mb = converter, env, memory_mb
        self.proc: subprocess.Popen[str] | None = None

    def _start(self) -> subprocess.Popen[str]:
        if self.proc is None or self.proc.poll() is not None:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "benchmarks.coverage.anchors", "--serve", self.converter], cwd=REPO,
                env=self.env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        return self.proc

    def ask(self, request: dict[str, Any], timeout: float) -> dict[str, Any]:
        proc = self._start()
        assert proc.stdin is not None and proc.stdout is not None
        answer: list[str] = []
        reader = threading.Thread(target=lambda: answer.append(_result_line(proc)), daemon=True)
        started = time.perf_counter()
        proc.stdin.write(json.dumps(request) + "\n")
        proc.stdin.flush()
        reader.start()
        while reader.is_alive():
            reader.join(0.5)
            waited = time.perf_counter() - started
            if reader.is_alive() and waited > timeout:
                self.stop()
                return {"status": "timeout", "error": f"no result after {timeout:.0f} s", "seconds": round(waited, 1)}
            if reader.is_alive() and _rss_mb(proc.pid) > self.memory_mb:
                self.stop()
                return {"status": "memory", "error": f"over {self.memory_mb} MB resident", "seconds": round(waited, 1)}
        if not answer or not answer[0]:
            code = proc.wait()
            self.proc = None
            return {"status": "crashed", "error": f"the converter's process died (exit {code})",
                    "seconds": round(time.perf_counter() - started, 1)}
        return dict(json.loads(answer[0]))

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.proc = None


def _result_line(proc: subprocess.Popen[str]) -> str:
    assert proc.stdout is not None
    for line in proc.stdout:
        if line.startswith("RESULT "):
            return line[len("RESULT "):]
    return ""


def _rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def run(requests: dict[str, dict[str, Any]], converters: list[str], results: dict[str, Any],
        save: Callable[[], None], *, timeout: float = 180.0, memory_mb: int = 4096, fresh: bool = False,
        extra_path: tuple[str, ...] = (), log: Callable[[str], None] = print) -> None:
    """Judge every request (row key → request) with every converter into results['anchors'][key][converter]."""
    anchors = results.setdefault("anchors", {})
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3",
           "PYTHONPATH": os.pathsep.join([str(REPO), *extra_path, os.environ.get("PYTHONPATH", "")])}
    for converter in converters:
        todo = [k for k in requests if fresh or converter not in anchors.get(k, {})]
        log(f"anchor {converter}: {len(todo)} of {len(requests)} rows to run")
        worker = Worker(converter, env, memory_mb)
        try:
            for n, key in enumerate(todo, 1):
                result = worker.ask(requests[key], timeout)
                result.pop("trace", None)
                anchors.setdefault(key, {})[converter] = result
                if n % 20 == 0 or n == len(todo):
                    save()
                    log(f"anchor {converter}: {n}/{len(todo)}")
        finally:
            worker.stop()
            save()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--serve", choices=sorted(CONVERTERS), required=True, help="run as a worker for CONVERTER")
    serve(parser.parse_args().serve)


if __name__ == "__main__":
    main()
