"""Liveness (``/healthz``) and readiness (``/readyz``) probes shared by every long-running service.

``/healthz`` answers 200 while the process serves HTTP at all (a liveness probe:
restart me when it stops). ``/readyz`` answers 200 only while the service consumes
its input and that input is fresh, 503 otherwise; its JSON body says why
(``consuming``, the age of the newest input, the threshold), so an operator or a
Kubernetes readiness probe sees staleness without reading logs.

The decision is pure (:func:`readiness` takes ``now``); the worker (Faust web),
the dashboard (Flask) and the controller and node agent (:class:`HealthServer`,
stdlib HTTP on its own bind address and port) only wrap it. Neither path needs
credentials: probes carry none, and the bodies hold no operational data beyond ages.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

log = logging.getLogger(__name__)

#: The probe paths, served without authentication by every service.
HEALTH_PATHS: tuple[str, ...] = ("/healthz", "/readyz")


@dataclass(frozen=True)
class Readiness:
    """Whether a service is ready, and the facts behind it.

    Attributes:
        service: ``worker``, ``controller``, ``dashboard`` or ``agent``.
        consuming: its input loop is running (partitions assigned, consumer thread alive...).
        last_input_at: when it last received input (None: never).
        age_s: seconds since ``last_input_at`` at the time of the probe (None: never).
        stale_after_s: inputs older than this make the service not ready.
        reason: why it is not ready ("" when ready).
        detail: service-specific facts for the body (the agent's safe mode, the controller's mode).
    """

    service: str
    consuming: bool
    last_input_at: datetime | None
    age_s: float | None
    stale_after_s: float
    reason: str
    detail: Mapping[str, Any] = field(default_factory=dict)

    @property
    def ready(self) -> bool:
        """True when consuming and the newest input is no older than ``stale_after_s``."""
        return not self.reason

    @property
    def stale(self) -> bool:
        """True when no input arrived yet or the newest is older than ``stale_after_s``."""
        return self.age_s is None or self.age_s > self.stale_after_s

    def to_json(self) -> dict[str, Any]:
        """The ``/readyz`` body."""
        return {"service": self.service, "ready": self.ready, "consuming": self.consuming, "stale": self.stale,
                "last_input_at": self.last_input_at.isoformat() if self.last_input_at else None,
                "age_s": None if self.age_s is None else round(self.age_s, 3),
                "stale_after_s": self.stale_after_s, "reason": self.reason, **self.detail}


def readiness(service: str, *, consuming: bool, last_input_at: datetime | None, now: datetime,
              stale_after_s: float, not_ready_because: str = "",
              detail: Mapping[str, Any] | None = None) -> Readiness:
    """Judge readiness from the facts a service holds (pure: ``now`` is an argument).

    ``not_ready_because`` is a service's own reason to refuse traffic (the agent in safe mode).

    Examples:
        >>> from datetime import UTC, datetime, timedelta
        >>> t = datetime(2026, 1, 1, tzinfo=UTC)
        >>> readiness("worker", consuming=True, last_input_at=t, now=t + timedelta(seconds=3),
        ...           stale_after_s=10).ready
        True
        >>> readiness("worker", consuming=True, last_input_at=t, now=t + timedelta(seconds=11),
        ...           stale_after_s=10).reason
        'newest input is 11.0 s old (stale after 10 s)'
        >>> readiness("worker", consuming=False, last_input_at=None, now=t, stale_after_s=10).reason
        'not consuming'
    """
    age_s = None if last_input_at is None else max(0.0, (now - last_input_at).total_seconds())
    if not consuming:
        reason = "not consuming"
    elif age_s is None:
        reason = "no input received yet"
    elif age_s > stale_after_s:
        reason = f"newest input is {age_s:.1f} s old (stale after {stale_after_s:g} s)"
    else:
        reason = not_ready_because
    return Readiness(service, consuming, last_input_at, age_s, stale_after_s, reason, dict(detail or {}))


def probe_response(path: str, service: str, probe: Callable[[], Readiness]) -> tuple[int, dict[str, Any]] | None:
    """Status and JSON body for a probe path (None for any other path).

    A probe that raises makes ``/readyz`` answer 503 with the error, never a 500 page.
    """
    path = path.split("?", 1)[0].rstrip("/") or "/"
    if path == "/healthz":
        return 200, {"service": service, "alive": True}
    if path == "/readyz":
        try:
            r = probe()
        except Exception as exc:  # noqa: BLE001 - a broken probe means not ready, and says why
            log.exception("event=readiness_probe_failed service=%s", service)
            return 503, {"service": service, "ready": False, "reason": f"probe failed: {exc}"}
        return (200 if r.ready else 503), r.to_json()
    return None


class HealthServer:
    """``/healthz`` and ``/readyz`` on their own address and port (one daemon thread).

    Args:
        service: the name reported in the bodies.
        probe: returns the service's current :class:`Readiness`.
        host: bind address (``0.0.0.0`` inside a container so the orchestrator reaches it).
        port: port; 0 picks a free one (read :attr:`port` after :meth:`start`).
    """

    def __init__(self, service: str, probe: Callable[[], Readiness], *, host: str = "127.0.0.1",
                 port: int = 0) -> None:
        self.service = service
        self.probe = probe
        self.host = host
        self._requested_port = port
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        """The bound port (after :meth:`start`)."""
        if self._server is None:
            raise RuntimeError("HealthServer not started")
        return int(self._server.server_address[1])

    def start(self) -> HealthServer:
        """Bind and serve in the background."""
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                answer = probe_response(self.path, owner.service, owner.probe)
                status, body = answer if answer is not None else (404, {"error": f"no route {self.path}"})
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - quiet: probes every few s
                return

        self._server = ThreadingHTTPServer((self.host, self._requested_port), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name=f"{self.service}-health",
                                        daemon=True)
        self._thread.start()
        log.info("event=health_server_started service=%s addr=%s:%d", self.service, self.host, self.port)
        return self

    def close(self) -> None:
        """Stop serving and release the port."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None


def start_health_server(service: str, probe: Callable[[], Readiness], *, host: str,
                        port: int) -> HealthServer | None:
    """Start a :class:`HealthServer`; a port already taken is logged, not fatal (the service itself still runs).

    An orchestrator then sees the probe fail and reports the service unhealthy, which
    is the truth about its health endpoint; stopping the controller or a node agent
    over it would be worse.
    """
    try:
        return HealthServer(service, probe, host=host, port=port).start()
    except OSError as exc:
        log.error("event=health_server_failed service=%s addr=%s:%d error=%s (set the %s health port "
                  "setting to a free port)", service, host, port, exc, service)
        return None
