"""Safety gate: bounds, expiry, rate limits and idempotence of reconfiguration commands."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from contracts import ReconfigCommand, ReconfigParams, SafetyViolation
from controller.safety import SafetyBounds, SafetyGate, check_bounds, make_command_id, refusal_event
from foundation.settings import ControllerSettings

T0 = datetime(2026, 11, 25, 10, 0, tzinfo=UTC)
BOUNDS = SafetyBounds(min_frequency_mhz=900, max_frequency_mhz=2000, min_power_limit_w=150,
                      max_power_limit_w=700, min_capacity_frac=0.3, max_ttl_s=600, max_commands_per_window=3)


def cmd(cid: str = "cmd-00000001", *, action: str = "set_frequency_cap", freq: float | None = 1200,
        power: float | None = None, ttl_s: float = 120, at: datetime = T0, server: str = "s1",
        instance: str | None = None, trigger: str = "thermal", layer: str = "host") -> ReconfigCommand:
    return ReconfigCommand(command_id=cid, issued_at=at, expires_at=at + timedelta(seconds=ttl_s), server_id=server,
                           instance_id=instance, action=action,  # type: ignore[arg-type]
                           params=ReconfigParams(frequency_cap_mhz=freq, power_limit_w=power), reason="test",
                           trigger=trigger, layer=layer)  # type: ignore[arg-type]


def test_bounds_come_from_settings() -> None:
    s = ControllerSettings(min_frequency_mhz=1000, max_commands_per_instance_per_min=2, max_command_ttl_s=60)
    b = SafetyBounds.from_settings(s)
    assert (b.min_frequency_mhz, b.max_commands_per_window, b.max_ttl_s) == (1000, 2, 60)


@given(freq=st.floats(min_value=100, max_value=5000))
def test_frequency_cap_accepted_exactly_within_bounds(freq: float) -> None:
    reason = check_bounds(cmd(freq=freq), BOUNDS)
    inside = BOUNDS.min_frequency_mhz <= freq <= BOUNDS.max_frequency_mhz
    assert (reason is None) == inside
    if not inside:
        assert "frequency_cap_mhz" in reason  # type: ignore[operator]


@given(power=st.floats(min_value=50, max_value=2000))
def test_power_limit_accepted_exactly_within_bounds(power: float) -> None:
    reason = check_bounds(cmd(action="set_power_limit", freq=None, power=power), BOUNDS)
    assert (reason is None) == (BOUNDS.min_power_limit_w <= power <= BOUNDS.max_power_limit_w)


def test_missing_parameter_capacity_ttl_and_layer_are_refused() -> None:
    assert "needs params.frequency_cap_mhz" in (check_bounds(cmd(freq=None), BOUNDS) or "")
    assert "maximum 600 s" in (check_bounds(cmd(ttl_s=3600), BOUNDS) or "")
    assert "nominal capacity" in (check_bounds(cmd(), BOUNDS, capacity_frac_after=0.2) or "")
    assert check_bounds(cmd(), BOUNDS, capacity_frac_after=0.5) is None
    serving_on_host = cmd(action="set_max_batch", freq=None)
    assert "needs its parameter" in (check_bounds(serving_on_host, BOUNDS) or "")
    ok_batch = serving_on_host.model_copy(update={"params": ReconfigParams(max_batch=8), "layer": "serving"})
    assert check_bounds(ok_batch, BOUNDS) is None
    assert "serving-layer action" in (check_bounds(ok_batch.model_copy(update={"layer": "host"}), BOUNDS) or "")


def test_duplicate_id_is_applied_once() -> None:
    gate = SafetyGate(BOUNDS)
    assert gate.admit(cmd("cmd-dup00001"), now=T0).status == "ok"
    assert gate.admit(cmd("cmd-dup00001"), now=T0 + timedelta(seconds=1)).status == "duplicate"
    # a duplicate does not count against the rate limit
    assert gate.admit(cmd("cmd-dup00002"), now=T0).ok
    assert gate.admit(cmd("cmd-dup00003"), now=T0).ok


def test_rate_limit_per_target_with_sliding_window() -> None:
    gate = SafetyGate(BOUNDS)
    for i in range(3):
        assert gate.admit(cmd(f"cmd-rate000{i}", instance="i1"), now=T0 + timedelta(seconds=i)).ok
    refused = gate.admit(cmd("cmd-rate0003", instance="i1"), now=T0 + timedelta(seconds=10))
    assert refused.status == "refused" and "rate limit" in refused.reason
    # another instance is unaffected; the window slides
    assert gate.admit(cmd("cmd-rate0004", instance="i2"), now=T0 + timedelta(seconds=10)).ok
    assert gate.admit(cmd("cmd-rate0005", instance="i1", at=T0 + timedelta(seconds=61)),
                      now=T0 + timedelta(seconds=61)).ok
    # a refused id stays refused on replay
    assert gate.admit(cmd("cmd-rate0003", instance="i1"), now=T0 + timedelta(seconds=200)).status == "refused"


def test_emergency_tightening_bypasses_rate_limit_but_not_bounds() -> None:
    gate = SafetyGate(BOUNDS)
    for i in range(3):
        assert gate.admit(cmd(f"cmd-emer000{i}"), now=T0).ok
    assert gate.admit(cmd("cmd-emer0003", trigger="emergency", freq=1000), now=T0).ok
    too_low = gate.admit(cmd("cmd-emer0004", trigger="emergency", freq=500), now=T0)
    assert too_low.status == "refused" and "minimum frequency" in too_low.reason


def test_expired_command_is_not_admitted_and_check_raises() -> None:
    gate = SafetyGate(BOUNDS)
    assert gate.admit(cmd("cmd-expired1", ttl_s=10), now=T0 + timedelta(seconds=11)).status == "expired"
    with pytest.raises(SafetyViolation, match="minimum frequency"):
        gate.check(cmd("cmd-toolow01", freq=100), now=T0)


def test_ledger_forgets_long_expired_ids() -> None:
    gate = SafetyGate(BOUNDS)
    gate.admit(cmd("cmd-forget01", ttl_s=10), now=T0)
    gate.forget_expired(T0 + timedelta(seconds=5))
    assert len(gate.ledger) == 1
    gate.forget_expired(T0 + timedelta(seconds=200))
    assert len(gate.ledger) == 0


def test_command_ids_are_deterministic_and_distinct() -> None:
    p = ReconfigParams(frequency_cap_mhz=1200)
    a = make_command_id(target="s1", action="set_frequency_cap", params=p, epoch=1)
    assert a == make_command_id(target="s1", action="set_frequency_cap", params=p, epoch=1)
    assert a != make_command_id(target="s1", action="set_frequency_cap", params=p, epoch=2)
    assert a != make_command_id(target="s2", action="set_frequency_cap", params=p, epoch=1)


def test_refusal_event_names_command_and_reason() -> None:
    ev = refusal_event(cmd(), "below the minimum", now=T0, refused_by="agent s1")
    assert ev.event_kind == "safety_refused" and ev.domain_id == "s1"
    assert "cmd-00000001" in ev.detail and "below the minimum" in ev.detail
