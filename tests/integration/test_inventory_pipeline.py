"""A named, mixed-SKU inventory through the real pipeline: ``tapas worker`` (child process, embedded broker) and
the live controller both build their topology from TAPAS_TOPOLOGY__INVENTORY.

Asserted: every inventory server's forecast reaches the controller, carrying its own SKU's
slowdown threshold (the samples leave it out, so only the worker's inventory can supply it);
the inventory's rows arrive as domain forecasts; a server the inventory does not list raises
exactly one ``unknown_server`` event; the placement API served inside the controller answers
with inventory servers. 2,000 servers, the issue's size: about 25 s here, so in the default run.
"""

from __future__ import annotations

import http.client
import json
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from kafka import KafkaProducer

from contracts import ControlEvent, GpuSample, decode
from controller.catalogue_file import load_catalogue
from controller.metrics import ControllerMetrics
from controller.service import Controller, ControllerTopics, run_service
from foundation.broker import free_port
from foundation.inventory import Inventory, SkuEntry, dump_inventory, generate_inventory, load_inventory
from foundation.settings import Settings
from streams.telemetry_factory import SyntheticTelemetry
from tapas.bootstrap import collector_producer, kafka_clients
from tests.streams_helpers import WorkerProcess, collect, end_consumer

pytestmark = pytest.mark.integration

L40S = SkuEntry(name="L40S-48GB", tdp_w=350.0, idle_w=35.0, slowdown_temp_c=89.0, max_freq_mhz=2520.0,
                min_freq_mhz=210.0, perf_scale=1.2)


def named_inventory(num_servers: int, tag: str) -> Inventory:
    """Host-named servers (``<tag>-gpu-0001``), node names of their own, three SKUs alternating by rack."""
    inv = generate_inventory(num_servers, skus=["A100-SXM-80GB", "H100-SXM-80GB"], oversubscription=1.0)
    inv.skus.append(L40S)
    for z in inv.zones:  # budgets at nameplate (oversubscription 1) and matching cooling: room for a placement
        z.cooling_capacity_w /= 0.62
    racks: dict[str, int] = {}
    for n, s in enumerate(inv.servers):
        k = racks.setdefault(s.rack, len(racks))
        if k % 3 == 2:
            s.sku = L40S.name
        s.id = f"{tag}-gpu-{n:04d}"
        s.hostname = f"{s.id}.dc1.example"
        s.node_name = f"{tag}-node-{n:04d}"
        s.bmc_address = f"10.{n // 65536}.{(n // 256) % 256}.{n % 256}"
    return inv


def _send(producer: KafkaProducer, samples: list[GpuSample]) -> None:
    for g in samples:
        # no slowdown in the samples: only the worker's inventory can say which SKU (and limit) a server has
        g = g.model_copy(update={"gpus": [r.model_copy(update={"slowdown_temp_c": None}) for r in g.gpus]})
        producer.send("tapas.telemetry.gpu", key=g.server_id.encode(), value=g.to_bytes())
    producer.flush()


