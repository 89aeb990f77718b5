"""Malformed telemetry through the real broker and the running stream worker ends up in the dead-letter topic.

A corpus of must-refuse inputs (truncated JSON, NaN/inf, Kelvin and milliwatt values,
wrong types, unknown major versions, naive or impossible timestamps, junk bytes) is
built from the fuzz mutations for every topic the worker decodes. Each message is sent
with a unique key; the test then finds every one of them in ``tapas.deadletter`` with
the same field the contract names locally, a reason, and the original bytes intact —
nothing refused is dropped silently, and no valid message sent alongside is refused.
"""

from __future__ import annotations

import base64
import json
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest

from contracts import Contract, ContractError, DeadLetter, GpuSample, InletSample, PduPowerSample, decode
from contracts.topics import topic_for
from tests.fuzz.mutations import (
    BAD_TIMESTAMPS,
    BAD_VERSIONS,
    NON_FINITE_LITERALS,
    UNIT_MISTAKES,
    numeric_leaves,
    set_at,
    timestamp_paths,
    with_raw_literal,
)
from tests.samples import example_messages
from tests.streams_helpers import WorkerProcess

pytestmark = [pytest.mark.integration, pytest.mark.fuzz]

WORKER_TOPICS: tuple[type[Contract], ...] = (GpuSample, InletSample, PduPowerSample)


def malformed_corpus(msg: Contract) -> list[bytes]:
    """Deterministic must-refuse variants of ``msg`` (each is checked to be refused by ``decode``)."""
    doc = json.loads(msg.to_bytes())
    raw = msg.to_bytes()
    out: list[bytes] = [b"", b"\xff\xfe\x00", b"null", b"[]", b'"text"', b"{", raw[: len(raw) // 2], raw[:-1]]
    out += [json.dumps({**doc, "schema_version": v}).encode() for v in BAD_VERSIONS if v not in (None,)]
    for path in timestamp_paths(doc):
        out += [json.dumps(set_at(doc, path, v)).encode() for v in BAD_TIMESTAMPS if v is not None]
    for path, value in numeric_leaves(doc)[:12]:
        out += [with_raw_literal(doc, path, lit) for lit in NON_FINITE_LITERALS]
        name = str(path[-1])
        for suffix, mistakes in UNIT_MISTAKES.items():
            if name.endswith(suffix):
                out += [json.dumps(set_at(doc, path, fn(float(value)))).encode() for _, fn in mistakes]
    for key in ("server_id", "pdu_id", "gpus", "sampled_at"):
        if key in doc:
            out += [json.dumps({k: v for k, v in doc.items() if k != key}).encode(),
                    json.dumps({**doc, key: {"nested": [1]}}).encode()]
    refused = []
    for candidate in out:
        try:
            decode(type(msg), candidate)
        except ContractError:
            refused.append(candidate)
    return refused


@pytest.fixture(scope="module")
def worker(broker: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[WorkerProcess]:
    w = WorkerProcess(broker.bootstrap, tmp_path_factory.mktemp("fuzz-worker"))
    w.start()
    try:
        yield w
    finally:
        w.stop()


def test_every_malformed_message_reaches_the_dead_letter_topic_with_a_reason(broker: Any, worker: WorkerProcess) -> None:
    from kafka import KafkaConsumer, KafkaProducer, TopicPartition

    examples = {type(m): m for m in example_messages()}
    sent: dict[str, tuple[str, bytes, str]] = {}  # key -> (topic, raw, field named by the contract)
    valid_keys: set[str] = set()
    run = uuid.uuid4().hex[:6]

    dl_topic = topic_for(DeadLetter)
    consumer = KafkaConsumer(bootstrap_servers=broker.bootstrap, enable_auto_commit=False)
    tps = [TopicPartition(dl_topic, p) for p in sorted(consumer.partitions_for_topic(dl_topic) or [])]
    consumer.assign(tps)
    consumer.seek_to_end()
    for tp in tps:
        consumer.position(tp)

    producer = KafkaProducer(bootstrap_servers=broker.bootstrap, linger_ms=5)
    try:
        for model in WORKER_TOPICS:
            topic = topic_for(model)
            for i, raw in enumerate(malformed_corpus(examples[model])):
                key = f"dl-{run}-{model.message_name}-{i}"
                with pytest.raises(ContractError) as err:
                    decode(model, raw)
                sent[key] = (topic, raw, err.value.field)
                producer.send(topic, key=key.encode(), value=raw)
            good = examples[model].model_copy(update={"server_id": f"ok-{run}", "sampled_at": datetime.now(UTC)}
                                              if model is not PduPowerSample
                                              else {"pdu_id": f"ok-{run}", "sampled_at": datetime.now(UTC)})
            valid_keys.add(f"ok-{run}")
            producer.send(topic, key=f"ok-{run}".encode(), value=good.to_bytes())
        producer.flush(timeout=30)
    finally:
        producer.close()
    assert len(sent) >= 100, f"corpus too small: {len(sent)}"

    found: dict[str, DeadLetter] = {}
    others = 0
    deadline = time.monotonic() + 150
    try:
        while time.monotonic() < deadline and set(found) != set(sent):
            assert worker.proc is not None and worker.proc.poll() is None, worker.log_tail()
            for records in consumer.poll(timeout_ms=1000).values():
                for rec in records:
                    key = (rec.key or b"").decode(errors="replace")
                    letter = decode(DeadLetter, rec.value)  # the dead letter itself honours its contract
                    if key in sent:
                        found[key] = letter
                    else:
                        others += 1
                        assert key not in valid_keys, f"a valid message was dead-lettered: {letter.reason}"
    finally:
        consumer.close()

    missing = sorted(set(sent) - set(found))
    assert not missing, f"{len(missing)}/{len(sent)} malformed messages never reached {dl_topic}: {missing[:5]}\n" \
                        f"{worker.log_tail()}"
    for key, letter in found.items():
        topic, raw, field = sent[key]
        assert letter.source_topic == topic
        assert letter.reason, key
        assert letter.field == field, (key, letter.field, field)
        assert base64.b64decode(letter.raw_b64) == raw, f"{key}: the original bytes were not kept"
    print(f"\ndead-letter run: sent {len(sent)} malformed + {len(WORKER_TOPICS)} valid, "
          f"found {len(found)} with reasons, missing {len(missing)}, other dead letters seen {others}")
