"""The stream processor against hostile and unlucky input: time sanity, per-record isolation, bounds (issue 22).

Each test drives :class:`StreamProcessor` with the receiver's clock injected. The
same reproductions run against a real ``tapas worker`` and the embedded broker in
``tests/integration/test_streams_poison_worker.py``.
"""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime, timedelta

import pytest

from contracts.messages import DeadLetter, GpuSample, ServerForecast, decode
from forecasting.online import OnlineForecaster
from forecasting.state import Observation, ServerModelState
from foundation.topology import default_topology
from streams.processor import DEAD_LETTER_MAX_RAW_BYTES, RawRecord, StreamProcessor, TimeWindow, TopologyView
from streams.telemetry_factory import SyntheticTelemetry

T0 = datetime(2026, 11, 25, 9, 0, tzinfo=UTC)
GPU = "tapas.telemetry.gpu"


def _setup(num_servers: int = 4, **kw: object) -> tuple[StreamProcessor, SyntheticTelemetry]:
    topo = default_topology(num_servers)
    tel = SyntheticTelemetry(topo.server_ids, pdu_of={s.server_id: s.pdu_id for s in topo.servers},
                             start_at=T0, seed=3, inlet_every=2, pdu_every=1)
    proc = StreamProcessor(TopologyView.from_topology(topo, inlet_limit_c=27.0), OnlineForecaster(),
                           horizons_s=[10, 60], clock=lambda: tel.at.timestamp(), **kw)  # type: ignore[arg-type]
    return proc, tel


def _gpu_recs(msgs: list[GpuSample]) -> list[RawRecord]:
    return [RawRecord(m.server_id.encode(), m.to_bytes(), GPU, 0, i) for i, m in enumerate(msgs)]


def _letters(out: object) -> list[DeadLetter]:
    return [decode(DeadLetter, raw) for _, raw in out.dead_letters]  # type: ignore[attr-defined]


def test_a_2099_sample_is_dead_lettered_and_does_not_freeze_its_server() -> None:
    proc, tel = _setup(2)
    gpus, _, _ = tel.step()
    proc.handle_gpu(_gpu_recs(gpus))
    future = gpus[0].model_copy(update={"sampled_at": datetime(2099, 1, 1, tzinfo=UTC)})
    out = proc.handle_gpu(_gpu_recs([future]))
    [letter] = _letters(out)
    assert letter.field == "sampled_at" and "ahead of the receiver's clock" in letter.reason
    assert proc.stream_time_s <= tel.at.timestamp() + proc.time_window.max_skew_s
    got = 0
    for _ in range(15):  # every later genuine sample still produces a forecast
        gpus, _, _ = tel.step()
        got += sum(k == gpus[0].server_id.encode() for k, _ in proc.handle_gpu(_gpu_recs(gpus)).forecasts)
    assert got == 15
    assert datetime(2099, 1, 1, tzinfo=UTC).timestamp() not in proc.states.arr["gpu_at_s"]


def test_far_past_and_skewed_samples_are_judged_by_the_receivers_clock() -> None:
    proc, tel = _setup(1, time_window=TimeWindow(max_age_s=3600.0, max_skew_s=30.0))
    gpus, _, _ = tel.step()
    now = tel.at
    cases = {timedelta(hours=-2): "older than", timedelta(seconds=61): "ahead of",
             timedelta(seconds=-60): None, timedelta(seconds=20): None}
    for shift, refused in cases.items():
        s = gpus[0].model_copy(update={"sampled_at": now + shift})
        out = proc.handle_gpu(_gpu_recs([s]))
        if refused is None:
            assert not out.dead_letters, shift
        else:
            assert refused in _letters(out)[0].reason, shift
    assert proc.skew_max_s == pytest.approx(61.0, abs=1.0) and proc.skew_min_s == pytest.approx(-7200.0, abs=1.0)


def test_an_offset_past_year_9999_is_a_contract_error_not_a_crash() -> None:
    proc, tel = _setup(1)
    gpus, _, _ = tel.step()
    doc = json.loads(gpus[0].to_bytes())
    doc["sampled_at"] = "9999-12-31T23:59:59-23:59"
    out = proc.handle_gpu([RawRecord(gpus[0].server_id.encode(), json.dumps(doc).encode(), GPU, 0, 0),
                           *_gpu_recs(gpus)])
    [letter] = _letters(out)
    assert letter.field == "sampled_at" and "representable in UTC" in letter.reason
    assert len(out.forecasts) == 1  # the rest of the batch went on


def test_a_huge_malformed_message_makes_a_bounded_dead_letter_with_its_length() -> None:
    proc, _ = _setup(1)
    raw = b'{"server_id": "' + b"x" * 800_000 + b'"'
    out = proc.handle_gpu([RawRecord(b"k", raw, GPU, 3, 9)])
    [letter] = _letters(out)
    assert letter.raw_length == len(raw) and letter.raw_truncated
    assert base64.b64decode(letter.raw_b64) == raw[:DEAD_LETTER_MAX_RAW_BYTES]
    assert len(out.dead_letters[0][1]) < 100_000  # well under a Kafka request
    small = _letters(proc.handle_gpu([RawRecord(b"k", b"{", GPU, 3, 10)]))[0]
    assert small.raw_length == 1 and not small.raw_truncated


