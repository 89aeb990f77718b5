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
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from contracts import CommandStatus, ControlEvent, ReconfigCommand, ReconfigParams
from controller.agent import DryRunGpuControl, NodeAgent
from controller.safety import SafetyBounds, SafetyGate, Verdict, check_bounds
from controller.signing import key_id, pin, sign_command, verify_command
from foundation.settings import ControllerSettings
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


# ---------------------------------------------------------------------------------------------------------------
# The node agent end to end (issue 22): far-future/far-past issued_at, varied instance_id/trigger/mode, forged,
# altered and replayed signatures. Every command gets exactly one status; a refusal says why; what is applied is
# signed by the pinned key, inside the bounds and the clock window, enforce-mode, and within the per-GPU rate
# limit unless it is an emergency that tightens.

AGENT_SETTINGS = dict(min_frequency_mhz=900, max_frequency_mhz=2000, min_power_limit_w=150, max_power_limit_w=700,
                      max_command_ttl_s=600, agent_max_commands_per_gpu_per_min=3, agent_max_clock_skew_s=30)
SIGNER = Ed25519PrivateKey.generate()
ATTACKER = Ed25519PrivateKey.generate()
INPUTS = {"n": 0}
offset_s = st.one_of(st.floats(-40, 40), st.floats(-700, 700), st.sampled_from([-3.2e8, 3.2e8, 1e9, -1e9]))


@st.composite
def agent_streams(draw: st.DrawFn) -> list[tuple[ReconfigCommand, datetime]]:
    """Commands to one agent: signed, unsigned, forged, altered or replayed, at skewed times."""
    out: list[tuple[ReconfigCommand, datetime]] = []
    now = T0
    for i in range(draw(st.integers(1, 30))):
        now += timedelta(seconds=draw(st.floats(0, 15)))
        if out and draw(st.integers(0, 5)) == 0:  # replay an earlier one, maybe altered
            old = draw(st.sampled_from(out))[0]
            if draw(st.booleans()):
                old = old.model_copy(update={"params": ReconfigParams(frequency_cap_mhz=draw(cap),
                                                                      power_limit_w=draw(limit))})
            out.append((old, now))
            continue
        issued = now + timedelta(seconds=draw(offset_s))
        action = draw(st.sampled_from(["set_frequency_cap", "set_power_limit", "revert"]))
        cmd = ReconfigCommand(
            command_id=f"cmd-{draw(st.integers(0, 40)):08d}" if draw(st.booleans()) else f"cmd-uniq-{i:04d}",
            issued_at=issued, expires_at=issued + timedelta(seconds=draw(st.one_of(st.floats(1, 600),
                                                                                   st.floats(0.5, 4000)))),
            server_id="s1", gpu_indices=draw(st.sampled_from([[], [0], [1], [0, 1], [3]])), action=action,
            params=ReconfigParams(frequency_cap_mhz=draw(cap), power_limit_w=draw(limit)), reason="fuzz",
            instance_id=draw(st.one_of(st.none(), st.text("abcdef0123456789-", min_size=1, max_size=12))),
            trigger=draw(st.sampled_from(["", "thermal", "power", "emergency", "load"])),
            mode=draw(st.sampled_from(["enforce", "enforce", "advisory"])))
        how = draw(st.sampled_from(["signed", "signed", "signed", "unsigned", "attacker", "tampered", "garbage"]))
        if how == "signed":
            cmd = sign_command(cmd, SIGNER)
        elif how == "attacker":
            cmd = sign_command(cmd, ATTACKER).model_copy(update={"key_id": key_id(SIGNER.public_key())})
        elif how == "tampered":
            cmd = sign_command(cmd, SIGNER).model_copy(update={"trigger": "emergency", "mode": "enforce"})
        elif how == "garbage":
            cmd = cmd.model_copy(update={"signature": draw(st.text(max_size=90))})
        out.append((cmd, now))
    return out


@pytest.mark.parametrize("budget,fast", [(80, True), pytest.param(7000, False, marks=pytest.mark.fuzz)],
                         ids=["fast", "full"])
def test_the_agent_applies_only_signed_in_bounds_commands_on_its_own_clock(budget: int, fast: bool) -> None:
    INPUTS["n"] = 0
    applied_total = 0
    pinned = pin([SIGNER.public_key()])

    @_settings(budget, fast=fast)
    @given(agent_streams())
    def run(stream: list[tuple[ReconfigCommand, datetime]]) -> None:
        nonlocal applied_total
        ctl = DryRunGpuControl(num_gpus=2, default_limit_w=400.0)
        agent = NodeAgent("s1", ctl, ControllerSettings(**AGENT_SETTINGS), pinned=pinned)
        rated: dict[str, list[datetime]] = {}
        for cmd, now in stream:
            INPUTS["n"] += 1
            before = agent._desired(now)
            tightens = agent._tightens(cmd, now) if cmd.action != "revert" else False
            out = agent.receive(cmd, now=now)
            sts = [m for m in out if isinstance(m, CommandStatus)]
            assert len(sts) == 1, out
            st_ = sts[0]
            if st_.status in ("refused", "expired", "duplicate"):
                assert st_.detail, f"{st_.status} without a reason"
                if st_.status == "refused":
                    assert any(isinstance(m, ControlEvent) for m in out) or cmd.mode == "advisory"
                continue
            assert st_.status == "dry_run"
            if cmd.mode == "advisory":
                assert "advisory" in st_.detail and agent._desired(now) == before
                continue
            applied_total += 1
            assert verify_command(cmd, pinned) is None, "applied a command that does not verify"
            assert (cmd.issued_at - now).total_seconds() <= 30 + 1e-6
            assert 0 < (cmd.expires_at - now).total_seconds() <= 600 + 30 + 1e-6
            assert check_bounds(cmd, agent.bounds) is None
            if not (cmd.trigger == "emergency" and cmd.action != "revert" and tightens):
                for g in (cmd.gpu_indices or [0, 1]):
                    times = rated.setdefault(f"gpu{g}", [])
                    times.append(now)
                    window = [t for t in times if now - timedelta(seconds=60) < t <= now]
                    assert len(window) <= 3, (g, len(window))
        for setting in ctl.applied.values():
            if setting.frequency_cap_mhz is not None:
                assert 900 <= setting.frequency_cap_mhz <= 2000
            if setting.power_limit_w is not None:
                assert 150 <= setting.power_limit_w <= 700

    run()
    print(f"agent fuzz: {INPUTS['n']} generated commands, {applied_total} applied")
    assert applied_total > 0, "nothing was ever applied: the properties were never exercised"
    if not fast:
        assert INPUTS["n"] >= 100_000, f"only {INPUTS['n']} generated commands"
