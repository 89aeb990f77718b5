"""The stream worker end to end through the embedded broker: forecasts, dead letters, SIGKILL recovery.

One worker process serves the module (a group join costs seconds); the recovery
test kills it with SIGKILL and starts it again.
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

from contracts.messages import DeadLetter, GpuSample, ServerForecast, decode
from streams.app import load_forecaster
from streams.processor import RawRecord, StreamProcessor, TopologyView
from streams.state import ServerStates
from streams.telemetry_factory import SyntheticTelemetry
from tests.streams_helpers import WorkerProcess, collect, end_consumer, latest_by_key

pytestmark = pytest.mark.integration

NUM_SERVERS = 36
HORIZONS = [10.0, 60.0, 300.0]
STALE_AFTER_S = 4.0


@pytest.fixture(scope="module")
def worker(broker: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[WorkerProcess]:
    w = WorkerProcess(broker.bootstrap, tmp_path_factory.mktemp("worker"),
                      extra_env={"TAPAS_WORKER__STALE_AFTER_S": str(STALE_AFTER_S)})
    w.start()
    try:
        yield w
    finally:
        w.stop()


@pytest.fixture(scope="module")
def producer(broker: Any) -> Iterator[KafkaProducer]:
    p = KafkaProducer(bootstrap_servers=broker.bootstrap, linger_ms=5)
    try:
        yield p
    finally:
        p.close()


@pytest.fixture(scope="module")
def fleet() -> SyntheticTelemetry:
    prefix = f"it{uuid.uuid4().hex[:6]}"
    ids = [f"{prefix}-srv{i:02d}" for i in range(NUM_SERVERS)]
    return SyntheticTelemetry(ids, start_at=datetime.now(UTC).replace(microsecond=0) - timedelta(seconds=60),
                              seed=3, inlet_every=2)


def _send_ticks(producer: KafkaProducer, fleet: SyntheticTelemetry, ticks: int, *,
                inlets_too: bool = True) -> list[GpuSample]:
    sent: list[GpuSample] = []
    for _ in range(ticks):
        gpus, inlets, _ = fleet.step()
        for m in inlets if inlets_too else []:
            producer.send("tapas.telemetry.inlet", key=m.server_id.encode(), value=m.to_bytes())
        for g in gpus:
            producer.send("tapas.telemetry.gpu", key=g.server_id.encode(), value=g.to_bytes())
        sent += gpus
    producer.flush()
    return sent


def test_forecasts_for_every_server_and_dead_letters_for_every_malformed_message(
        broker: Any, worker: WorkerProcess, producer: KafkaProducer, fleet: SyntheticTelemetry) -> None:
    fc = end_consumer(broker.bootstrap, "tapas.forecasts.server")
    dl = end_consumer(broker.bootstrap, "tapas.deadletter")
    good = json.loads(_send_ticks(producer, fleet, 1)[0].to_bytes())
    kelvin = json.loads(json.dumps(good))
    kelvin["gpus"][0]["gpu_temp_c"] = 345.2
    future_major = dict(good, schema_version="2.0")
    no_gpus = {k: v for k, v in good.items() if k != "gpus"}
    tag = uuid.uuid4().hex[:6]
    malformed = {
        f"bad-json-{tag}": ("tapas.telemetry.gpu", b"{not json"),
        f"kelvin-{tag}": ("tapas.telemetry.gpu", json.dumps(kelvin).encode()),
        f"major-{tag}": ("tapas.telemetry.gpu", json.dumps(future_major).encode()),
        f"no-gpus-{tag}": ("tapas.telemetry.gpu", json.dumps(no_gpus).encode()),
        f"binary-{tag}": ("tapas.telemetry.gpu", bytes(range(256))),
        f"inlet-{tag}": ("tapas.telemetry.inlet", b'{"server_id": "x", "sampled_at": "2026-01-01T00:00:00Z", '
                                                  b'"inlet_temp_c": 295.6}'),
    }
    started = time.monotonic()
    for key, (topic, raw) in malformed.items():
        producer.send(topic, key=key.encode(), value=raw)
    sent = _send_ticks(producer, fleet, 4)
    ids = set(fleet.server_ids)
    newest = max(s.sampled_at for s in sent)

    def all_current(msgs: list[Any]) -> bool:
        return {m.key.decode() for m in msgs if decode(ServerForecast, m.value).based_on_sample_at == newest} >= ids

    got = collect(fc, all_current, timeout_s=90)
    took_s = time.monotonic() - started
    mine = [decode(ServerForecast, m.value) for m in got if m.key.decode() in ids]
    assert {f.server_id for f in mine if f.based_on_sample_at == newest} == ids, worker.log_tail()
    for f in mine:
        assert [h.horizon_s for h in f.horizons] == HORIZONS
        assert f.thermal_headroom_c == pytest.approx(f.slowdown_temp_c - f.horizons[0].gpu_temp_hi_c)
        assert 20.0 < f.gpu_temp_c < 95.0
    print(f"forecasts for all {len(ids)} servers {took_s:.1f} s after sending (worker startup included)")

    letters = collect(dl, lambda ms: {m.key.decode() for m in ms} >= set(malformed), timeout_s=30)
    by_key = {m.key.decode(): decode(DeadLetter, m.value) for m in letters if m.key.decode() in malformed}
    assert set(by_key) == set(malformed)
    for key, (topic, raw) in malformed.items():
        letter = by_key[key]
        assert letter.source_topic == topic and letter.reason
        assert base64.b64decode(letter.raw_b64) == raw
        assert letter.offset is not None and letter.partition is not None
    assert by_key[f"kelvin-{tag}"].field == "gpus.0.gpu_temp_c"
    assert by_key[f"major-{tag}"].field == "schema_version"
    assert by_key[f"no-gpus-{tag}"].field == "gpus"
    assert by_key[f"inlet-{tag}"].field == "inlet_temp_c"
    fc.close()
    dl.close()


def test_healthz_is_alive_and_readyz_follows_the_telemetry(
        worker: WorkerProcess, producer: KafkaProducer, fleet: SyntheticTelemetry) -> None:
    """/readyz: 200 while telemetry flows, 503 with the age once none arrived for stale_after_s (no auth)."""
    worker.state()  # waits until the web server answers
    assert worker.probe("/healthz") == (200, {"service": "worker", "alive": True})

    def poll(want: int, timeout_s: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout_s
        while True:
            status, body = worker.probe("/readyz")
            if status == want or time.monotonic() > deadline:
                assert status == want, (body, worker.log_tail())
                return body
            time.sleep(0.2)

    _send_ticks(producer, fleet, 1)
    ready = poll(200, 60)
    assert ready["consuming"] and not ready["stale"] and ready["age_s"] <= STALE_AFTER_S
    stale = poll(503, 10 * STALE_AFTER_S)
    assert stale["consuming"] and stale["stale"] and stale["age_s"] > STALE_AFTER_S
    assert stale["reason"].startswith("newest input is") and stale["stale_after_s"] == STALE_AFTER_S
    _send_ticks(producer, fleet, 1)
    assert poll(200, 60)["ready"]


def _diff(a: dict[str, bytes], b: dict[str, bytes]) -> list[str]:
    """Which servers and scalar fields differ (for a readable failure)."""
    from streams.state import SCALARS

    out = []
    for k in sorted(set(a) | set(b)):
        if a.get(k) == b.get(k):
            continue
        if k not in a or k not in b:
            out.append(f"{k}: missing on one side")
            continue
        sa, sb = ServerStates(), ServerStates()
        ia, ib = sa.load_slot(k, a[k]), sb.load_slot(k, b[k])
        fields = [f"{n}={sa.arr[n][ia]}->{sb.arr[n][ib]}" for n in SCALARS
                  if sa.matrix[ia].tobytes() != sb.matrix[ib].tobytes() and sa.arr[n][ia] != sb.arr[n][ib]]
        if not fields:
            ma, mb = sa.models[ia], sb.models[ib]
            fields = [f"model.{n}={getattr(ma, n)}->{getattr(mb, n)}" for n in ma.__slots__
                      if getattr(ma, n) != getattr(mb, n) and ma is not None and mb is not None]
            fields += [f"window[{j}]" for j in range(len(sa.temp_window[ia]))
                       if sa.temp_window[ia][j] != sb.temp_window[ib][j]][:3]
        out.append(f"{k}: {fields}")
    return out[:6]


def _my_states(page: dict[str, Any], ids: set[str]) -> dict[str, bytes]:
    return {k: base64.b64decode(v) for k, v in page["states"].items() if k in ids}


@pytest.mark.fault
def test_state_is_restored_bit_for_bit_after_sigkill(
        broker: Any, worker: WorkerProcess, producer: KafkaProducer, fleet: SyntheticTelemetry) -> None:
    ids = set(fleet.server_ids)

    def samples_in(raw: bytes) -> int:
        probe = ServerStates()
        return int(probe.arr["num_samples"][probe.load_slot("probe", raw)])

    # The fleet and worker are shared with the tests above (which may or may not have run, e.g. under
    # ``-m fault``): count from what the worker holds now.
    prior = {k: samples_in(v) for k, v in _my_states(worker.state(), ids).items()}
    want = {k: prior.get(k, 0) + 3 for k in ids}
    fc = end_consumer(broker.bootstrap, "tapas.forecasts.server")
    sent = _send_ticks(producer, fleet, 3)
    newest = max(s.sampled_at for s in sent)
    collect(fc, lambda ms: {m.key.decode() for m in ms
                             if decode(ServerForecast, m.value).based_on_sample_at == newest} >= ids, timeout_s=60)

    # The offset commit itself (not the state page below, which also flushes) writes the newest state of
    # every server to the changelog: read it straight from the topic, before asking the worker anything.
    changelog = latest_by_key(broker.bootstrap, f"{worker.env['TAPAS_WORKER__APP_ID']}-server-state-changelog",
                              lambda got: {k.decode() for k, v in got.items()
                                           if samples_in(v) == want.get(k.decode())} >= ids,
                              timeout_s=30)
    committed = {k.decode(): v for k, v in changelog.items() if k.decode() in ids}
    assert {k: samples_in(v) for k, v in committed.items()} == want, \
        f"changelog after commits: {sorted(samples_in(v) for v in committed.values())[:5]} for {len(committed)} " \
        f"servers, want {sorted(set(want.values()))}"
    before = _my_states(worker.state(), ids)
    assert before == committed, "the state page's flush changed what the commit had written"
    assert set(before) == ids
    assert {k: samples_in(v) for k, v in before.items()} == want

    worker.kill()
    killed_at = time.monotonic()
    worker.start()
    deadline = time.monotonic() + 90
    after: dict[str, bytes] = {}
    while time.monotonic() < deadline and set(after) != ids:
        after = _my_states(worker.state(), ids)
        time.sleep(0.5)
    assert set(after) == ids, worker.log_tail()
    print(f"worker SIGKILL: servers={len(ids)} states_restored={sum(after[k] == before[k] for k in ids)} "
          f"state_recovery_s={time.monotonic() - killed_at:.1f}")
    assert after == before, f"restored state differs from the state before SIGKILL: {_diff(before, after)}"

    # The restarted worker continues exactly where an uninterrupted one would be.
    reference = StreamProcessor(TopologyView.from_topology(None, inlet_limit_c=27.0),
                                load_forecaster(worker.workdir / "registry"), horizons_s=HORIZONS)
    for k, v in before.items():
        reference.restore(k, v)
    more = _send_ticks(producer, fleet, 1, inlets_too=False)  # GPU only: the reference sees exactly the same input
    newest = max(s.sampled_at for s in more)
    collect(fc, lambda ms: {m.key.decode() for m in ms
                             if decode(ServerForecast, m.value).based_on_sample_at == newest} >= ids, timeout_s=90)
    reference.handle_gpu([RawRecord(g.server_id.encode(), g.to_bytes(), "tapas.telemetry.gpu") for g in more])
    expected = reference.take_dirty_states()
    continued = _my_states(worker.state(), ids)
    assert continued == expected, _diff(expected, continued)
    fc.close()


def test_promoted_model_version_is_picked_up_without_restart(
        broker: Any, worker: WorkerProcess, producer: KafkaProducer, fleet: SyntheticTelemetry) -> None:
    from dataclasses import replace

    from contracts.messages import ModelAnnouncement
    from forecasting.registry import promote, save_version
    from forecasting.state import ForecasterParams

    version = f"it-{uuid.uuid4().hex[:8]}"
    registry = worker.workdir / "registry"
    save_version(registry, replace(ForecasterParams(), version=version, tau_thermal_s=45.0), {"metrics": {}})
    record = promote(registry, version)
    pid_before = worker.proc.pid if worker.proc else None
    fc = end_consumer(broker.bootstrap, "tapas.forecasts.server")
    producer.send("tapas.models", key=record["model_name"].encode(), value=ModelAnnouncement(
        model_name=record["model_name"], version=version, promoted_at=datetime.now(UTC),
        artifact_path=record["artifact_path"], sha256=record["sha256"]).to_bytes())
    producer.flush()
    ids = set(fleet.server_ids)
    deadline = time.monotonic() + 60
    switched: set[str] = set()
    while time.monotonic() < deadline and switched != ids:
        _send_ticks(producer, fleet, 1)
        for m in collect(fc, lambda ms: False, timeout_s=1.0):
            f = decode(ServerForecast, m.value)
            if f.server_id in ids and f.model_version == version:
                switched.add(f.server_id)
    assert switched == ids, worker.log_tail()
    assert worker.proc is not None and worker.proc.pid == pid_before and worker.proc.poll() is None
    assert worker.state()["model_version"] == version
    fc.close()
