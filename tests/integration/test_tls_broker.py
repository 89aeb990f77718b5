"""Every client type TAPAS builds talks to the embedded broker over TLS, and a plaintext client cannot.

The broker is the real embedded Tansu behind stunnel (``foundation.tls.TlsEmbeddedBroker``)
with a certificate signed by a CA generated in the test; clients are configured only
through ``Settings.kafka`` (``security_protocol="SSL"``, ``ssl_cafile``) and the
project's own builders: ``kafka_python_kwargs``, ``aiokafka_kwargs`` and
``streams.app.faust_settings`` with ``tapas.bootstrap``'s Faust connection (the stream worker's configuration).
"""

from __future__ import annotations

import asyncio
import shutil
import ssl
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from foundation.settings import KafkaSettings, Settings, WorkerSettings, aiokafka_kwargs, kafka_python_kwargs
from foundation.tls import TlsEmbeddedBroker, TlsFiles, write_test_pki

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not (shutil.which("stunnel4") or shutil.which("stunnel")),
                       reason="stunnel not installed (apt-get install stunnel4; .ci/run does it)"),
]

N = 20


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    return write_test_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def tls_broker(pki: TlsFiles, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsEmbeddedBroker]:
    with TlsEmbeddedBroker(pki, work_dir=tmp_path_factory.mktemp("tls-broker"), create_project_topics=False) as b:
        yield b


def _new_topic(kafka: KafkaSettings, partitions: int = 2) -> str:
    from kafka import KafkaAdminClient
    from kafka.admin import NewTopic

    name = f"test.tls.{uuid.uuid4().hex[:10]}"
    admin = KafkaAdminClient(**kafka_python_kwargs(kafka))
    try:
        admin.create_topics([NewTopic(name, num_partitions=partitions, replication_factor=1)])
        assert name in admin.list_topics()
    finally:
        admin.close()
    return name


def _api_versions_over_tls(kafka: KafkaSettings) -> bytes:
    """Handshake with the project's ssl_context and send one Kafka ApiVersions request; returns the reply head.

    Raises the ssl error that explains a refusal (verification failed, certificate required).
    """
    import socket
    import struct

    from foundation.settings import ssl_context

    host, port = kafka.bootstrap_servers.split(":")
    ctx = ssl_context(kafka)
    assert ctx is not None
    client_id = b"tls-probe"
    body = struct.pack(">hhih", 18, 0, 7, len(client_id)) + client_id  # ApiVersions v0
    with socket.create_connection((host, int(port)), timeout=5) as raw, \
            ctx.wrap_socket(raw, server_hostname=host) as tls:
        tls.sendall(struct.pack(">i", len(body)) + body)
        head = tls.recv(8)
    if not head:
        raise ConnectionError("TLS peer closed the connection without a reply")
    return head


def _read_all(kafka: KafkaSettings, topic: str, expect: int, partitions: int = 2) -> list[bytes]:
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(**kafka_python_kwargs(kafka), enable_auto_commit=False, consumer_timeout_ms=8000)
    try:
        consumer.assign([TopicPartition(topic, p) for p in range(partitions)])
        consumer.seek_to_beginning()
        got: list[bytes] = []
        for record in consumer:
            got.append(record.value)
            if len(got) >= expect:
                break
        return got
    finally:
        consumer.close()


def test_kafka_python_admin_producer_consumer_over_tls(tls_broker: TlsEmbeddedBroker) -> None:
    from kafka import KafkaProducer

    kafka = tls_broker.kafka_settings()
    assert kafka.security_protocol == "SSL"
    topic = _new_topic(kafka)
    producer = KafkaProducer(**kafka_python_kwargs(kafka), linger_ms=5)
    try:
        for i in range(N):
            producer.send(topic, key=f"s{i % 4}".encode(), value=f"tls-{i}".encode())
        producer.flush(timeout=15)
    finally:
        producer.close()
    got = _read_all(kafka, topic, N)
    assert sorted(got) == sorted(f"tls-{i}".encode() for i in range(N))
    log = (tls_broker.work_dir / "stunnel.log").read_text()
    assert "Service [kafka] accepted connection" in log, "clients did not go through the TLS terminator"


def test_aiokafka_producer_and_consumer_over_tls(tls_broker: TlsEmbeddedBroker) -> None:
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

    kafka = tls_broker.kafka_settings()
    topic = _new_topic(kafka, partitions=1)

    async def run() -> list[bytes]:
        producer = AIOKafkaProducer(**aiokafka_kwargs(kafka))
        await producer.start()
        try:
            for i in range(N):
                await producer.send_and_wait(topic, f"aio-{i}".encode(), key=b"s1")
        finally:
            await producer.stop()
        consumer = AIOKafkaConsumer(**aiokafka_kwargs(kafka), enable_auto_commit=False)
        await consumer.start()
        try:
            tp = TopicPartition(topic, 0)
            consumer.assign([tp])
            await consumer.seek_to_beginning(tp)
            got: list[bytes] = []
            while len(got) < N:
                batch = await asyncio.wait_for(consumer.getmany(tp, timeout_ms=1000), timeout=10)
                got += [r.value for r in batch.get(tp, [])]
            return got
        finally:
            await consumer.stop()

    assert asyncio.run(run()) == [f"aio-{i}".encode() for i in range(N)]


