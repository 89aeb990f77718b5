"""Two workers in one group: when the second joins, moved servers continue from the changelog with no sample lost.

The first worker owns every partition, then gives some up when the second joins.
Faust waits for the agents and commits before revoking (``Consumer.wait_empty``), so
the commit-time changelog batches carry the handover (the revocation flush is a
second guard); either way every server's newest state must reach the new owner:
after more ticks each server's state in the changelog counts every tick sent,
whichever worker holds it now.

History: on 25 Nov it failed in two of five runs — a tick sent while the partitions
moved either got no forecast for one server, or left one server's changelog state
one sample short — and was marked ``xfail``. One cause of the second was found and
fixed on 7 Dec: the state page and the revocation wrote states through Faust's
buffered per-key table path while the commit hook wrote record batches straight to
the producer, so an older state could land after a newer one in the changelog (this
test calls the state page while partitions move). Every write now takes one ordered
path (``WorkerApp.flush_states_batched``; unit test in
``tests/unit/test_worker_changelog.py``), and a forecast batch the producer gives up
on is logged and counted instead of vanishing. After the fix the test passed 12 of 12 runs
beside one or three busy-loop processes, but the code before it also passed 12 of 12
that day (6 of them under the same load), so the missing-forecast case was not
reproduced. The mark is gone: the
test guards the handover again, and a recurrence is a failure to look into.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from kafka import KafkaProducer

from contracts.messages import ServerForecast, decode
from streams.state import ServerStates
from streams.telemetry_factory import SyntheticTelemetry
from tests.streams_helpers import WorkerProcess, collect, end_consumer, latest_by_key

NUM_SERVERS = 32


def _samples_in(raw: bytes) -> int:
    probe = ServerStates()
    return int(probe.arr["num_samples"][probe.load_slot("probe", raw)])


@pytest.fixture()
def workers(broker: Any, tmp_path: Path) -> Iterator[tuple[WorkerProcess, WorkerProcess]]:
    first = WorkerProcess(broker.bootstrap, tmp_path / "a")
    second = WorkerProcess(broker.bootstrap, tmp_path / "b")
    for w in (first, second):
        w.workdir.mkdir()
    second.env["TAPAS_WORKER__APP_ID"] = first.env["TAPAS_WORKER__APP_ID"]  # one consumer group
    try:
        yield first, second
    finally:
        for w in (first, second):
            if w.proc is not None:
                w.stop()


@pytest.mark.fault
def test_second_worker_takes_half_the_servers_and_continues_their_state(
        broker: Any, workers: tuple[WorkerProcess, WorkerProcess]) -> None:
    first, second = workers
    prefix = f"rb{uuid.uuid4().hex[:6]}"
    ids = [f"{prefix}-srv{i:02d}" for i in range(NUM_SERVERS)]
    fleet = SyntheticTelemetry(ids, start_at=datetime.now(UTC).replace(microsecond=0) - timedelta(seconds=60), seed=5)
    producer = KafkaProducer(bootstrap_servers=broker.bootstrap, linger_ms=5)
    fc = end_consumer(broker.bootstrap, "tapas.forecasts.server")

    def send_ticks(n: int) -> datetime:
        newest = datetime.min.replace(tzinfo=UTC)
        for _ in range(n):
            gpus, _, _ = fleet.step()
            for g in gpus:
                producer.send("tapas.telemetry.gpu", key=g.server_id.encode(), value=g.to_bytes())
                newest = max(newest, g.sampled_at)
        producer.flush()
        return newest

    def forecasts_for(newest: datetime, timeout_s: float) -> set[str]:
        seen = collect(fc, lambda ms: {m.key.decode() for m in ms
                                       if decode(ServerForecast, m.value).based_on_sample_at == newest} >= set(ids),
                       timeout_s=timeout_s)
        return {m.key.decode() for m in seen if decode(ServerForecast, m.value).based_on_sample_at == newest}

    ticks = 0

    def tick_and_wait(n: int) -> None:
        nonlocal ticks
        newest = send_ticks(n)
        ticks += n
        assert forecasts_for(newest, timeout_s=90) == set(ids), first.log_tail() + second.log_tail()

    def active(w: WorkerProcess) -> set[str]:
        return set(w.state()["active_servers"]) & set(ids)

    try:
        first.start()
        tick_and_wait(3)
        assert active(first) == set(ids)

        second.start()
        deadline = time.monotonic() + 120
        while True:  # a tick at a time until the group has rebalanced and each worker serves some servers
            tick_and_wait(1)
            a, b = active(first), active(second)
            if a and b and not a & b and a | b == set(ids):
                break
            assert time.monotonic() < deadline, f"no rebalance: a={len(a)} b={len(b)}; {second.log_tail()}"
            time.sleep(1.0)
        tick_and_wait(2)

        changelog = f"{first.env['TAPAS_WORKER__APP_ID']}-server-state-changelog"
        latest = latest_by_key(broker.bootstrap, changelog,
                               lambda got: all(k.encode() in got and _samples_in(got[k.encode()]) == ticks
                                               for k in ids), timeout_s=60)
        counts = {k: _samples_in(latest[k.encode()]) for k in ids if k.encode() in latest}
        assert counts == dict.fromkeys(ids, ticks), f"samples per server (expected {ticks}): {sorted(counts.values())}"
        print(f"worker rebalance: servers={NUM_SERVERS} moved_to_second={len(b)} ticks={ticks}; every server's "
              f"changelog state counts every tick")
    finally:
        producer.close()
        fc.close()
