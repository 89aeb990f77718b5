"""``tapas bench producer``: server-samples/s through the ingest producer beside raw kafka-python sends.

Both sides run in this one process against one embedded Tansu broker, with the same
producer settings (compression, linger, batch size), so the ratio isolates what the
ingest layer costs: contract serialisation, keying, the buffered FIFO and its
windowed delivery. The payloads of the raw side are the very bytes the ingest side
produced, so sizes match. Each sample carries 8 GPUs (the target: at least 20,000
server-samples/s on this machine). ``raw_send_small_per_s`` repeats the raw side with
300-byte payloads: kafka-python's per-record cost with almost no payload, the ceiling
any one-record-per-server-sample producer built on it can reach here. Figures are
medians over repeats.
"""

from __future__ import annotations

import statistics
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np

from contracts.messages import GpuReading, GpuSample, WorkloadContext

TARGET_SERVER_SAMPLES_PER_S = 20_000.0
NUM_GPUS = 8
SMALL_PAYLOAD_BYTES = 300
"""``raw_send_small_per_s`` sends payloads this small: kafka-python's per-record ceiling on this host."""


def simulated_samples(num_samples: int, *, num_servers: int = 512, seed: int = 0) -> list[GpuSample]:
    """Plausible 8-GPU samples (temperatures, powers, clocks, utilisation, workload) from a seeded RNG."""
    rng = np.random.default_rng(seed)
    start = datetime(2026, 11, 25, tzinfo=UTC)
    temps = rng.uniform(45.0, 85.0, size=(num_samples, NUM_GPUS)).round(1)
    powers = rng.uniform(90.0, 700.0, size=(num_samples, NUM_GPUS)).round(1)
    utils = rng.uniform(0.0, 100.0, size=(num_samples, NUM_GPUS)).round(1)
    out = []
    for i in range(num_samples):
        gpus = [GpuReading(gpu_index=g, gpu_temp_c=float(temps[i, g]), power_usage_w=float(powers[i, g]),
                           power_limit_w=700.0, sm_clock_mhz=1980.0, mem_clock_mhz=2619.0,
                           gpu_util_pct=float(utils[i, g]), fb_used_mib=61_440.0,
                           total_energy_mj=1.0e9 + i * 500.0, slowdown_temp_c=87.0) for g in range(NUM_GPUS)]
        out.append(GpuSample(server_id=f"srv-{i % num_servers:04d}", sampled_at=start + timedelta(seconds=i // num_servers),
                             gpus=gpus, source="sim",
                             workload=WorkloadContext(prefill_tokens_per_s=2000.0, decode_tokens_per_s=800.0,
                                                      batch_size=16.0, config_id="llama2-70b-tp8-fp16-1980")))
    return out


def _ingest_rate(settings: Any, topic: str, samples: list[GpuSample], payloads: list[bytes] | None = None) -> float:
    """Samples/s through the ingest producer; with ``payloads`` the serialisation is left out."""
    from kafka import KafkaProducer

    from ingest.producer import build_producer, encode_message, kafka_producer_config, key_caching_partitioner

    config = {**kafka_producer_config(settings), "partitioner": key_caching_partitioner()}
    producer = build_producer(settings, source="bench", connect=lambda: KafkaProducer(**config))
    try:
        producer.publish(topic, b"warmup", samples[0].to_bytes())
        producer.flush(30)
        t0 = time.perf_counter()
        if payloads is None:
            for msg in samples:
                producer.publish(topic, msg.server_id.encode(), encode_message(msg))
        else:
            for msg, value in zip(samples, payloads, strict=True):
                producer.publish(topic, msg.server_id.encode(), value)
        if not producer.flush(120):
            raise RuntimeError(f"bench: {producer.num_buffered} samples undelivered ({producer.last_error})")
        return len(samples) / (time.perf_counter() - t0)
    finally:
        producer.close(10)


def _raw_rate(settings: Any, topic: str, keys: list[bytes], payloads: list[bytes]) -> float:
    from kafka import KafkaProducer

    from ingest.producer import kafka_producer_config

    producer = KafkaProducer(**kafka_producer_config(settings))  # kafka-python's own partitioner
    try:
        producer.send(topic, value=payloads[0], key=b"warmup").get(30)
        t0 = time.perf_counter()
        for key, value in zip(keys, payloads, strict=True):
            producer.send(topic, value=value, key=key)
        producer.flush(120)
        return len(payloads) / (time.perf_counter() - t0)
    finally:
        producer.close(10)


def run(quick: bool = False) -> dict[str, Any]:
    """Measure both rates ``repeats`` times in alternation and report medians and their ratio."""
    from kafka import KafkaAdminClient
    from kafka.admin import NewTopic

    from foundation.broker import EmbeddedBroker, free_port
    from foundation.settings import load_settings

    num_samples = 5_000 if quick else 40_000
    repeats = 1 if quick else 3
    samples = simulated_samples(num_samples)
    t0 = time.perf_counter()
    payloads = [s.to_bytes() for s in samples]
    serialize_per_s = num_samples / (time.perf_counter() - t0)
    keys = [s.server_id.encode() for s in samples]
    with EmbeddedBroker(port=free_port(), create_project_topics=False) as broker:
        settings = load_settings(kafka={"bootstrap_servers": broker.bootstrap})
        admin = KafkaAdminClient(bootstrap_servers=broker.bootstrap)
        topics = [f"bench.producer.{uuid.uuid4().hex[:8]}" for _ in range(4 * repeats)]
        admin.create_topics([NewTopic(t, num_partitions=8, replication_factor=1) for t in topics])
        admin.close()
        ingest_rates, raw_rates, layer_rates, small_rates = [], [], [], []
        small = [b"{" + b"x" * (SMALL_PAYLOAD_BYTES - 2) + b"}"] * num_samples
        for r in range(repeats):
            ingest_rates.append(_ingest_rate(settings, topics[4 * r], samples))
            raw_rates.append(_raw_rate(settings, topics[4 * r + 1], keys, payloads))
            layer_rates.append(_ingest_rate(settings, topics[4 * r + 2], samples, payloads))
            small_rates.append(_raw_rate(settings, topics[4 * r + 3], keys, small))
    server_rate = statistics.median(ingest_rates)
    raw_rate = statistics.median(raw_rates)
    return {
        "server_samples_per_s": round(server_rate, 1),
        "raw_send_per_s": round(raw_rate, 1),
        "ratio": round(server_rate / raw_rate, 3),
        "target_server_samples_per_s": TARGET_SERVER_SAMPLES_PER_S,
        "meets_target": server_rate >= TARGET_SERVER_SAMPLES_PER_S,
        "serialize_per_s": round(serialize_per_s, 1),
        "producer_only_per_s": round(statistics.median(layer_rates), 1),
        "raw_send_small_per_s": round(statistics.median(small_rates), 1),
        "small_payload_bytes": SMALL_PAYLOAD_BYTES,
        "payload_bytes": round(statistics.mean(len(p) for p in payloads), 1),
        "gpus_per_sample": NUM_GPUS,
        "num_samples": num_samples,
        "repeats": repeats,
        "compression": settings.ingest.compression,
    }
