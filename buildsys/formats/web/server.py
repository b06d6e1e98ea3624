"""A loopback HTTP server for the check page: static files from one directory plus binary tensor exchange.

The browser fetches the page, onnxruntime-web and the artifact as a site would serve them (the wasm
binary with its MIME type, so it is compiled while streaming). Tensors travel as raw bytes rather
than JSON or base64 through the DevTools protocol: Python puts a call's inputs at GET /io/in/<id>,
the page posts the outputs to POST /io/out/<id>.
"""

from __future__ import annotations

import threading
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

# Module scripts and streaming wasm compilation need exact types; Python 3.11 knows neither .mjs nor .wasm.
_TYPES = {".mjs": "text/javascript", ".js": "text/javascript", ".wasm": "application/wasm",
          ".onnx": "application/octet-stream", ".json": "application/json", ".html": "text/html"}


class _Handler(SimpleHTTPRequestHandler):
    extensions_map: dict[str, str] = {**SimpleHTTPRequestHandler.extensions_map, **_TYPES}
    exchange: TensorServer

    def do_GET(self) -> None:
        if self.path.startswith("/io/in/"):
            body = self.exchange.inputs.pop(self.path[len("/io/in/"):], None)
            if body is None:
                self.send_error(404, "no such call")
                return
            self._reply(200, body)
            return
        super().do_GET()

    def do_POST(self) -> None:
        if not self.path.startswith("/io/out/"):
            self.send_error(404)
            return
        length = int(self.headers.get("Content-Length", "0"))
        self.exchange.outputs[self.path[len("/io/out/"):]] = self.rfile.read(length)
        self._reply(204, b"")

    def _reply(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def end_headers(self) -> None:
        self.send_header("Cache-Control", "no-store")  # a re-used profile must never see an old model
        super().end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass  # one line per request is noise in a check's log


class TensorServer:
    """Serve `root` on 127.0.0.1 (a free port) from a daemon thread until `close()`."""

    def __init__(self, root: Path):
        self.inputs: dict[str, bytes] = {}
        self.outputs: dict[str, bytes] = {}
        handler = type("Handler", (_Handler,), {"exchange": self})
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), partial(handler, directory=str(root)))
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="web-check-server", daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        assert isinstance(host, str)  # an AF_INET server's address is (host, port), never bytes
        return f"http://{host}:{port}/"

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