def test_ten_thousand_instance_ids_are_refused_at_the_edge() -> None:
    proc, tel = _setup(1)
    gpus, _, _ = tel.step()
    doc = json.loads(gpus[0].to_bytes())
    doc["workload"] = {"instance_ids": [f"vm-{i}" for i in range(10_001)]}
    out = proc.handle_gpu([RawRecord(gpus[0].server_id.encode(), json.dumps(doc).encode(), GPU, 0, 0)])
    [letter] = _letters(out)
    assert letter.field == "workload.instance_ids"


def test_a_key_that_does_not_match_the_body_is_dead_lettered() -> None:
    proc, tel = _setup(2)
    gpus, _, _ = tel.step()
    a, b = gpus
    out = proc.handle_gpu([RawRecord(b.server_id.encode(), a.to_bytes(), GPU, 0, 0),
                           RawRecord(None, a.to_bytes(), GPU, 0, 1), *_gpu_recs([b])])
    letters = _letters(out)
    assert [x.field for x in letters] == ["server_id", "server_id"]
    assert "does not match the Kafka key" in letters[0].reason and "missing" in letters[1].reason
    assert [k for k, _ in out.forecasts] == [b.server_id.encode()]


class _FailsFor(OnlineForecaster):
    """A forecaster that raises for one server: an unexpected bug while handling one record."""

    def __init__(self, bad: str) -> None:
        super().__init__()
        self.bad = bad

    def update(self, state: ServerModelState, obs: Observation) -> ServerModelState:
        if obs.server_id == self.bad:
            raise ZeroDivisionError("model blew up")
        return super().update(state, obs)


def test_an_exception_while_handling_one_record_dead_letters_it_and_the_batch_goes_on() -> None:
    proc, tel = _setup(4)
    proc.set_forecaster(_FailsFor(tel.server_ids[1]))
    gpus, _, _ = tel.step()
    out = proc.handle_gpu(_gpu_recs(gpus))
    [letter] = _letters(out)
    assert "ZeroDivisionError: model blew up" in letter.reason and letter.offset == 1
    assert sorted(k.decode() for k, _ in out.forecasts) == sorted(s for s in tel.server_ids if s != tel.server_ids[1])
    assert proc.num_internal_errors == 1
    for _, raw in out.forecasts:
        decode(ServerForecast, raw)


def test_new_server_ids_beyond_the_bound_are_refused_and_counted() -> None:
    proc, tel = _setup(4, max_servers=3)
    gpus, _, _ = tel.step()
    out = proc.handle_gpu(_gpu_recs(gpus))
    assert len(proc.states) == 3 and len(out.forecasts) == 3 and proc.num_evicted == 1
    assert "holds 3 servers" in _letters(out)[0].reason
    gpus, _, _ = tel.step()
    assert len(proc.handle_gpu(_gpu_recs(gpus[:3])).forecasts) == 3  # known servers keep going


def test_domain_freshness_survives_one_collector_running_60_s_ahead() -> None:
    """Reproduction: a collector 8 s ahead halved the row's server count, 60 s ahead read 0 W."""
    proc, tel = _setup(8, time_window=TimeWindow(max_skew_s=120.0))
    for _ in range(3):
        gpus, inlets, pdus = tel.step()
        gpus[0] = gpus[0].model_copy(update={"sampled_at": gpus[0].sampled_at + timedelta(seconds=60)})
        proc.handle_pdu([RawRecord(p.pdu_id.encode(), p.to_bytes(), "pdu") for p in pdus])
        proc.handle_gpu(_gpu_recs(gpus))
    for p in proc.domain_partials():
        proc.combiner.add(p)
    rows = [d for d in proc.domain_forecasts() if d.domain_kind == "row"]
    assert sum(d.num_servers for d in rows) == 8
    assert all(d.power_w > 0 for d in rows)


@pytest.mark.parametrize(("env", "named"), [
    ({"TAPAS_CONTROLLER__MAX_FREQENCY_MHZ": "100"}, "controller.max_freqency_mhz"),
    ({"TAPAS_CONTROLLER__MIN_POWER_LIMIT_W": "1500"}, "min_power_limit_w=1500.0 is above max_power_limit_w"),
    ({"TAPAS_DASHBOARD__PASSWORD": ""}, "dashboard.password"),
])
def test_unsafe_settings_are_errors_naming_the_key(monkeypatch: pytest.MonkeyPatch, env: dict[str, str],
                                                   named: str) -> None:
    from pydantic import ValidationError

    from foundation.settings import Settings

    for k, v in env.items():
        monkeypatch.setenv(k, v)
    with pytest.raises(ValidationError, match=named.replace(".", r"\.")):
        Settings()
