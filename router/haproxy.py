"""HAProxy's runtime API over its stats socket (``stats socket PATH level admin``).

One command per connection (HAProxy's non-interactive mode: it answers and closes),
so a reply is never confused with the next command's. Only two verbs are used:
``set server <backend>/<server> weight <0..256>`` and ``show servers state``.
"""

from __future__ import annotations

import socket
from pathlib import Path

from contracts import SourceError
from router.weights import HAPROXY_MAX_WEIGHT, ServerRef


class HaproxyRuntime:
    """A client of one HAProxy's runtime API (a unix socket, or ``host:port`` for a TCP stats socket)."""

    def __init__(self, address: str | Path, *, timeout_s: float = 2.0) -> None:
        self.address = str(address)
        self.timeout_s = timeout_s

    def execute(self, command: str) -> str:
        """Send one command and return HAProxy's reply text.

        Raises:
            SourceError: the socket cannot be reached or does not answer in time.
        """
        if "\n" in command or ";" in command:
            raise ValueError(f"one command at a time, got {command!r}")
        try:
            if ":" in self.address and not Path(self.address).exists():
                host, port = self.address.rsplit(":", 1)
                sock = socket.create_connection((host, int(port)), timeout=self.timeout_s)
            else:
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                sock.settimeout(self.timeout_s)
                sock.connect(self.address)
            with sock:
                sock.sendall(command.encode() + b"\n")
                chunks = []
                while True:
                    chunk = sock.recv(65536)
                    if not chunk:
                        break
                    chunks.append(chunk)
        except OSError as exc:
            raise SourceError(f"HAProxy runtime API {self.address}: {exc.__class__.__name__}: {exc} "
                              f"(is haproxy running with 'stats socket {self.address} level admin'?)") from exc
        return b"".join(chunks).decode(errors="replace")

    def set_weight(self, ref: ServerRef, weight: int) -> None:
        """Set one server's absolute weight.

        Raises:
            SourceError: HAProxy refused (unknown backend or server, socket not at level admin).
        """
        if not 0 <= weight <= HAPROXY_MAX_WEIGHT:
            raise ValueError(f"weight {weight} outside 0..{HAPROXY_MAX_WEIGHT}")
        reply = self.execute(f"set server {ref} weight {weight}").strip()
        if reply:
            raise SourceError(f"HAProxy {self.address}: 'set server {ref} weight {weight}' refused: {reply}")

    def weights(self) -> dict[ServerRef, int]:
        """Every server's current weight, from ``show servers state`` (its ``srv_uweight`` column)."""
        reply = self.execute("show servers state")
        lines = [ln for ln in reply.splitlines() if ln.strip()]
        header = next((ln for ln in lines if ln.startswith("#")), None)
        if header is None:
            raise SourceError(f"HAProxy {self.address}: unexpected 'show servers state' reply: {reply[:200]!r}")
        cols = header.lstrip("#").split()
        b, s, w = cols.index("be_name"), cols.index("srv_name"), cols.index("srv_uweight")
        out: dict[ServerRef, int] = {}
        for ln in lines:
            if ln.startswith("#"):
                continue
            fields = ln.split()
            if len(fields) > max(b, s, w) and fields[w].isdigit():
                out[ServerRef(fields[b], fields[s])] = int(fields[w])
        return out
