"""The broker going away under load, end to end: collector → broker → worker → forecasts.

A collector (the ingest layer's buffered producer) publishes a fleet's GPU samples
every tick; a real ``tapas worker`` process turns them into forecasts. Mid-stream the
broker goes away and comes back, in one of two ways:

* ``outage`` (in ``make test``): the broker process is frozen (SIGSTOP) for longer
  than the worker's session timeout, then resumed (SIGCONT) with its log, topics,
  group offsets and changelog intact. That is what clients of a restarted Apache
  Kafka broker (production) see: requests time out, the group expires and is
  rebuilt, the worker resumes from its committed offsets and replays what they do
  not cover.
* ``empty-restart`` (marker ``slow``): the embedded broker is stopped and a new one
  is started on the same port. Tansu keeps its log in memory, so the new broker
  starts empty (topics created again, the worker's group and changelog gone). This
  is harsher than any production restart and meets defects of the embedded broker
  (below), so it is kept out of ``make test``; ``pytest -m fault`` runs it.

What the test holds the system to is what an operator would ask of it:

* every sample the collector accepted reaches the worker once — the worker's
  per-server sample count equals the number of samples sent, none missing, none
  counted twice;
* the worker resumes on its own (no restart) and publishes forecasts for the newest
  sample of every server; the time from the broker's return to the first forecast
  of a post-outage sample is reported;
* no forecast is published twice for the same server and sample.

Why ``empty-restart`` fails now and then (2 of 43 runs here on 7 Dec, 2 of about 12
CI runs): records that reach the new broker between its port opening and
``EmbeddedBroker`` creating the topics again (about 0.15 s) meet two Tansu 0.6 defects,
both characterised in ``tests/integration/test_broker_contracts.py``. A lone record
there can be acknowledged and never become readable. A batch of n records there is
acknowledged at offsets 0..n-1 but the broker's next offset moves on by one only, so
the next record reuses an offset; kafka-python returns both records at that offset,
aiokafka (the worker's client) skips the second. That fits the loss seen in stop 16's
CI run and in a run with Faust's DEVLOG on: the missing sample was in the new log as
kafka-python reads it but never reached the worker (no forecast, not counted late),
and in the DEVLOG run it was the first sample buffered while the broker was down.
Seen once as well: a worker whose group rejoin on the new broker
never completed (no assignment within 150 s, nothing logged after "Heartbeat failed …
re-joining group"); its cause is not known. The failure message names the
servers short of samples, whether their post-outage samples are in the broker's log,
and which of their samples have no forecast.

It prints its counts (sent, delivered, duplicated, lost, recovery time).
"""

from __future__ import annotations

import base64
import os
import signal
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from contracts.messages import GpuSample, ServerForecast, decode
from contracts.topics import topic_for
from foundation.broker import EmbeddedBroker, free_port
from foundation.settings import load_settings
from ingest.producer import BufferedProducer
from streams.state import ServerStates
from streams.telemetry_factory import SyntheticTelemetry
from tapas.bootstrap import collector_producer
from tests.streams_helpers import WorkerProcess, collect, end_consumer

pytestmark = [pytest.mark.integration, pytest.mark.fault]

NUM_SERVERS = 12
FORECASTS = "tapas.forecasts.server"
#: How long the broker is gone. The frozen broker stays away past the worker's 10 s session timeout,
#: so its group expires and is rebuilt; the stopped one is replaced after 4 s as before.
OUTAGE_S = {"outage": 12.0, "empty-restart": 4.0}


def _feed(bootstrap: str) -> BufferedProducer:
    settings = load_settings(kafka={"bootstrap_servers": bootstrap},
                             ingest={"request_timeout_ms": 1500, "retry_backoff_s": 0.2, "max_retry_backoff_s": 1.0,
                                     "linger_ms": 5})
    return collector_producer(settings, source="fault-test")


