"""``tapas bench worker``: the real stream worker against Faust's floor and the Kafka client's limit, same messages.

One embedded broker; the simulator's telemetry (``simulator.feed.TelemetryFeed``)
for a cluster of ``num_servers`` is loaded into the telemetry topics first, then
three readers consume the same GPU samples:

* ``plain_consumer_per_s``: a plain aiokafka consumer with ``json.loads`` (the client's limit);
* ``faust_floor_per_s``: a minimal Faust agent (``take_events`` batches and the same
  consumer settings as the worker) that only decodes each sample with its contract
  (``contracts.decode``), nothing else — run once before and once after the worker,
  and averaged (``faust_floor_runs_per_s`` has both), because this host's speed
  drifts by up to 1.7× within minutes and one floor run beside one worker run gave
  ratios from 0.47 to 0.69 on the same code;
* ``cpu_ratio``: floor CPU µs per sample / worker CPU µs per sample (each whole
  process, all threads, over the same window as its rate) — a diagnostic beside
  ``ratio`` that moves much less with the host's speed and with how the two
  processes happen to share the cores with the broker;
* ``server_samples_per_s``: the real ``tapas worker`` (joins, models, forecasts,
  changelog, history store), from the Kafka timestamps of the first and last
  forecast it publishes for the backlog (one forecast per sample).

Then, with the same worker still running, samples are sent live at a fixed
``latency_rate_per_s`` server-samples/s stamped with the send time; latency is the
forecast's Kafka timestamp (set when the worker publishes it) minus its
``based_on_sample_at``. Rates exclude process start-up and group joins. The host's
load average is reported beside the figures: on a shared host every rate moves
with it, which is why the three readers run in the same call on the same messages.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np

from foundation.kafka import assign_all, assign_all_async

GPU_TOPIC = "tapas.telemetry.gpu"
FORECAST_TOPIC = "tapas.forecasts.server"


def _produce_backlog(bootstrap: str, num_servers: int, ticks: int, cluster_file: Path) -> tuple[int, int, list[Any]]:
    """Load ``ticks`` of simulated telemetry; returns (GPU samples, mean bytes, last tick's GPU samples)."""
    from kafka import KafkaProducer

    from foundation.topology import load_topology
    from simulator.feed import TelemetryFeed

    topo = load_topology(cluster_file)
    start = datetime.now(UTC).replace(microsecond=0) - timedelta(seconds=ticks + 30)
    feed = TelemetryFeed(topo, seed=7, start_at=start)
    producer = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=20, batch_size=256 * 1024,
                             max_request_size=8 << 20)
    sent = size = 0
    last: list[Any] = []
    for _ in range(ticks):
        tick = feed.step()
        for p in tick.pdu:
            producer.send("tapas.telemetry.pdu", key=p.pdu_id.encode(), value=p.to_bytes())
        for m in tick.inlet:
            producer.send("tapas.telemetry.inlet", key=m.server_id.encode(), value=m.to_bytes())
        for g in tick.gpu:
            raw = g.to_bytes()
            size += len(raw)
            producer.send(GPU_TOPIC, key=g.server_id.encode(), value=raw)
            sent += 1
        last = tick.gpu
    producer.flush()
    producer.close()
    return sent, size // max(sent, 1), last


async def _plain_consumer_rate(bootstrap: str, count: int) -> float:
    from aiokafka import AIOKafkaConsumer

    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False,
                                max_partition_fetch_bytes=8 << 20, fetch_max_bytes=64 << 20)
    await consumer.start()
    try:
        await assign_all_async(consumer, {GPU_TOPIC: "beginning"})
        seen = 0
        t0 = 0.0
        while seen < count:
            got = await consumer.getmany(timeout_ms=1000, max_records=10_000)
            if not got:
                raise RuntimeError(f"plain consumer saw only {seen} of {count} samples")
            if seen == 0:
                t0 = time.perf_counter()
            for msgs in got.values():
                for m in msgs:
                    json.loads(m.value)
                seen += len(msgs)
        return seen / (time.perf_counter() - t0)
    finally:
        await consumer.stop()


