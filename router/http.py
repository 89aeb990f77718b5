"""The routers' HTTP endpoint: ``/metrics``, ``/healthz`` (alive) and ``/readyz`` (consuming, not stale).

Unauthenticated on purpose: Prometheus, an endpoint picker and the kubelet's probes
read it; it exposes weights and headrooms, never commands.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST

#: ``readiness()`` returns (ready, details shown in the body).
Readiness = Callable[[], tuple[bool, dict[str, Any]]]


class RouterHttp:
    """A small threaded HTTP server; ``metrics_text()`` and ``readiness()`` are called per request."""

    def __init__(self, addr: str, port: int, *, metrics_text: Callable[[], bytes], readiness: Readiness) -> None:
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's verb method name
                path = self.path.split("?", 1)[0]
                if path == "/metrics":
                    self._send(200, CONTENT_TYPE_LATEST, outer.metrics_text())
                elif path == "/healthz":
                    self._send(200, "application/json", b'{"status": "alive"}\n')
                elif path == "/readyz":
                    ready, details = outer.readiness()
                    body = json.dumps({"status": "ready" if ready else "not ready", **details}, default=str)
                    self._send(200 if ready else 503, "application/json", body.encode() + b"\n")
                else:
                    self._send(404, "text/plain", b"not found: /metrics, /healthz, /readyz\n")

            def _send(self, code: int, ctype: str, body: bytes) -> None:
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - scrapes every few seconds
                return

        self.metrics_text = metrics_text
        self.readiness = readiness
        self.server = ThreadingHTTPServer((addr, port), Handler)
        self.server.daemon_threads = True
        self._thread = threading.Thread(target=self.server.serve_forever, name=f"router-http-{port}", daemon=True)

    @property
    def port(self) -> int:
        return int(self.server.server_address[1])

    def start(self) -> RouterHttp:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(timeout=5)
