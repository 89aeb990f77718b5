"""Issue 22's data-path reproductions against the embedded broker and a real ``tapas worker``.

Each test sends what the review sent and checks what the worker must do now: a
future-dated sample is dead-lettered instead of freezing its server; a poison record
(an offset past year 9999, a malformed 800 KB message, 10,001 ``instance_ids``, a key
that does not match the body) is dead-lettered on its own while the rest of its batch
is forecast; one collector whose clock is 60 s off no longer empties its row's domain
forecast, and the skew shows on the worker's state page. One worker serves the module.
"""

from __future__ import annotations

import base64
import json
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from kafka import KafkaProducer

from contracts.messages import DeadLetter, DomainForecast, GpuSample, ServerForecast, decode
from foundation.topology import load_topology
from streams.telemetry_factory import SyntheticTelemetry
from tests.streams_helpers import WorkerProcess, collect, end_consumer

pytestmark = pytest.mark.integration

GPU = "tapas.telemetry.gpu"


@pytest.fixture(scope="module")
def worker(broker: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[WorkerProcess]:
    w = WorkerProcess(broker.bootstrap, tmp_path_factory.mktemp("poison-worker"))
    w.start()
    try:
        w.state(timeout_s=90)
        yield w
    finally:
        w.stop()


@pytest.fixture(scope="module")
def producer(broker: Any) -> Iterator[KafkaProducer]:
    p = KafkaProducer(bootstrap_servers=broker.bootstrap, linger_ms=5, max_request_size=4 << 20)
    try:
        yield p
    finally:
        p.close()


def _hot(server_id: str, at: datetime) -> GpuSample:
    tel = SyntheticTelemetry([server_id], start_at=at, seed=1)
    g = tel.step()[0][0]
    return g.model_copy(update={"gpus": [r.model_copy(update={"gpu_temp_c": 95.0}) for r in g.gpus]})


def _letters(dl: Any, keys: set[str], timeout_s: float = 60) -> dict[str, DeadLetter]:
    got = collect(dl, lambda ms: {m.key.decode(errors="replace") for m in ms} >= keys, timeout_s=timeout_s)
    return {m.key.decode(): decode(DeadLetter, m.value) for m in got if m.key.decode(errors="replace") in keys}


def test_a_2099_sample_is_dead_lettered_and_later_genuine_samples_are_forecast(
        broker: Any, worker: WorkerProcess, producer: KafkaProducer) -> None:
    """Reproduction: one sample dated 2099, then 15 genuine samples at 95 °C gave 0 forecasts."""
    sid = f"future-{uuid.uuid4().hex[:6]}"
    fc = end_consumer(broker.bootstrap, "tapas.forecasts.server")
    dl = end_consumer(broker.bootstrap, "tapas.deadletter")
    now = datetime.now(UTC).replace(microsecond=0)
    producer.send(GPU, key=sid.encode(), value=_hot(sid, datetime(2099, 1, 1, tzinfo=UTC)).to_bytes())
    producer.flush()
    [letter] = _letters(dl, {sid}).values()
    assert letter.field == "sampled_at" and "ahead of the receiver's clock" in letter.reason
    genuine = [_hot(sid, now - timedelta(seconds=15 - k)) for k in range(15)]
    for g in genuine:
        producer.send(GPU, key=sid.encode(), value=g.to_bytes())
    producer.flush()
    want = {g.sampled_at for g in genuine}
    got = collect(fc, lambda ms: {decode(ServerForecast, m.value).based_on_sample_at for m in ms
                                  if m.key == sid.encode()} >= want, timeout_s=60)
    mine = [decode(ServerForecast, m.value) for m in got if m.key == sid.encode()]
    assert {f.based_on_sample_at for f in mine} == want, worker.log_tail()
    assert all(f.based_on_sample_at.year < 2099 for f in mine)
    state = worker.state()
    assert state["stream_time_s"] <= time.time() + 30.0 + 1.0  # stream time never ran ahead
    assert state["num_time_refused"] >= 1


def test_poison_records_are_dead_lettered_one_by_one_and_the_batch_goes_on(
        broker: Any, worker: WorkerProcess, producer: KafkaProducer) -> None:
    """Reproduction: a year-9999 offset and an 800 KB malformed message crashed and dropped the batch."""
    tag = uuid.uuid4().hex[:6]
    fc = end_consumer(broker.bootstrap, "tapas.forecasts.server")
    dl = end_consumer(broker.bootstrap, "tapas.deadletter")
    now = datetime.now(UTC).replace(microsecond=0)
    good = [_hot(f"batch-{tag}-{i}", now) for i in range(20)]
    base = json.loads(good[0].to_bytes())
    far = dict(base, server_id=f"far-{tag}", sampled_at="9999-12-31T23:59:59-23:59")
    many = dict(base, server_id=f"many-{tag}", workload={"instance_ids": [f"vm-{i}" for i in range(10_001)]})
    huge = b'{"server_id": "' + b"x" * 800_000 + b'"'
    poison = {f"far-{tag}": json.dumps(far).encode(), f"many-{tag}": json.dumps(many).encode(),
              f"huge-{tag}": huge, f"mismatch-{tag}": good[1].to_bytes()}
    for i, g in enumerate(good):  # poison interleaved with the good samples: one batch
        producer.send(GPU, key=g.server_id.encode(), value=g.to_bytes())
        if i < len(poison):
            key, raw = list(poison.items())[i]
            producer.send(GPU, key=key.encode(), value=raw)
    producer.flush()
    letters = _letters(dl, set(poison))
    assert set(letters) == set(poison), worker.log_tail()
    assert letters[f"far-{tag}"].field == "sampled_at"
    assert letters[f"many-{tag}"].field == "workload.instance_ids"
    assert letters[f"mismatch-{tag}"].field == "server_id"
    h = letters[f"huge-{tag}"]
    assert h.raw_truncated and h.raw_length == len(huge)
    assert huge.startswith(base64.b64decode(h.raw_b64))
    ids = {g.server_id for g in good}
    got = collect(fc, lambda ms: {m.key.decode() for m in ms} >= ids, timeout_s=60)
    assert {m.key.decode() for m in got} >= ids, worker.log_tail()
    assert worker.proc is not None and worker.proc.poll() is None


def _row_forecasts(dl_consumer: Any, row: str, timeout_s: float) -> DomainForecast | None:
    latest: DomainForecast | None = None
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for msgs in dl_consumer.poll(timeout_ms=300).values():
            for m in msgs:
                if m.key == f"row:{row}".encode():
                    latest = decode(DomainForecast, m.value)
    return latest


@pytest.mark.fault
@pytest.mark.parametrize("skew_s", [-60, 60])
def test_one_collector_60_s_off_keeps_its_row_counted_and_shows_its_skew(
        broker: Any, worker: WorkerProcess, producer: KafkaProducer, skew_s: int) -> None:
    """Reproduction: a collector 8 s ahead halved its row's server count; 60 s ahead read 0 servers' worth.

    Now: -60 s is accepted and the row still counts all 40 servers; +60 s is dead-lettered
    (beyond the 30 s skew) and the other 39 servers still count. The skew is on the state page.
    """
    topo = load_topology(None)
    row = topo.rows[0].row_id
    ids = [s.server_id for s in topo.servers if s.row_id == row]
    skewed = ids[0]
    dom = end_consumer(broker.bootstrap, "tapas.forecasts.domain")
    dl = end_consumer(broker.bootstrap, "tapas.deadletter")
    tel = SyntheticTelemetry(ids, start_at=datetime.now(UTC).replace(microsecond=0), seed=5)
    refused = 0
    latest: DomainForecast | None = None
    for _ in range(12):  # about 12 s of live telemetry, one tick a second
        gpus, _, _ = tel.step()
        for g in gpus:
            if g.server_id == skewed:
                g = g.model_copy(update={"sampled_at": g.sampled_at + timedelta(seconds=skew_s)})
            producer.send(GPU, key=g.server_id.encode(), value=g.to_bytes())
        producer.flush()
        latest = _row_forecasts(dom, row, 1.0) or latest
    latest = _row_forecasts(dom, row, 3.0) or latest
    expected = len(ids) if skew_s < 0 else len(ids) - 1
    assert latest is not None, worker.log_tail()
    assert latest.num_servers == expected, (latest.num_servers, expected)
    assert latest.power_forecast_w[0] > 0  # servers without chassis or PDU power: measured power_w is 0
    for msgs in dl.poll(timeout_ms=1000).values():
        refused += sum(m.key == skewed.encode() for m in msgs)
    state = worker.state()
    if skew_s > 0:
        assert refused >= 1 and state["collector_skew_max_s"] >= 55
    else:
        assert refused == 0 and state["collector_skew_min_s"] <= -55
