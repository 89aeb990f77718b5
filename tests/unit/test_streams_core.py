"""Unit tests of the stream worker's pure parts: state bytes, joins, forecasts, aggregates, dead letters."""

from __future__ import annotations

import base64
import json
import math
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from contracts.messages import DeadLetter, DomainForecast, GpuSample, InletSample, ServerForecast, decode
from forecasting.online import OnlineForecaster
from foundation.topology import default_topology
from streams.aggregate import DOMAIN_KINDS, DomainCombiner, partials_from_bytes, partials_to_bytes
from streams.joins import JoinWindows, join_server_power
from streams.processor import RawRecord, StreamProcessor, TopologyView
from streams.publish import ServerPlace, iso_utc, power_headroom_w, server_forecast_json
from streams.state import SCALARS, WINDOW, ServerStates
from streams.telemetry_factory import SyntheticTelemetry

T0 = datetime(2026, 11, 25, 9, 0, tzinfo=UTC)


def _records(msgs: list[GpuSample] | list[InletSample], topic: str) -> list[RawRecord]:
    return [RawRecord(m.server_id.encode(), m.to_bytes(), topic, 0, i) for i, m in enumerate(msgs)]


def _processor(num_servers: int = 8) -> tuple[StreamProcessor, SyntheticTelemetry]:
    topo = default_topology(num_servers)
    tel = SyntheticTelemetry(topo.server_ids, pdu_of={s.server_id: s.pdu_id for s in topo.servers},
                             start_at=T0, seed=1, inlet_every=3, pdu_every=2)
    proc = StreamProcessor(TopologyView.from_topology(topo, inlet_limit_c=27.0), OnlineForecaster(),
                           horizons_s=[10, 60, 300], clock=lambda: tel.at.timestamp())  # receiver keeps pace
    return proc, tel


def _step(proc: StreamProcessor, tel: SyntheticTelemetry) -> list[tuple[bytes, bytes]]:
    gpus, inlets, pdus = tel.step()
    proc.handle_pdu([RawRecord(p.pdu_id.encode(), p.to_bytes(), "pdu") for p in pdus])
    proc.handle_inlet(_records(inlets, "inlet"))
    return proc.handle_gpu(_records(gpus, "gpu")).forecasts


@settings(max_examples=40, deadline=None)
@given(values=st.lists(st.floats(allow_nan=True, allow_infinity=True), min_size=len(SCALARS),
                       max_size=len(SCALARS)),
       window=st.lists(st.floats(allow_nan=True), min_size=3, max_size=3),
       config=st.text(max_size=30))
def test_state_bytes_round_trip_exactly(values: list[float], window: list[float], config: str) -> None:
    states = ServerStates(capacity=1)
    i = states.slot("s")
    states.matrix[i] = values
    states.arr["window_pos"][i] = states.arr["window_len"][i] = 0.0  # bookkeeping, not free data
    for t in window:
        states.push_window(i, t, t * 2)
    states.config_ids[i] = config
    states.models[i] = OnlineForecaster().new_state()
    raw = states.slot_bytes(i)
    other = ServerStates()
    j = other.load_slot("s", raw)
    assert other.slot_bytes(j) == raw
    assert other.config_ids[j] == config and other.models[j] == states.models[i]


def test_load_slot_refuses_foreign_bytes() -> None:
    with pytest.raises(ValueError, match="too short"):
        ServerStates().load_slot("s", b"\x01\x02")
    states = ServerStates()
    good = states.slot_bytes(states.slot("s"))
    raw = bytearray(good)
    raw[0] = 9
    with pytest.raises(ValueError, match="format 9"):
        ServerStates().load_slot("s", bytes(raw))


def test_rolling_window_keeps_the_last_samples() -> None:
    states = ServerStates()
    i = states.slot("s")
    for k in range(WINDOW + 10):
        states.push_window(i, float(k), 100.0)
    stats = states.window_stats(i)
    assert stats.num_samples == WINDOW
    assert stats.max_temp_c == WINDOW + 9 and stats.mean_temp_c == pytest.approx(np.mean(range(10, WINDOW + 10)))


