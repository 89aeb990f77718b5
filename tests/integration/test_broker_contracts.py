"""Every contract message through the real embedded broker with kafka-python; `tapas broker` lifecycle."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from contracts import decode
from tapas.broker import free_port, wait_for_metadata
from tests.samples import example_messages

pytestmark = pytest.mark.integration


def test_every_message_round_trips_through_the_broker(broker: object, topic_factory: object) -> None:
    topic = topic_factory("contracts")  # type: ignore[operator]
    examples = example_messages()
    producer = KafkaProducer(bootstrap_servers=broker.bootstrap)  # type: ignore[attr-defined]
    for msg in examples:
        producer.send(topic, key=type(msg).message_name.encode(), value=msg.to_bytes())
    producer.flush()
    producer.close()
    consumer = KafkaConsumer(bootstrap_servers=broker.bootstrap, enable_auto_commit=False)  # type: ignore[attr-defined]
    consumer.assign([TopicPartition(topic, 0)])
    consumer.seek_to_beginning()
    got = []
    deadline = time.monotonic() + 20
    while len(got) < len(examples) and time.monotonic() < deadline:
        for records in consumer.poll(500).values():
            got.extend(records)
    consumer.close()
    assert len(got) == len(examples)
    for record, original in zip(got, examples, strict=True):
        assert decode(type(original), record.value) == original


def test_tapas_broker_answers_and_exits_on_sigterm() -> None:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "tapas.cli", "broker", "--port", str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        t0 = time.monotonic()
        wait_for_metadata(f"127.0.0.1:{port}", 10)
        assert time.monotonic() - t0 < 10
        os.kill(proc.pid, signal.SIGTERM)
        assert proc.wait(15) == 0
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    # the Tansu child must be gone too: nothing answers on the port any more
    with pytest.raises(Exception, match="did not answer"):
        wait_for_metadata(f"127.0.0.1:{port}", 1.5)