def _floor_main(bootstrap: str, count: int, app_id: str, datadir: str) -> None:
    """The minimal Faust agent (run as a child process): decode each sample with its contract, nothing else.

    ``datadir`` is Faust's data folder (a temporary one: by default Faust creates ``<app_id>-data`` in the
    working directory, which left a ``bench-floor-*-data`` folder in the checkout per run).
    """
    import faust

    from contracts.errors import ContractError
    from contracts.messages import GpuSample, decode
    from foundation.settings import load_settings
    from streams.app import tansu_safe_consumer_class

    batch = load_settings().worker  # the worker's own batch size and wait: the floor batches exactly as it does
    app = faust.App(app_id, broker=f"kafka://{bootstrap}", value_serializer="raw", key_serializer="raw",
                    store="memory://", web_enabled=False, topic_replication_factor=1, datadir=datadir,
                    broker_session_timeout=6.0, broker_heartbeat_interval=1.0, broker_max_poll_interval=10.0,
                    broker_rebalance_timeout=10.0, consumer_auto_offset_reset="earliest")
    # The same consumer as the worker (its fetch wait, corrected highwaters): a fair floor.
    app.transport.Consumer = tansu_safe_consumer_class(  # type: ignore[misc]
        {"bootstrap_servers": bootstrap}, fetch_max_wait_ms=batch.fetch_max_wait_ms)
    topic = app.topic(GPU_TOPIC, value_serializer="raw", key_serializer="raw")
    marks: dict[str, float] = {"seen": 0.0}

    @app.agent(topic)
    async def floor(stream: Any) -> None:
        async for events in stream.take_events(batch.batch_max, within=batch.batch_within_s):
            if marks["seen"] == 0:
                marks["t0"] = time.perf_counter()
                marks["c0"] = time.process_time()
            for e in events:
                try:
                    decode(GpuSample, e.message.value)
                except ContractError:
                    pass
            marks["seen"] += len(events)
            if marks["seen"] >= count:
                rate = (marks["seen"]) / (time.perf_counter() - marks["t0"])
                cpu_us = (time.process_time() - marks["c0"]) / marks["seen"] * 1e6
                print(json.dumps({"faust_floor_per_s": rate, "cpu_us_per_sample": cpu_us}), flush=True)
                os._exit(0)

    sys.argv = [sys.argv[0], "worker", "--loglevel", "warn"]
    app.main()


def _run_floor(bootstrap: str, count: int, timeout_s: float) -> tuple[float, float]:
    """(samples/s, CPU µs per sample of the whole process) of the floor agent over ``count`` samples."""
    with tempfile.TemporaryDirectory(prefix="tapas-bench-floor-") as datadir:
        proc = subprocess.run([sys.executable, "-m", "bench.worker", "floor", bootstrap, str(count),
                               f"bench-floor-{uuid.uuid4().hex[:6]}", datadir], capture_output=True, text=True,
                              timeout=timeout_s, check=False)
    for line in (proc.stdout + proc.stderr).splitlines():  # Faust routes print() into its log
        if '{"faust_floor_per_s"' in line:
            got = json.loads(line[line.index("{"):line.rindex("}") + 1])
            return float(got["faust_floor_per_s"]), float(got["cpu_us_per_sample"])
    raise RuntimeError(f"faust floor agent printed no figure (rc {proc.returncode}): {proc.stderr[-3000:]}")


class _Forecasts:
    """Group-less reader of the server-forecast topic from its beginning."""

    def __init__(self, bootstrap: str) -> None:
        from kafka import KafkaConsumer

        self.consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False,
                                      max_partition_fetch_bytes=8 << 20)
        assign_all(self.consumer, {FORECAST_TOPIC: "beginning"}, missing="skip")

    def read(self, until: Any, timeout_s: float) -> list[tuple[int, bytes]]:
        """(Kafka timestamp ms, value) of forecasts until ``until(list)`` holds or the time runs out."""
        out: list[tuple[int, bytes]] = []
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and not until(out):
            for msgs in self.consumer.poll(timeout_ms=500, max_records=20_000).values():
                out.extend((m.timestamp, m.value) for m in msgs)
        return out

    def close(self) -> None:
        self.consumer.close()


def _paced_send(bootstrap: str, templates: list[bytes], placeholder: bytes, rate_per_s: float,
                duration_s: float) -> int:
    """Send ``templates`` round-robin at ``rate_per_s``, each stamped with the send time."""
    from kafka import KafkaProducer

    producer = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=2)
    keys = [json.loads(t)["server_id"].encode() for t in templates]
    sent = 0
    t0 = time.perf_counter()
    try:
        while True:
            elapsed = time.perf_counter() - t0
            if elapsed >= duration_s:
                break
            due = int(elapsed * rate_per_s) + 1
            while sent < due:
                k = sent % len(templates)
                now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ").encode()
                producer.send(GPU_TOPIC, key=keys[k], value=templates[k].replace(placeholder, now))
                sent += 1
            time.sleep(0.002)
        producer.flush()
    finally:
        producer.close()
    return sent


