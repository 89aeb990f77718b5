"""Placement API latency: ``POST /v1/placement`` over a 10,000-server inventory at 100 concurrent requests.

The live Controller (fed one forecast per server) is served by ``controller.api`` in this
process; the load comes from a separate process (so client work does not share the
server's GIL): ``concurrency`` asyncio connections, keep-alive, each sending its next
request as soon as the previous answer arrives (closed loop). Printed beside it, measured
in the same run: the in-process baseline (``Controller.place`` called directly, one at a
time) and the API at concurrency 1 (transport overhead without queueing). Issue 23's
target: p99 < 10 ms at 100 concurrent. Closed-loop latency obeys Little's law
(latency ≈ concurrency / throughput), so the p99 at 100 concurrent cannot be below
``100 × per-request service time`` for a server that runs one decision at a time.
"""

from __future__ import annotations

import asyncio
import json
import multiprocessing as mp
import statistics
import time
from datetime import UTC, datetime
from typing import Any

import numpy as np


def _fed_controller(num_servers: int, now: datetime) -> Any:
    from contracts import HorizonForecast, ServerForecast
    from controller.catalogue_file import load_catalogue
    from controller.metrics import ControllerMetrics
    from controller.service import Controller
    from foundation.inventory import generate_inventory

    inv = generate_inventory(num_servers, skus=["A100-SXM-80GB", "H100-SXM-80GB"], domain="bench.example")
    topo = inv.to_topology()
    catalogue = load_catalogue(None, sku=topo.skus[0].name)
    from foundation.settings import ControllerSettings

    ctl = Controller(topo, catalogue, ControllerSettings(stale_after_s=3600.0), metrics=ControllerMetrics(),
                     started_at=now)
    rng = np.random.default_rng(23)
    temps = rng.uniform(45.0, 80.0, size=num_servers)
    powers = rng.uniform(1500.0, 5000.0, size=num_servers)
    for i, sid in enumerate(topo.server_ids):
        t, p = float(temps[i]), float(powers[i])
        hz = [HorizonForecast(horizon_s=h, gpu_temp_c=t, gpu_temp_lo_c=t - 2, gpu_temp_hi_c=t + 3, power_w=p,
                              power_lo_w=p * 0.95, power_hi_w=p * 1.05) for h in (10.0, 60.0, 300.0)]
        fc = ServerForecast(server_id=sid, issued_at=now, based_on_sample_at=now, model_version="bench",
                            gpu_temp_c=t, power_w=p, inlet_temp_c=24.0, slowdown_temp_c=87.0,
                            thermal_headroom_c=84.0 - t, power_headroom_w=1000.0, horizons=hz)
        ctl.handle(ctl.topics.server_forecasts, fc, now=now)
    return ctl


def _bodies(n: int) -> list[bytes]:
    kinds = ("iaas", "saas")
    return [json.dumps({"request_id": f"b{k}", "vm_kind": kinds[k % 2], "num_gpus": (1, 2, 4, 8)[k % 4]}).encode()
            for k in range(n)]


async def _client(port: int, bodies: list[bytes], out: list[float], errors: list[str]) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        for body in bodies:
            head = (f"POST /v1/placement HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\n"
                    f"Content-Length: {len(body)}\r\n\r\n").encode()
            t = time.perf_counter()
            writer.write(head + body)
            await writer.drain()
            status_line = await reader.readline()
            length = 0
            while True:
                line = await reader.readline()
                if line in (b"\r\n", b""):
                    break
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":", 1)[1])
            payload = await reader.readexactly(length)
            out.append((time.perf_counter() - t) * 1e3)
            if b" 200 " not in status_line or b'"feasible":true' not in payload:
                errors.append(status_line.decode(errors="replace").strip())
    finally:
        writer.close()


def _load(port: int, concurrency: int, per_client: int, result: Any) -> None:
    """Child process: ``concurrency`` keep-alive connections, ``per_client`` sequential requests each."""

    async def main() -> tuple[list[float], list[str], float]:
        lat: list[float] = []
        errors: list[str] = []
        bodies = _bodies(per_client)
        t0 = time.perf_counter()
        await asyncio.gather(*(_client(port, bodies, lat, errors) for _ in range(concurrency)))
        return lat, errors, time.perf_counter() - t0

    result.send(asyncio.run(main()))
    result.close()


def _drive(port: int, concurrency: int, per_client: int) -> tuple[list[float], list[str], float]:
    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_load, args=(port, concurrency, per_client, child), name="placement-load")
    proc.start()
    child.close()
    try:
        lat, errors, wall_s = parent.recv()
    finally:
        proc.join(60)
    return lat, errors, wall_s


def _p(xs: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(xs), q))


def run(quick: bool = False) -> dict[str, Any]:
    """Measure the in-process baseline, the API at concurrency 1, and the API at 100 concurrent."""
    from contracts import PlacementRequest
    from controller.api import ApiServer, PlacementApi

    num_servers = 2_000 if quick else 10_000
    concurrency = 100
    per_client = 5 if quick else 30
    now = datetime.now(UTC)
    ctl = _fed_controller(num_servers, now)

    reqs = [PlacementRequest(request_id=f"d{k}", requested_at=now, vm_kind="iaas" if k % 2 else "saas",
                             num_gpus=(1, 2, 4, 8)[k % 4]) for k in range(200 if quick else 1000)]
    ctl.place(reqs[0], now=now)  # warm-up (snapshot built, prepared arrays cached)
    direct = []
    for r in reqs:
        t = time.perf_counter()
        ctl.place(r, now=now)
        direct.append((time.perf_counter() - t) * 1e3)

    server = ApiServer(PlacementApi(ctl, lock=ctl.lock, now=lambda: now), "127.0.0.1", 0,
                       max_connections=concurrency + 8).serve_in_thread()
    try:
        one, one_err, _ = _drive(server.port, 1, 50 if quick else 300)
        many, many_err, wall_s = _drive(server.port, concurrency, per_client)
    finally:
        server.close()
    if one_err or many_err:
        raise RuntimeError(f"placement API answered badly: {(one_err + many_err)[:3]}")
    p99 = _p(many, 99)
    return {
        "servers": num_servers,
        "concurrency": concurrency,
        "requests": len(many),
        "api_p99_ms": round(p99, 2),
        "api_p50_ms": round(statistics.median(many), 2),
        "api_throughput_per_s": round(len(many) / wall_s, 0),
        "api_c1_p99_ms": round(_p(one, 99), 2),
        "api_c1_p50_ms": round(statistics.median(one), 2),
        "baseline_place_p99_ms": round(_p(direct, 99), 3),
        "baseline_place_p50_ms": round(statistics.median(direct), 3),
        "littles_law_floor_ms": round(concurrency * statistics.median(direct), 1),
        "p99_ratio": round(p99 / _p(direct, 99), 1),
        "target_met": p99 < 10.0,
    }
