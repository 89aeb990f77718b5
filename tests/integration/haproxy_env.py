"""A real HAProxy for the router tests: config in a temp dir, an admin stats socket, loopback backends."""

from __future__ import annotations

import shutil
import subprocess
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from foundation.broker import free_port, stop_process_group
from router.haproxy import HaproxyRuntime

HAPROXY = shutil.which("haproxy") or ("/usr/sbin/haproxy" if Path("/usr/sbin/haproxy").exists() else None)


@dataclass
class Backends:
    """Tiny HTTP servers on loopback that count the requests each one answered."""

    names: list[str]
    hits: Counter[str] = field(default_factory=Counter)
    servers: list[ThreadingHTTPServer] = field(default_factory=list)
    threads: list[threading.Thread] = field(default_factory=list)

    def start(self) -> list[int]:
        ports = []
        hits = self.hits
        for name in self.names:

            class Handler(BaseHTTPRequestHandler):
                server_name = name

                def do_GET(self) -> None:  # noqa: N802
                    hits[self.server_name] += 1
                    body = self.server_name.encode()
                    self.send_response(200)
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)

                def log_message(self, *args: object) -> None:
                    return

            srv = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
            srv.daemon_threads = True
            t = threading.Thread(target=srv.serve_forever, daemon=True)
            t.start()
            self.servers.append(srv)
            self.threads.append(t)
            ports.append(int(srv.server_address[1]))
        return ports

    def stop(self) -> None:
        for srv in self.servers:
            srv.shutdown()
            srv.server_close()
        for t in self.threads:
            t.join(5)


@dataclass
class Haproxy:
    proc: subprocess.Popen[bytes]
    socket: Path
    frontend_port: int
    backend: str
    servers: list[str]
    runtime: HaproxyRuntime


def start_haproxy(tmp: Path, backend_ports: list[int], *, backend: str = "llama",
                  initial_weight: int = 10) -> Haproxy:
    """Start haproxy in the foreground (``-db``) on a config written to ``tmp``; waits for its socket."""
    if HAPROXY is None:
        pytest.skip("haproxy not installed (Debian: apt-get install haproxy; .ci/run installs it)")
    sock = tmp / "admin.sock"
    port = free_port()
    servers = [f"s{i}" for i in range(len(backend_ports))]
    lines = [
        "global", f"    stats socket {sock} mode 600 level admin", "    maxconn 256",
        "defaults", "    mode http", "    timeout connect 1s", "    timeout client 5s", "    timeout server 5s",
        "frontend fe", f"    bind 127.0.0.1:{port}", f"    default_backend {backend}",
        f"backend {backend}", "    balance roundrobin",
        *(f"    server {s} 127.0.0.1:{p} weight {initial_weight}" for s, p in zip(servers, backend_ports, strict=True)),
    ]
    cfg = tmp / "haproxy.cfg"
    cfg.write_text("\n".join(lines) + "\n")
    proc = subprocess.Popen([HAPROXY, "-db", "-f", str(cfg)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True)
    runtime = HaproxyRuntime(sock, timeout_s=2.0)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            out = proc.stdout.read().decode() if proc.stdout else ""
            raise RuntimeError(f"haproxy exited {proc.returncode}: {out}")
        if sock.exists():
            try:
                runtime.weights()
                break
            except Exception:  # noqa: BLE001 - socket not listening yet
                pass
        time.sleep(0.05)
    else:
        stop_process_group(proc)
        raise RuntimeError("haproxy's stats socket did not answer within 15 s")
    return Haproxy(proc, sock, port, backend, servers, runtime)


def stop_haproxy(h: Haproxy) -> None:
    stop_process_group(h.proc)
    if h.proc.stdout is not None:
        h.proc.stdout.close()