def run(quick: bool = False, *, latency_rate_per_s: float = 2000.0) -> dict[str, Any]:
    """Measure the worker, the Faust floor and the plain consumer on the same samples (see module docstring).

    ``latency_rate_per_s`` is the issue's fixed 2,000 server-samples/s; a lower rate
    separates the latency of the path itself from queueing when the worker is saturated.
    """
    from contracts.messages import ServerForecast
    from foundation.broker import EmbeddedBroker, free_port, stop_process_group

    num_servers = 500 if quick else 2000
    ticks = 6 if quick else 20  # 40,000 samples: ~20 s of worker time, long enough to average the host's drift
    latency_rate = latency_rate_per_s
    latency_s = 8.0 if quick else 20.0
    with tempfile.TemporaryDirectory(prefix="tapas-bench-worker-") as tmp, \
            EmbeddedBroker(port=free_port()) as broker:
        work = Path(tmp)
        cluster = work / "cluster.toml"
        cluster.write_text(f'[cluster]\nname = "bench"\nnum_servers = {num_servers}\n')
        count, mean_bytes, last_tick = _produce_backlog(broker.bootstrap, num_servers, ticks, cluster)
        plain = asyncio.run(_plain_consumer_rate(broker.bootstrap, count))
        floor_before, floor_cpu_before = _run_floor(broker.bootstrap, count, timeout_s=300)

        env = dict(os.environ, TAPAS_KAFKA__BOOTSTRAP_SERVERS=broker.bootstrap, TAPAS_CLUSTER_FILE=str(cluster),
                   TAPAS_WORKER__APP_ID=f"bench-worker-{uuid.uuid4().hex[:6]}",
                   TAPAS_WORKER__DATA_DIR=str(work / "faust"), TAPAS_STORE__PATH=str(work / "history.sqlite"),
                   TAPAS_REGISTRY_DIR=str(work / "registry"))
        log = open(work / "worker.log", "wb")  # noqa: SIM115 - closed below
        worker = subprocess.Popen([sys.executable, "-m", "tapas.cli", "worker", "--web-port", str(free_port())],
                                  env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        forecasts = _Forecasts(broker.bootstrap)
        try:
            import psutil

            first = forecasts.read(lambda out: len(out) > 0, timeout_s=600)
            cpu0 = psutil.Process(worker.pid).cpu_times()
            backlog = first + forecasts.read(lambda out: len(out) + len(first) >= count, timeout_s=600)
            cpu1 = psutil.Process(worker.pid).cpu_times()
            worker_cpu_us = ((cpu1.user + cpu1.system - cpu0.user - cpu0.system)
                             / max(len(backlog) - len(first), 1) * 1e6)
            if len(backlog) < count:
                raise RuntimeError(f"worker published {len(backlog)} of {count} forecasts; see {work}/worker.log")
            stamps = sorted(ts for ts, _ in backlog)
            worker_rate = (len(stamps) - 1) / max((stamps[-1] - stamps[0]) / 1000.0, 1e-3)

            placeholder = b"PLACEHOLDER-SAMPLED-AT"
            templates = []
            for g in last_tick:
                d = json.loads(g.to_bytes())
                d["sampled_at"] = placeholder.decode()
                templates.append(json.dumps(d, separators=(",", ":")).encode())
            live_start = datetime.now(UTC)
            sent = _paced_send(broker.bootstrap, templates, placeholder, latency_rate, latency_s)
            live = forecasts.read(lambda out: False, timeout_s=3.0)
        finally:
            forecasts.close()
            stop_process_group(worker, 30.0)
            log.close()
        floor_after, floor_cpu_after = _run_floor(broker.bootstrap, count, timeout_s=300)
        lat_ms = []
        issue_ms = []
        for ts, raw in live:
            f = ServerForecast.model_validate_json(raw)
            if f.based_on_sample_at >= live_start:
                lat_ms.append(ts - f.based_on_sample_at.timestamp() * 1000.0)
                issue_ms.append((f.issued_at - f.based_on_sample_at).total_seconds() * 1000.0)
        if not lat_ms:
            raise RuntimeError("no live forecasts came back during the latency phase")
        floor = (floor_before + floor_after) / 2.0
        floor_cpu_us = (floor_cpu_before + floor_cpu_after) / 2.0
        lat = np.asarray(lat_ms)
        return {
            "server_samples_per_s": round(worker_rate, 1),
            "faust_floor_per_s": round(floor, 1),
            "faust_floor_runs_per_s": [round(floor_before, 1), round(floor_after, 1)],
            "plain_consumer_per_s": round(plain, 1),
            "ratio": round(worker_rate / floor, 3),
            "worker_cpu_us_per_sample": round(worker_cpu_us, 1),
            "faust_floor_cpu_us_per_sample": round(floor_cpu_us, 1),
            "cpu_ratio": round(floor_cpu_us / worker_cpu_us, 3),
            "p50_latency_ms": round(float(np.percentile(lat, 50)), 1),
            "p99_latency_ms": round(float(np.percentile(lat, 99)), 1),
            "p99_issue_latency_ms": round(float(np.percentile(issue_ms, 99)), 1),
            "latency_rate_per_s": latency_rate,
            "latency_samples_sent": sent,
            "latency_forecasts": len(lat_ms),
            "num_servers": num_servers,
            "backlog_samples": count,
            "mean_sample_bytes": mean_bytes,
            "host_load_avg_1m": round(os.getloadavg()[0], 2),
            "host_cpus": os.cpu_count() or 0,
        }


if __name__ == "__main__":  # child-process entry for the Faust floor agent
    if len(sys.argv) >= 6 and sys.argv[1] == "floor":
        _floor_main(sys.argv[2], int(sys.argv[3]), sys.argv[4], sys.argv[5])
