"""A live Controller over a named, mixed-SKU inventory with fresh forecasts, served by the placement API."""

from __future__ import annotations

import http.client
import json
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from typing import Any

from controller.api import ApiServer, PlacementApi
from controller.metrics import ControllerMetrics
from controller.service import Controller
from foundation.inventory import generate_inventory
from foundation.settings import ControllerSettings
from tests.controller_world import T0, forecast, world_catalogue


def fed_controller(num_servers: int = 24, *, at: datetime = T0, hot: tuple[str, ...] = ()) -> Controller:
    """A Controller over a generated inventory (A100 and H100 racks, node names ``node-<id>``) with forecasts at ``at``.

    Servers in ``hot`` forecast a GPU temperature at their slowdown threshold (no thermal headroom).
    """
    inv = generate_inventory(num_servers, skus=["A100-SXM-80GB", "H100-SXM-80GB"], domain="dc1.example")
    for s in inv.servers:
        s.node_name = f"node-{s.id}"
    topo = inv.to_topology()
    ctl = Controller(topo, world_catalogue(), ControllerSettings(stale_after_s=10.0), metrics=ControllerMetrics(),
                     started_at=at)
    for sid in topo.server_ids:
        hi = 87.0 if sid in hot else 64.0
        ctl.handle(ctl.topics.server_forecasts, forecast(sid, at, hi_c=hi, temp_c=min(hi, 60.0)), now=at)
    return ctl


@contextmanager
def serving(ctl: Controller, *, now: datetime | None = None, max_body_bytes: int = 65536) -> Iterator[ApiServer]:
    """The API for ``ctl`` on a free loopback port; the clock stands at ``now`` (default: the forecasts' time + 1 s)."""
    at = now or T0 + timedelta(seconds=1)
    server = ApiServer(PlacementApi(ctl, lock=ctl.lock, now=lambda: at), "127.0.0.1", 0,
                       max_body_bytes=max_body_bytes).serve_in_thread()
    try:
        yield server
    finally:
        server.close()


def call(port: int, method: str, path: str, body: Any = None, *, raw: bytes | None = None,
         headers: dict[str, str] | None = None) -> tuple[int, Any]:
    """One request on a fresh connection; the decoded JSON answer."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        conn.request(method, path, body=data, headers={"Content-Type": "application/json", **(headers or {})})
        resp = conn.getresponse()
        payload = resp.read()
        return resp.status, json.loads(payload) if payload else None
    finally:
        conn.close()