def test_join_prefers_fresh_chassis_power_then_pdu_share() -> None:
    assert join_server_power(4000.0, 100.0, 3900.0, 100.0, 101.0, 10.0) == 4000.0
    assert join_server_power(4000.0, 50.0, 3900.0, 100.0, 101.0, 10.0) == 3900.0
    assert math.isnan(join_server_power(4000.0, 50.0, 3900.0, 50.0, 101.0, 10.0))


def test_every_server_gets_valid_forecasts_and_headroom_names_its_limits() -> None:
    proc, tel = _processor(8)
    forecasts = []
    for _ in range(5):
        forecasts = _step(proc, tel)
    assert len(forecasts) == 8
    for _, raw in forecasts:
        f = decode(ServerForecast, raw)
        assert [h.horizon_s for h in f.horizons] == [10.0, 60.0, 300.0]
        assert f.row_id and f.pdu_id and f.rack_id and f.zone_id
        assert f.thermal_headroom_c == pytest.approx(f.slowdown_temp_c - f.horizons[0].gpu_temp_hi_c)
        assert f.power_headroom_w <= 6500.0 - f.horizons[0].power_hi_w + 1e-9
        assert f.inlet_temp_c is not None and f.power_w > 0


def test_forecasts_are_published_once_per_tick_of_sample_time() -> None:
    proc, tel = _processor(4)
    gpus, _, _ = tel.step()
    first = proc.handle_gpu(_records(gpus, "gpu"))
    again = [g.model_copy(update={"sampled_at": g.sampled_at + timedelta(seconds=0.5)}) for g in gpus]
    half = proc.handle_gpu(_records(again, "gpu"))
    later = [g.model_copy(update={"sampled_at": g.sampled_at + timedelta(seconds=1.0)}) for g in gpus]
    full = proc.handle_gpu(_records(later, "gpu"))
    assert (len(first.forecasts), len(half.forecasts), len(full.forecasts)) == (4, 0, 4)


def test_replayed_and_late_samples_leave_state_unchanged() -> None:
    proc, tel = _processor(4)
    history = [tel.step()[0] for _ in range(4)]
    for gpus in history:
        proc.handle_gpu(_records(gpus, "gpu"))
    before = proc.take_dirty_states()
    for gpus in history:  # a crash-restart replays from the last committed offset
        out = proc.handle_gpu(_records(gpus, "gpu"))
        assert out.forecasts == []
    assert proc.take_dirty_states() == {}
    assert {k: proc.state_bytes(k) for k in before} == before
    assert proc.num_late == 16


def test_restored_processor_continues_bit_for_bit() -> None:
    a, tel = _processor(4)
    for _ in range(3):
        _step(a, tel)
    b = StreamProcessor(a.view, OnlineForecaster(), horizons_s=[10, 60, 300], clock=a.clock)
    for sid, raw in a.take_dirty_states().items():
        b.restore(sid, raw)
    b.pdu_power = dict(a.pdu_power)
    gpus, _, _ = tel.step()
    a.handle_gpu(_records(gpus, "gpu"))
    b.handle_gpu(_records(gpus, "gpu"))
    assert a.take_dirty_states() == b.take_dirty_states()


@pytest.mark.parametrize(("raw", "field"), [
    (b"{not json", ""),
    (b'{"server_id": "s", "sampled_at": "2026-01-01T00:00:00Z", "gpus": []}', "gpus"),
    (b'{"schema_version": "9.0", "server_id": "s", "sampled_at": "2026-01-01T00:00:00Z", "gpus": []}',
     "schema_version"),
])
def test_malformed_samples_become_dead_letters_with_field_and_original_bytes(raw: bytes, field: str) -> None:
    proc, _ = _processor(2)
    out = proc.handle_gpu([RawRecord(b"k", raw, "tapas.telemetry.gpu", 3, 42)])
    assert out.forecasts == [] and len(out.dead_letters) == 1
    key, letter_raw = out.dead_letters[0]
    letter = decode(DeadLetter, letter_raw)
    assert key == b"k" and letter.field == field and letter.reason
    assert (letter.partition, letter.offset, letter.source_topic) == (3, 42, "tapas.telemetry.gpu")
    assert base64.b64decode(letter.raw_b64) == raw