def _tick(feed: BufferedProducer, fleet: SyntheticTelemetry, sent: dict[str, list[datetime]]) -> None:
    gpus, inlets, _ = fleet.step()
    for m in inlets:
        assert feed.publish_message(m)
    for g in gpus:
        assert feed.publish_message(g)
        sent[g.server_id].append(g.sampled_at)
    feed.pump()


def _sample_counts(worker: WorkerProcess, ids: set[str]) -> dict[str, int]:
    states = ServerStates()
    page: dict[str, Any] = worker.state()
    return {k: int(states.arr["num_samples"][states.load_slot(k, base64.b64decode(v))])
            for k, v in page["states"].items() if k in ids}


def _forecast_keys(msgs: list[Any], ids: set[str]) -> list[tuple[str, datetime]]:
    out = []
    for m in msgs:
        f = decode(ServerForecast, m.value)
        if f.server_id in ids:
            out.append((f.server_id, f.based_on_sample_at))
    return out


@pytest.mark.parametrize("mode", ["outage", pytest.param("empty-restart", marks=pytest.mark.slow)])
def test_broker_restart_under_load_loses_and_duplicates_nothing(tmp_path: Path, mode: str) -> None:
    port = free_port()
    first = EmbeddedBroker(port=port).start()
    second: EmbeddedBroker | None = None
    worker = WorkerProcess(first.bootstrap, tmp_path)
    feed = _feed(first.bootstrap)
    prefix = f"rs{uuid.uuid4().hex[:6]}"
    ids = {f"{prefix}-srv{i:02d}" for i in range(NUM_SERVERS)}
    fleet = SyntheticTelemetry(sorted(ids), start_at=datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=5),
                               seed=11, inlet_every=5)
    sent: dict[str, list[datetime]] = {k: [] for k in ids}
    try:
        worker.start()
        fc = end_consumer(first.bootstrap, FORECASTS)
        # Phase 1: the worker is up and forecasting every server.
        deadline = time.monotonic() + 120
        before: list[tuple[str, datetime]] = []
        while time.monotonic() < deadline:
            _tick(feed, fleet, sent)
            before += _forecast_keys(collect(fc, lambda ms: False, timeout_s=0.5), ids)
            if {k for k, _ in before} == ids:
                break
        assert {k for k, _ in before} == ids, worker.log_tail()
        for _ in range(4):
            _tick(feed, fleet, sent)
            time.sleep(0.3)
        assert feed.flush(20)
        newest = max(max(v) for v in sent.values())
        before += _forecast_keys(collect(fc, lambda ms: {k for k, at in _forecast_keys(ms, ids) if at == newest} >= ids,
                                         timeout_s=30), ids)

        # Phase 2: the broker goes away; the collector keeps accepting.
        sent_before_stop = {k: len(v) for k, v in sent.items()}
        assert first.proc is not None
        if mode == "outage":
            os.kill(first.proc.pid, signal.SIGSTOP)
        else:
            fc.close()
            first.stop()
        down_at = time.monotonic()
        try:
            while time.monotonic() - down_at < OUTAGE_S[mode]:
                _tick(feed, fleet, sent)
                time.sleep(0.4)
            assert not feed.broker_reachable and feed.num_buffered > 0
        finally:
            if mode == "outage":
                os.kill(first.proc.pid, signal.SIGCONT)
        buffered_while_down = feed.num_buffered

        # Phase 3: the broker is back (the same one, or a new empty one on the same port); the collector
        # delivers, the worker resumes.
        sent_while_down = {k: len(v) for k, v in sent.items()}
        if mode == "outage":
            second = first  # forecasts go on from where phase 1 stopped reading
        else:
            second = EmbeddedBroker(port=port).start()
            fc = end_consumer(second.bootstrap, FORECASTS)
            fc.seek_to_beginning()
        back_at = time.monotonic()
        after: list[tuple[str, datetime]] = []
        first_forecast_s: float | None = None
        deadline = time.monotonic() + 150
        while time.monotonic() < deadline:
            _tick(feed, fleet, sent)
            got = _forecast_keys(collect(fc, lambda ms: False, timeout_s=0.5), ids)
            if got and first_forecast_s is None:
                first_forecast_s = time.monotonic() - back_at
            after += got
            if first_forecast_s is not None and time.monotonic() - back_at > first_forecast_s + 3:
                break
        assert first_forecast_s is not None, worker.log_tail()
        assert feed.flush(30), feed.last_error
        newest = max(max(v) for v in sent.values())
        seen_newest = {k for k, at in after if at == newest}  # the loop above may have read some already
        after += _forecast_keys(collect(fc, lambda ms: seen_newest | {k for k, at in _forecast_keys(ms, ids)
                                                                      if at == newest} >= ids, timeout_s=60), ids)
        time.sleep(1.0)
        after += _forecast_keys(collect(fc, lambda ms: False, timeout_s=1.0), ids)
        counts = _sample_counts(worker, ids)
        # Samples the worker ignored because a newer one of their server had arrived first: tells a lost
        # sample (never delivered) from a reordered one if the count assertion below fails.
        late = int(worker.state().get("num_late", -1))
        fc.close()
        # Which samples the new broker holds (from its beginning): if a count falls short, this tells a sample
        # the collector never delivered (or the broker acknowledged and dropped, see the module docstring) from
        # one the worker skipped.
        gc = end_consumer(second.bootstrap, topic_for(GpuSample))
        gc.seek_to_beginning()
        in_new_log = {(s.server_id, s.sampled_at) for s in
                      (decode(GpuSample, m.value) for m in collect(gc, lambda ms: False, timeout_s=3.0))}
        gc.close()
    finally:
        feed.close(5)
        worker.stop()
        first.stop()
        if second is not None and second is not first:
            second.stop()

    num_sent = sum(len(v) for v in sent.values())
    delivered = sum(counts.values())
    forecasts = before + after
    duplicated = len(forecasts) - len(set(forecasts))
    newest_forecast = {k: max(at for kk, at in forecasts if kk == k) for k in ids}
    stale = sorted(k for k in ids if newest_forecast[k] != max(sent[k]))
    print(f"broker {mode} pipeline: servers={len(ids)} samples_sent={num_sent} samples_delivered={delivered} "
          f"lost={num_sent - delivered} buffered_while_down={buffered_while_down} forecasts={len(forecasts)} "
          f"duplicated={duplicated} servers_without_newest_forecast={len(stale)} "
          f"first_forecast_after_restart_s={first_forecast_s:.1f} worker_late_samples={late} "
          f"sent_after_stop={num_sent - sum(sent_before_stop.values())} broker_log_samples={len(in_new_log)}")
    assert feed.num_dropped == 0
    short = sorted(k for k in ids if counts.get(k) != len(sent[k]))

    def whereabouts(k: str) -> str:
        """Per server: counted/sent, and the post-outage samples missing from the broker's log (by phase)."""
        missing = [i for i, at in enumerate(sent[k]) if i >= sent_before_stop[k] and (k, at) not in in_new_log]
        return (f"{k}: counted {counts.get(k)} of {len(sent[k])} (before stop {sent_before_stop[k]}, while down "
                f"{sent_while_down[k] - sent_before_stop[k]}); post-outage samples not in the broker's log: "
                + ", ".join(f"#{i} {'buffered' if i < sent_while_down[k] else 'after restart'}" for i in missing))

    forecast_set = set(forecasts)
    unforecast = sorted((k, i) for k in short for i, at in enumerate(sent[k]) if (k, at) not in forecast_set)
    assert not short, (f"a sample was lost or counted twice ({mode}; worker num_late={late}; broker's log holds "
                       f"{len(in_new_log)} samples): " + "; ".join(whereabouts(k) for k in short)
                       + f"; samples of those servers with no forecast (server, index): {unforecast}")
    assert duplicated == 0, "a forecast was published twice for the same server and sample"
    assert not stale, f"no forecast for the newest sample of {stale[:5]}"