def test_faust_worker_configuration_produces_over_tls(tls_broker: TlsEmbeddedBroker, tmp_path: Path) -> None:
    """The stream worker's Faust settings carry the TLS context; its producer reaches the TLS broker."""
    faust = pytest.importorskip("faust")
    from streams.app import faust_settings
    from tapas.bootstrap import kafka_clients

    kafka = tls_broker.kafka_settings()
    topic = _new_topic(kafka, partitions=1)
    settings = Settings(kafka=kafka, worker=WorkerSettings(data_dir=tmp_path / "faust"))
    conf = faust_settings(settings, kafka_clients(settings).faust_kwargs())
    assert isinstance(conf.get("broker_credentials"), ssl.SSLContext), "worker must hand Faust the TLS context"
    app = faust.App(f"tls-test-{uuid.uuid4().hex[:6]}", **conf)

    async def run() -> None:
        producer = app.producer
        await producer.start()
        try:
            for i in range(N):
                await producer.send_and_wait(topic, b"s1", f"faust-{i}".encode(), None, None, None)
        finally:
            await producer.stop()

    asyncio.run(run())
    assert _read_all(kafka, topic, N, partitions=1) == [f"faust-{i}".encode() for i in range(N)]


def test_plaintext_client_cannot_talk_to_the_tls_port(tls_broker: TlsEmbeddedBroker) -> None:
    from kafka import KafkaAdminClient
    from kafka.errors import KafkaTimeoutError

    plain = tls_broker.kafka_settings(security_protocol="PLAINTEXT")
    with pytest.raises(KafkaTimeoutError):
        admin = KafkaAdminClient(**kafka_python_kwargs(plain), request_timeout_ms=3000,
                                 bootstrap_timeout_ms=3000)
        try:
            admin.list_topics()
        finally:
            admin.close()


def test_client_that_does_not_trust_the_ca_is_refused(tls_broker: TlsEmbeddedBroker, tmp_path: Path) -> None:
    """TLS without the right CA fails verification: a man in the middle with another cert is not accepted."""
    from kafka import KafkaAdminClient
    from kafka.errors import KafkaTimeoutError

    other = write_test_pki(tmp_path / "other-ca")
    untrusting = tls_broker.kafka_settings(ssl_cafile=other.ca_cert)
    with pytest.raises(ssl.SSLCertVerificationError):
        _api_versions_over_tls(untrusting)
    assert len(_api_versions_over_tls(tls_broker.kafka_settings())) == 8  # the trusted CA gets a reply
    with pytest.raises(KafkaTimeoutError):
        admin = KafkaAdminClient(**kafka_python_kwargs(untrusting), request_timeout_ms=3000,
                                 bootstrap_timeout_ms=3000)
        try:
            admin.list_topics()
        finally:
            admin.close()


def test_aiokafka_plaintext_client_cannot_talk_to_the_tls_port(tls_broker: TlsEmbeddedBroker) -> None:
    from aiokafka import AIOKafkaProducer
    from aiokafka.errors import KafkaConnectionError

    plain = tls_broker.kafka_settings(security_protocol="PLAINTEXT")

    async def run() -> None:
        producer = AIOKafkaProducer(**aiokafka_kwargs(plain), request_timeout_ms=3000)
        try:
            await asyncio.wait_for(producer.start(), timeout=15)
        finally:
            await producer.stop()

    with pytest.raises(KafkaConnectionError, match="Unable to bootstrap"):
        asyncio.run(run())


@pytest.fixture(scope="module")
def mtls_broker(pki: TlsFiles, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsEmbeddedBroker]:
    with TlsEmbeddedBroker(pki, work_dir=tmp_path_factory.mktemp("mtls-broker"), require_client_cert=True,
                           create_project_topics=False) as b:
        yield b


def test_mutual_tls_accepts_the_client_certificate_and_refuses_a_client_without_one(
        mtls_broker: TlsEmbeddedBroker) -> None:
    from kafka import KafkaAdminClient
    from kafka.errors import KafkaTimeoutError

    with_cert = mtls_broker.kafka_settings()
    assert with_cert.ssl_certfile is not None
    topic = _new_topic(with_cert, partitions=1)
    assert topic.startswith("test.tls.")

    without_cert = mtls_broker.kafka_settings(ssl_certfile=None, ssl_keyfile=None)
    # TLS 1.3 finishes the client's handshake before the server checks for a certificate: the
    # refusal is the CERTIFICATE_REQUIRED alert, or an EOF when stunnel closes before the client
    # reads that alert (seen once on CI). Either way no Kafka reply comes back.
    with pytest.raises(ssl.SSLError, match="CERTIFICATE_REQUIRED|EOF occurred in violation of protocol"):
        _api_versions_over_tls(without_cert)
    assert len(_api_versions_over_tls(with_cert)) == 8
    with pytest.raises(KafkaTimeoutError):
        admin = KafkaAdminClient(**kafka_python_kwargs(without_cert), request_timeout_ms=3000,
                                 bootstrap_timeout_ms=3000)
        try:
            admin.list_topics()
        finally:
            admin.close()