def test_sample_without_any_valid_temperature_is_dead_lettered() -> None:
    proc, tel = _processor(1)
    g = tel.step()[0][0]
    bad = g.model_copy(update={"gpus": [r.model_copy(update={"gpu_temp_c": None}) for r in g.gpus]})
    out = proc.handle_gpu(_records([bad], "gpu"))
    assert decode(DeadLetter, out.dead_letters[0][1]).field == "gpus.gpu_temp_c"


def test_domain_forecasts_sum_servers_and_use_measured_pdu_power() -> None:
    proc, tel = _processor(8)
    for _ in range(4):
        _step(proc, tel)
    partials = partials_from_bytes(partials_to_bytes(proc.domain_partials()))
    for p in partials:
        proc.combiner.add(p)
    domains = {(d.domain_kind, d.domain_id): d for d in proc.domain_forecasts()}
    assert {k for k, _ in domains} == set(DOMAIN_KINDS)
    for d in domains.values():
        DomainForecast.model_validate_json(d.to_bytes())
        assert d.num_servers > 0 and d.power_limit_w
        assert all(hi >= f for f, hi in zip(d.power_forecast_w, d.power_forecast_hi_w, strict=True))
    pdu_w = {p: w for p, (w, _) in proc.pdu_power.items()}
    for (kind, dom), d in domains.items():
        if kind == "pdu":
            assert d.power_w == pytest.approx(pdu_w[dom])
    zone = next(d for (k, _), d in domains.items() if k == "zone")
    assert zone.inlet_limit_c == 27.0 and zone.max_inlet_temp_c is not None


def test_combiner_drops_partials_of_a_worker_that_went_quiet() -> None:
    proc, tel = _processor(4)
    for _ in range(2):
        _step(proc, tel)
    old = proc.domain_partials()
    now = [100.0]
    combiner = DomainCombiner(proc.view.limits, stale_after_s=5.0, clock=lambda: now[0])
    for p in old:
        combiner.add(p)  # w1 arrives at 100 s
    now[0] = 110.0
    for p in old:
        combiner.add(type(p)(**{**p.__dict__, "worker_id": "w2"}))  # w2 arrives at 110 s, w1 quiet since 100 s
    rows = [d for d in combiner.combine(issued_at=T0, pdu_power_w={}) if d.domain_kind == "row"]
    assert rows and all(d.num_servers == 4 for d in rows)


def test_combiner_judges_workers_by_arrival_not_by_their_stream_time() -> None:
    """A worker whose stream time runs 60 s ahead (a skewed collector) must not make the other look stale."""
    proc, tel = _processor(4)
    for _ in range(2):
        _step(proc, tel)
    old = proc.domain_partials()
    combiner = DomainCombiner(proc.view.limits, stale_after_s=5.0, clock=lambda: 100.0)
    for p in old:
        combiner.add(p)
        combiner.add(type(p)(**{**p.__dict__, "worker_id": "w2", "at_s": p.at_s + 60.0}))
    rows = [d for d in combiner.combine(issued_at=T0, pdu_power_w={}) if d.domain_kind == "row"]
    assert rows and all(d.num_servers == 8 for d in rows)  # both workers' 4 servers count


def test_hand_built_forecast_json_matches_the_contract() -> None:
    place = ServerPlace("k", "r", "p", "z", 6500.0, 0.25, 0.05)
    raw = server_forecast_json(server_id='s"1', issued_at_s=1767225600.5, based_on_at_s=1767225600.0,
                               model_version="v1", interval_level=0.9, gpu_temp_c=70.0, power_w=5000.0,
                               inlet_temp_c=None, slowdown_temp_c=87.0, thermal_headroom_c=10.0,
                               power_headroom_w=-5.0, horizons=[(10.0, 71.0, 70.0, 77.0, 5000.0, 4900.0, 5100.0)],
                               place=place)
    f = decode(ServerForecast, raw)
    assert f.server_id == 's"1' and f.inlet_temp_c is None and f.power_headroom_w == -5.0
    assert f.issued_at == datetime(2026, 1, 1, 0, 0, 0, 500000, tzinfo=UTC)
    assert json.loads(raw)["horizons"][0]["gpu_temp_hi_c"] == 77.0


