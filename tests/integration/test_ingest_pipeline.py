"""``tapas ingest replay|sim`` publishing to the real embedded broker, and the Prometheus counters."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from kafka import KafkaConsumer, TopicPartition

from contracts import GpuReading, GpuSample, InletSample
from foundation.broker import free_port
from foundation.settings import load_settings
from ingest.producer import publish_all
from tapas.bootstrap import collector_producer

pytestmark = pytest.mark.integration


def consume(bootstrap: str, topic: str, *, want: int, match: str, timeout_s: float = 20.0) -> list[dict[str, Any]]:
    """Messages on ``topic`` whose key contains ``match`` (the session broker is shared by other tests)."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, auto_offset_reset="earliest", enable_auto_commit=False)
    try:
        parts = consumer.partitions_for_topic(topic) or set()
        consumer.assign([TopicPartition(topic, p) for p in parts])
        got: list[dict[str, Any]] = []
        deadline = time.monotonic() + timeout_s
        while len(got) < want and time.monotonic() < deadline:
            for records in consumer.poll(timeout_ms=300).values():
                got += [json.loads(r.value) for r in records if r.key and match in r.key.decode()]
        return got
    finally:
        consumer.close()


def test_replay_cli_publishes_every_row_keyed_by_server(broker: Any, tmp_path: Path) -> None:
    tag = uuid.uuid4().hex[:8]
    servers = [f"replay-{tag}-{i}" for i in range(3)]
    rows = [{"server_id": s, "at_s": float(t), "hottest_gpu_temp_c": 55.0 + t, "gpu_power_w": 2000.0,
             "server_power_w": 2600.0, "inlet_temp_c": 21.5, "num_gpus": 8, "pdu_id": f"pdu-{tag}"}
            for t in range(4) for s in servers]
    path = tmp_path / "rec.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    proc = subprocess.run([sys.executable, "-m", "tapas.cli", "ingest", "replay", str(path), "--speed", "0",
                           "--bootstrap", broker.bootstrap], capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    gpu = consume(broker.bootstrap, "tapas.telemetry.gpu", want=12, match=tag)
    assert sorted((g["server_id"], g["sampled_at"]) for g in gpu) == sorted(
        {(g["server_id"], g["sampled_at"]) for g in gpu})  # none twice
    assert len(gpu) == 12 and {g["source"] for g in gpu} == {"replay"}
    assert len(consume(broker.bootstrap, "tapas.telemetry.inlet", want=12, match=tag)) == 12
    pdu = consume(broker.bootstrap, "tapas.telemetry.pdu", want=4, match=tag)
    assert len(pdu) == 4 and all(p["power_w"] == 3 * 2600.0 for p in pdu)


def test_counters_on_the_prometheus_endpoint(broker: Any) -> None:
    from prometheus_client import start_http_server

    settings = load_settings(kafka={"bootstrap_servers": broker.bootstrap})
    producer = collector_producer(settings, source="redfish")
    at = datetime.now(UTC)
    good = InletSample(server_id="m1", sampled_at=at, inlet_temp_c=22.0)
    bad = GpuSample(server_id="m1", sampled_at=at, gpus=[
        GpuReading(gpu_index=0, gpu_temp_c=None, power_usage_w=None, invalid_fields=["gpu_temp_c", "power_usage_w"])])
    publish_all(producer, [good, bad, good])
    assert producer.flush(20)
    port = free_port()
    server, thread = start_http_server(port, addr="127.0.0.1", registry=producer.metrics.registry)
    try:
        body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
        producer.close(5)
    assert 'tapas_ingest_samples_sent_total{source="redfish"} 3.0' in body
    assert 'tapas_ingest_invalid_readings_total{source="redfish"} 2.0' in body
    assert 'tapas_ingest_samples_dropped_total{source="redfish"} 0.0' in body
    assert 'tapas_ingest_buffered_samples{source="redfish"} 0.0' in body
