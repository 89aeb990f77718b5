"""Many loopback "BMCs" in one process: the DMTF mockup served on N ports by one asyncio loop.

``python -m bench.redfish_farm --root DIR --ports N`` prints one JSON line with the
port list once every port listens, then serves until stdin closes. Each port is a
separate Redfish service (its own address, as each BMC is); all share the mockup's
documents, read once into memory. HTTP/1.1 with keep-alive, GET only, 404 for
unknown paths: just enough for ``RedfishLibraryClient``. It runs in its own
process so ``tapas bench collectors`` counts the collector's CPU apart from it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path


def load_documents(root: Path) -> dict[str, bytes]:
    """``/redfish/v1/<rel>`` → the bytes of ``<root>/<rel>/index.json``, for every resource of the mockup."""
    docs: dict[str, bytes] = {}
    for f in root.rglob("index.json"):
        rel = f.parent.relative_to(root).as_posix()
        path = "/redfish/v1" + ("" if rel == "." else "/" + rel)
        docs[path] = f.read_bytes()
    return docs


def _normalise(target: str) -> str:
    path = target.split("?", 1)[0].split("#", 1)[0].rstrip("/")
    return path or "/"


async def _serve_connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                            docs: dict[str, bytes]) -> None:
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            request_line, _, rest = head.decode("latin-1").partition("\r\n")
            parts = request_line.split(" ")
            length = 0
            for line in rest.split("\r\n"):
                name, _, value = line.partition(":")
                if name.strip().lower() == "content-length":
                    length = int(value.strip() or 0)
            if length:
                await reader.readexactly(length)
            body = docs.get(_normalise(parts[1])) if len(parts) >= 2 and parts[0] == "GET" else None
            if body is None:
                writer.write(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")
            else:
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: "
                             + str(len(body)).encode() + b"\r\n\r\n" + body)
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError):
        pass
    finally:
        writer.close()


async def _main(root: Path, num_ports: int) -> None:
    docs = load_documents(root)
    servers = []
    for _ in range(num_ports):
        srv = await asyncio.start_server(lambda r, w: _serve_connection(r, w, docs), "127.0.0.1", 0, backlog=64)
        servers.append(srv)
    ports = [s.sockets[0].getsockname()[1] for s in servers]
    sys.stdout.write(json.dumps({"ports": ports}) + "\n")
    sys.stdout.flush()
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, sys.stdin.read)  # until the parent closes our stdin
    for s in servers:
        s.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--root", type=Path, required=True)
    parser.add_argument("--ports", type=int, default=500)
    args = parser.parse_args()
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 4 * args.ports + 64)), hard))
    asyncio.run(_main(args.root, args.ports))


if __name__ == "__main__":
    main()