def test_power_headroom_is_the_tightest_of_server_pdu_and_row() -> None:
    place = ServerPlace("k", "r", "p", "z", 6500.0, 0.25, 0.05)
    assert power_headroom_w(nameplate_w=6500.0, power_hi_w=6000.0, place=place, pdu_remaining_w=None,
                            row_remaining_w=None) == 500.0
    assert power_headroom_w(nameplate_w=6500.0, power_hi_w=1000.0, place=place, pdu_remaining_w=1000.0,
                            row_remaining_w=None) == 250.0
    assert power_headroom_w(nameplate_w=6500.0, power_hi_w=1000.0, place=place, pdu_remaining_w=1000.0,
                            row_remaining_w=-200.0) == -10.0


@given(st.floats(min_value=0, max_value=4e9))
def test_iso_utc_matches_datetime_formatting(at_s: float) -> None:
    assert iso_utc(at_s) == datetime.fromtimestamp(at_s, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def test_join_windows_drop_stale_inlet() -> None:
    topo = default_topology(1)
    tel = SyntheticTelemetry(topo.server_ids, start_at=T0, inlet_every=1000)
    proc = StreamProcessor(TopologyView.from_topology(topo, inlet_limit_c=27.0), OnlineForecaster(),
                           horizons_s=[10], windows=JoinWindows(inlet_max_age_s=30.0), clock=lambda: tel.at.timestamp())
    gpus, inlets, _ = tel.step()
    proc.handle_inlet(_records(inlets, "inlet"))
    fresh = decode(ServerForecast, proc.handle_gpu(_records(gpus, "gpu")).forecasts[0][1])
    for _ in range(40):
        gpus, _, _ = tel.step()
    stale = decode(ServerForecast, proc.handle_gpu(_records(gpus, "gpu")).forecasts[0][1])
    assert fresh.inlet_temp_c is not None and stale.inlet_temp_c is None


def test_partials_wire_form_reads_rows_and_the_older_objects_and_refuses_foreign_rows() -> None:
    from streams.aggregate import Partial

    p = Partial("w1", "pdu", "p1", 5.0, 3, 900.0, 24.5, (10.0, 60.0), (910.0, 920.0), (950.0, 990.0))
    assert partials_from_bytes(partials_to_bytes([p, p])) == [p, p]
    older = json.dumps([{k: getattr(p, k) for k in p.__dataclass_fields__}]).encode()
    assert partials_from_bytes(older) == [p]
    for bad in (b'[["w1", "pdu"]]', b'[["w1", "shelf", "p1", 5, 3, 900, null, [], [], []]]', b'[7]'):
        with pytest.raises((ValueError, KeyError, TypeError)):
            partials_from_bytes(bad)


def test_dead_letters_and_domain_forecasts_take_their_time_from_the_injected_clock() -> None:
    topo = default_topology(2)
    proc = StreamProcessor(TopologyView.from_topology(topo, inlet_limit_c=27.0), OnlineForecaster(),
                           horizons_s=[10, 60, 300], clock=lambda: T0.timestamp())
    out = proc.handle_gpu([RawRecord(b"k", b"{not json", "tapas.telemetry.gpu", 0, 1)])
    assert decode(DeadLetter, out.dead_letters[0][1]).received_at == T0
    tel = SyntheticTelemetry(topo.server_ids, pdu_of={s.server_id: s.pdu_id for s in topo.servers},
                             start_at=T0, seed=1, inlet_every=1, pdu_every=1)
    _step(proc, tel)
    for part in proc.domain_partials():
        proc.combiner.add(part)
    issued = {d.issued_at for d in proc.domain_forecasts()}
    assert issued == {T0}