@pytest.mark.parametrize("num_servers", [2000])
def test_worker_and_controller_run_on_a_named_mixed_sku_inventory(
        broker: Any, tmp_path: Path, topic_factory: Callable[..., str], num_servers: int) -> None:
    tag = f"inv{time.monotonic_ns() % 10**6:06d}"
    inv_path = tmp_path / "fleet.toml"
    inv_path.write_text(dump_inventory(named_inventory(num_servers, tag)), encoding="utf-8")
    topo = load_inventory(inv_path).to_topology()
    assert len(topo.skus) == 3 and topo.num_servers == num_servers

    topics = ControllerTopics(events=topic_factory("ev"), placement_hints=topic_factory("hint"),
                              routing_weights=topic_factory("rw"), commands=topic_factory("cmd"),
                              mode=topic_factory("mode"), status=topic_factory("st"), deadletter=topic_factory("dl"))
    api_port = free_port()
    settings = Settings(kafka={"bootstrap_servers": broker.bootstrap}, topology={"inventory": inv_path},
                        controller={"tick_s": 0.5, "metrics_port": 0, "health_port": 0, "stale_after_s": 120.0},
                        api={"port": api_port})
    catalogue = load_catalogue(None, sku=topo.skus[0].name)
    stop, ready = threading.Event(), threading.Event()
    holder: list[Controller] = []
    thread = threading.Thread(target=run_service, name="controller-under-test", kwargs=dict(
        settings=settings, topology=topo, catalogue=catalogue, clients=kafka_clients(settings),
        producer=collector_producer(settings, source="controller"), stop=stop, topics=topics, metrics=ControllerMetrics(),
        on_ready=lambda c: (holder.append(c), ready.set())))
    worker = WorkerProcess(broker.bootstrap, tmp_path / "worker")
    (tmp_path / "worker").mkdir()
    worker.env["TAPAS_TOPOLOGY__INVENTORY"] = str(inv_path)
    producer = KafkaProducer(bootstrap_servers=broker.bootstrap, linger_ms=5, batch_size=1_000_000)
    events = end_consumer(broker.bootstrap, topics.events)
    thread.start()
    worker.start()
    try:
        assert ready.wait(30), "controller did not start"
        ctl = holder[0]
        worker.state(timeout_s=90)  # the worker's web page answers once it has joined
        ghost = f"{tag}-not-in-inventory"
        fleet = SyntheticTelemetry([*topo.server_ids, ghost], start_at=datetime.now(UTC) - timedelta(seconds=30),
                                   seed=5, inlet_every=1000)
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            gpus, _inlets, _pdus = fleet.step()
            _send(producer, gpus)
            with ctl.lock:
                have = int(ctl.state.has_forecast.sum())
                rows = {d for (kind, d) in ctl.state.domains if kind == "row"}
            if have == num_servers and set(topo.row_ids) <= rows:
                break
            time.sleep(1.0)
        assert have == num_servers, f"forecasts for {have}/{num_servers} servers; worker log:\n{worker.log_tail()}"
        assert set(topo.row_ids) <= rows, f"row forecasts for {sorted(rows)} of {topo.row_ids}"
        with ctl.lock:
            slowdown = ctl.state.slowdown_temp_c.copy()
        np.testing.assert_array_equal(slowdown, topo.server_array("sku.slowdown_temp_c"))
        assert (slowdown == 89.0).sum() > 0 and (slowdown == 87.0).sum() > 0

        seen = collect(events, lambda ms: any(b"unknown_server" in m.value for m in ms), 30)
        unknown = [e for e in (decode(ControlEvent, m.value) for m in seen) if e.event_kind == "unknown_server"]
        # the shared test broker may carry other tests' servers on the default telemetry topics: judge ours only
        named = [e.domain_id for e in unknown]
        assert named.count(ghost) == 1 and not set(named) & set(topo.server_ids), (
            f"one event for the unknown server, none for known ones; controller saw {ctl.state.unknown_server_ids}, "
            f"{len(seen)} events: {[m.value[:200] for m in seen[:5]]}")
        with ctl.lock:
            assert ghost in ctl.state.unknown_server_ids and not ctl.state.unknown_server_ids & set(topo.server_ids)

        conn = http.client.HTTPConnection("127.0.0.1", api_port, timeout=10)
        try:
            conn.request("POST", "/v1/placement", body=json.dumps({"vm_kind": "saas", "num_gpus": 4,
                                                                   "expected_power_w_per_gpu": 200.0}),
                         headers={"Content-Type": "application/json"})
            hint = json.loads(conn.getresponse().read())
        finally:
            conn.close()
        assert hint["feasible"], hint["reason"]
        assert f"of {num_servers} servers" in hint["reason"]
        assert hint["candidates"] and all(c["server_id"] in topo.by_id for c in hint["candidates"])
    finally:
        stop.set()
        thread.join(30)
        worker.stop()
        producer.close(timeout=5)
        events.close()
