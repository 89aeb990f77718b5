"""Whatever arrives on the command topic, a command outside the safety bounds is never admitted.

Raw bytes for ``tapas.control.commands`` (schema-drawn documents and mutations of a
valid command) go through what the node agent does on receipt: ``decode`` then
``controller.safety.SafetyGate.admit``. Properties: nothing but ``ContractError``
escapes decoding; the gate never raises; an admitted command has its frequency cap and
power limit inside the bounds, has not expired, lives no longer than the maximum TTL and
is admitted once only; a stream of commands to one target never gets more than the rate
limit admitted per window (emergency commands excepted, as documented).
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from contracts import ReconfigCommand, ReconfigParams
from controller.safety import SafetyBounds, SafetyGate, Verdict
from tests.fuzz.mutations import TALLY, Mutant, check_decode, mutants
from tests.fuzz.schema_strategy import documents
from tests.samples import T0, example_messages

BOUNDS = SafetyBounds(min_frequency_mhz=900, max_frequency_mhz=2000, min_power_limit_w=150, max_power_limit_w=700,
                      max_ttl_s=600, max_commands_per_window=3)
EXAMPLE = next(m for m in example_messages() if isinstance(m, ReconfigCommand))


def _settings(n: int, *, fast: bool) -> settings:
    return settings(max_examples=n, deadline=None, database=None, derandomize=fast,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                           HealthCheck.filter_too_much])


def assert_admitted_is_safe(cmd: ReconfigCommand, gate: SafetyGate, now: datetime) -> Verdict:
    """Admit ``cmd`` and, if admitted, check every bound; returns the gate's verdict."""
    verdict = gate.admit(cmd, now=now)
    assert verdict.status in ("ok", "refused", "duplicate", "expired")
    if not verdict.ok:
        assert verdict.reason, f"{verdict.status} without a reason"
        return verdict
    p = cmd.params
    if p.frequency_cap_mhz is not None:
        assert BOUNDS.min_frequency_mhz <= p.frequency_cap_mhz <= BOUNDS.max_frequency_mhz
    if p.power_limit_w is not None:
        assert BOUNDS.min_power_limit_w <= p.power_limit_w <= BOUNDS.max_power_limit_w
    assert cmd.expires_at > now
    assert (cmd.expires_at - cmd.issued_at).total_seconds() <= BOUNDS.max_ttl_s + 1e-6
    again = gate.admit(cmd, now=now)
    assert not again.ok, "the same command_id was admitted twice"
    return verdict


def _wire_inputs() -> st.SearchStrategy[Mutant]:
    doc = json.loads(EXAMPLE.to_bytes())
    schema = documents(ReconfigCommand).map(lambda d: Mutant(json.dumps(d).encode(), "schema", None))
    return st.one_of(mutants(doc), schema)


@pytest.mark.parametrize("budget,fast", [(150, True), pytest.param(1500, False, marks=pytest.mark.fuzz)],
                         ids=["fast", "full"])
def test_no_out_of_bounds_command_from_the_wire_is_admitted(budget: int, fast: bool) -> None:
    admitted = 0

    @_settings(budget, fast=fast)
    @given(_wire_inputs(), st.integers(-600, 600))
    def run(m: Mutant, offset_s: int) -> None:
        nonlocal admitted
        cmd = check_decode(ReconfigCommand, m)
        if isinstance(cmd, ReconfigCommand):
            admitted += assert_admitted_is_safe(cmd, SafetyGate(BOUNDS), T0 + timedelta(seconds=offset_s)).ok

    run()
    assert admitted > 0, "no generated command was admitted: the property was never exercised"


# Half the values inside the bounds, so streams do reach the rate limit; the rest anywhere the contract allows.
cap = st.one_of(st.none(), st.floats(900, 2000), st.floats(100, 5000))
limit = st.one_of(st.none(), st.floats(150, 700), st.floats(50, 2000))


@st.composite
def command_streams(draw: st.DrawFn) -> list[tuple[ReconfigCommand, datetime]]:
    """Commands to a few targets at increasing instants, with valid-by-contract random parameters."""
    out = []
    now = T0
    for i in range(draw(st.integers(1, 25))):
        now += timedelta(seconds=draw(st.floats(0, 12)))
        action = draw(st.sampled_from(["set_frequency_cap", "set_power_limit", "revert"]))
        ttl = draw(st.one_of(st.floats(30, 600), st.floats(0.5, 1200)))
        cmd = ReconfigCommand(
            command_id=f"cmd-{draw(st.integers(0, 30)):08d}" if draw(st.booleans()) else f"cmd-uniq-{i:04d}",
            issued_at=now, expires_at=now + timedelta(seconds=ttl), server_id=draw(st.sampled_from(["s1", "s2"])),
            action=action, params=ReconfigParams(frequency_cap_mhz=draw(cap), power_limit_w=draw(limit)),
            reason="fuzz", trigger=draw(st.sampled_from(["thermal", "power", "emergency"])))
        out.append((cmd, now + timedelta(seconds=draw(st.floats(0, 5)))))
    return out


@pytest.mark.parametrize("budget,fast", [(60, True), pytest.param(600, False, marks=pytest.mark.fuzz)],
                         ids=["fast", "full"])
def test_a_command_stream_respects_bounds_idempotence_and_the_rate_limit(budget: int, fast: bool) -> None:
    rate_refusals = 0

    @_settings(budget, fast=fast)
    @given(command_streams())
    def run(stream: list[tuple[ReconfigCommand, datetime]]) -> None:
        nonlocal rate_refusals
        gate = SafetyGate(BOUNDS)
        admitted_at: dict[str, list[datetime]] = {}
        for cmd, now in stream:
            verdict = assert_admitted_is_safe(cmd, gate, now)
            TALLY.add("command_stream", accepted=verdict.ok)
            rate_refusals += verdict.reason.startswith("rate limit")
            if verdict.ok and cmd.trigger != "emergency":
                admitted_at.setdefault(cmd.server_id, []).append(now)
        for server, times in admitted_at.items():
            for t in times:
                window = [u for u in times if t - timedelta(seconds=BOUNDS.rate_window_s) < u <= t]
                assert len(window) <= BOUNDS.max_commands_per_window, (server, len(window))

    run()
    assert rate_refusals > 0, "no stream reached the rate limit: the property was never exercised"
