"""The agent's own gate (issue 22 item 1) and caps that never outlive the agent (item 6), without Kafka.

Each test is one of the review's reproductions, fed to a real :class:`NodeAgent` with a
recording GPU backend: before the fix every one of them changed the GPUs.
"""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from contracts import ReconfigCommand, SourceError
from controller.agent import AgentStateFile, DryRunGpuControl, GpuSetting, NodeAgent, open_gpu_control
from controller.signing import (
    generate_key_pair,
    load_pinned_keys,
    load_signing_key,
    pin,
    sign_command,
    verify_command,
)
from foundation.settings import ControllerSettings
from tests.unit.test_agent_node import KEY, T0, agent, cmd, statuses

YEAR = timedelta(days=365)


def details(out: list) -> str:
    return " | ".join(getattr(m, "detail", "") for m in out)


# ---------------------------------------------------------------- signatures
def test_unsigned_enforce_command_is_refused_and_says_why() -> None:
    a, ctl = agent()
    out = a.receive(cmd("cmd-unsign01", key=None), now=T0)
    assert statuses(out) == ["refused"] and "unsigned" in details(out)
    assert ctl.calls == 0


def test_command_signed_by_another_key_is_refused() -> None:
    a, ctl = agent()
    out = a.receive(cmd("cmd-forged01", key=Ed25519PrivateKey.generate()), now=T0)
    assert statuses(out) == ["refused"] and "bad signature" in details(out)
    assert ctl.calls == 0


def test_content_changed_after_signing_is_refused() -> None:
    a, ctl = agent()
    good = cmd("cmd-altered1", freq=1400.0)
    for change in ({"params": good.params.model_copy(update={"frequency_cap_mhz": 900.0})},
                   {"expires_at": good.expires_at + timedelta(minutes=5)}, {"gpu_indices": [0]},
                   {"trigger": "emergency"}, {"server_id": "s1", "instance_id": "x"}):
        out = a.receive(good.model_copy(update=change), now=T0)
        assert statuses(out) == ["refused"] and "bad signature" in details(out), change
    assert ctl.calls == 0
    assert statuses(a.receive(good, now=T0)) == ["dry_run"]  # the forgeries did not poison the genuine id


def test_forged_signature_bytes_are_refused() -> None:
    a, ctl = agent()
    good = cmd("cmd-sigbyte1")
    for sig in ("not base64!", "AAAA", good.signature[:-4] + "AAAA"):  # type: ignore[index]
        assert statuses(a.receive(good.model_copy(update={"signature": sig}), now=T0)) == ["refused"]
    assert ctl.calls == 0


def test_several_pinned_keys_allow_rotation() -> None:
    old, new = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    ctl = DryRunGpuControl(num_gpus=4)
    a = NodeAgent("s1", ctl, ControllerSettings(), pinned=pin([old.public_key(), new.public_key()]))
    assert statuses(a.receive(cmd("cmd-oldkey01", key=old), now=T0)) == ["dry_run"]
    assert statuses(a.receive(cmd("cmd-newkey01", key=new), now=T0)) == ["dry_run"]
    retired = NodeAgent("s1", DryRunGpuControl(num_gpus=4), ControllerSettings(), pinned=pin([new.public_key()]))
    assert statuses(retired.receive(cmd("cmd-oldkey02", key=old), now=T0)) == ["refused"]


def test_keys_load_from_settings_and_files(tmp_path: Path) -> None:
    private, public = generate_key_pair()
    (tmp_path / "k.pub").write_text(public + "\n")
    (tmp_path / "k.key").write_text(private)
    cs = ControllerSettings(command_signing_key_file=tmp_path / "k.key", command_public_key_files=[tmp_path / "k.pub"])
    key = load_signing_key(cs)
    assert key is not None
    c = sign_command(cmd("cmd-settings", key=None), key)
    assert verify_command(c, load_pinned_keys(cs)) is None
    assert verify_command(c, load_pinned_keys(ControllerSettings(command_public_keys=[public]))) is None
    from contracts import ConfigError

    with pytest.raises(ConfigError, match="command_public_keys"):
        load_pinned_keys(ControllerSettings(command_public_keys=["bm90IGEga2V5"]))


def test_accept_unsigned_is_an_explicit_setting() -> None:
    ctl = DryRunGpuControl(num_gpus=4)
    a = NodeAgent("s1", ctl, ControllerSettings(agent_accept_unsigned=True), pinned={})
    assert statuses(a.receive(cmd("cmd-unsign02", key=None), now=T0)) == ["dry_run"]
    assert ctl.applied[0].frequency_cap_mhz == 1200.0


def test_a_replayed_id_with_other_content_is_refused() -> None:
    a, ctl = agent(agent_accept_unsigned=True)
    assert statuses(a.receive(cmd("cmd-replay01", freq=1400.0, key=None), now=T0)) == ["dry_run"]
    out = a.receive(cmd("cmd-replay01", freq=900.0, key=None), now=T0 + timedelta(seconds=1))
    assert statuses(out) == ["refused"] and "other content" in details(out)
    assert ctl.applied[0].frequency_cap_mhz == 1400.0
    assert statuses(a.receive(cmd("cmd-replay01", freq=1400.0, key=None), now=T0)) == ["duplicate"]


# ---------------------------------------------------------------- the agent's clock
def test_far_future_issued_at_is_refused_on_the_agents_clock() -> None:
    a, ctl = agent()
    out = a.receive(cmd("cmd-future01", freq=900.0, at=T0 + 10 * YEAR, ttl_s=600), now=T0)
    assert statuses(out) == ["refused"] and "ahead of this clock" in details(out)
    assert ctl.calls == 0


def test_skew_within_the_window_is_accepted() -> None:
    a, _ = agent(agent_max_clock_skew_s=30.0)
    assert statuses(a.receive(cmd("cmd-skew0001", at=T0 + timedelta(seconds=20)), now=T0)) == ["dry_run"]
    assert statuses(a.receive(cmd("cmd-skew0002", at=T0 + timedelta(seconds=45)), now=T0)) == ["refused"]


def test_far_past_issued_at_is_expired() -> None:
    a, ctl = agent()
    assert statuses(a.receive(cmd("cmd-past0001", at=T0 - 10 * YEAR, ttl_s=600), now=T0)) == ["expired"]
    assert ctl.calls == 0


# ---------------------------------------------------------------- rate limit, emergency exemption
def test_rate_limit_counts_per_gpu_whatever_the_instance_id() -> None:
    a, ctl = agent(agent_max_commands_per_gpu_per_min=6)
    results = [statuses(a.receive(cmd(f"cmd-inst{i:04d}", freq=1000.0 + i, instance=f"attacker-{i}"),
                                  now=T0 + timedelta(seconds=i)))[0] for i in range(20)]
    assert results.count("dry_run") == 6 and results.count("refused") == 14
    b, _ = agent(agent_max_commands_per_gpu_per_min=6)  # commands for distinct GPUs have their own budgets
    per_gpu = [statuses(b.receive(cmd(f"cmd-gpu{i:05d}", gpus=[i % 4]), now=T0))[0] for i in range(24)]
    assert per_gpu.count("dry_run") == 24


def test_emergency_exemption_only_for_commands_that_tighten() -> None:
    a, ctl = agent(agent_max_commands_per_gpu_per_min=2)
    now = T0
    a.receive(cmd("cmd-p0000001", action="set_power_limit", freq=None, power=200.0), now=now)
    a.receive(cmd("cmd-p0000002", action="set_power_limit", freq=None, power=190.0), now=now)
    # budget used up: a raising "emergency" is refused; a tightening one still goes through
    out = a.receive(cmd("cmd-raise001", action="set_power_limit", freq=None, power=350.0, trigger="emergency"), now=now)
    assert statuses(out) == ["refused"] and "rate limit" in details(out)
    out = a.receive(cmd("cmd-tight001", action="set_power_limit", freq=None, power=150.0, trigger="emergency"), now=now)
    assert statuses(out) == ["dry_run"] and ctl.applied[0].power_limit_w == 150.0
    out = a.receive(cmd("cmd-revemer1", action="revert", freq=None, trigger="emergency"), now=now)
    assert statuses(out) == ["refused"]  # a revert lifts caps: never exempt


# ---------------------------------------------------------------- modes
def test_agent_capped_at_advisory_never_applies_a_forged_enforce() -> None:
    a, ctl = agent(agent_max_mode="advisory")
    out = a.receive(cmd("cmd-enforce1", freq=900.0), now=T0)
    assert statuses(out) == ["dry_run"] and "capped at advisory" in details(out)
    assert ctl.calls == 0 and not a.active


def test_advisory_commands_use_no_rate_budget() -> None:
    a, _ = agent(agent_max_commands_per_gpu_per_min=3)
    for i in range(10):
        assert statuses(a.receive(cmd(f"cmd-adv{i:05d}", mode="advisory"), now=T0)) == ["dry_run"]
    got = [statuses(a.receive(cmd(f"cmd-enf{i:05d}", freq=1000.0 + i), now=T0))[0] for i in range(3)]
    assert got == ["dry_run"] * 3 and a.num_applied == 3


def test_gpu_indices_the_server_lacks_are_refused() -> None:
    a, ctl = agent()
    assert statuses(a.receive(cmd("cmd-nogpu001", gpus=[7]), now=T0)) == ["refused"]
    assert ctl.calls == 0


# ---------------------------------------------------------------- caps never outlive the agent
def agent_with_state(path: Path, **settings: object) -> tuple[NodeAgent, DryRunGpuControl]:
    ctl = DryRunGpuControl(num_gpus=4, default_limit_w=400.0)
    return NodeAgent("s1", ctl, ControllerSettings(**settings), pinned=pin([KEY.public_key()]),
                     state=AgentStateFile(path)), ctl


class CrashingControl(DryRunGpuControl):
    """Dies (as SIGKILL would) on the first GPU write."""

    def apply(self, index: int, setting: GpuSetting) -> None:
        raise KeyboardInterrupt("simulated crash while applying")


def test_state_is_persisted_before_the_gpu_is_touched(tmp_path: Path) -> None:
    path = tmp_path / "s1.json"
    a = NodeAgent("s1", CrashingControl(num_gpus=4), ControllerSettings(), pinned=pin([KEY.public_key()]),
                  state=AgentStateFile(path))
    with pytest.raises(KeyboardInterrupt):
        a.receive(cmd("cmd-crash001", freq=1000.0, gpus=[2]), now=T0)
    doc = json.loads(path.read_text())
    assert [c["command_id"] for c in doc["active"]] == ["cmd-crash001"] and doc["touched"] == [2]


def test_restart_reapplies_valid_caps_and_resets_expired_ones(tmp_path: Path) -> None:
    path = tmp_path / "s1.json"
    a, _ = agent_with_state(path)
    a.receive(cmd("cmd-long0001", freq=1100.0, gpus=[0], ttl_s=300), now=T0)
    a.receive(cmd("cmd-short001", action="set_power_limit", freq=None, power=200.0, gpus=[1], ttl_s=30), now=T0)
    # the agent dies here (no shutdown); a new one starts 60 s later with a fresh GPU backend
    b, ctl = agent_with_state(path)
    out = b.recover(T0 + timedelta(seconds=60))
    assert ctl.applied[0] == GpuSetting(1100.0, None)  # still valid: re-applied
    assert ctl.applied[1] == GpuSetting()  # expired meanwhile: reset to default
    assert set(ctl.applied) == {0, 1}  # GPUs never capped are not touched
    assert sorted(statuses(out)) == ["dry_run", "reverted"]
    assert statuses(b.receive(cmd("cmd-long0001", freq=1100.0, gpus=[0], ttl_s=300), now=T0 + timedelta(seconds=61))
                    ) == ["duplicate"]


def test_caps_expire_on_the_agents_clock_across_restarts(tmp_path: Path) -> None:
    path = tmp_path / "s1.json"
    a, _ = agent_with_state(path)
    a.receive(cmd("cmd-restart1", freq=1000.0, ttl_s=120), now=T0)
    b, ctl = agent_with_state(path)
    b.recover(T0 + timedelta(days=365))
    assert not b.active and all(s == GpuSetting() for s in ctl.applied.values()) and len(ctl.applied) == 4


def test_corrupt_state_file_is_moved_aside_and_every_gpu_reset(tmp_path: Path) -> None:
    path = tmp_path / "s1.json"
    path.write_text("{not json")
    b, ctl = agent_with_state(path)
    b.recover(T0)
    assert (tmp_path / "s1.json.corrupt").exists() and sorted(ctl.applied) == [0, 1, 2, 3]


def test_shutdown_lifts_every_cap(tmp_path: Path) -> None:
    a, ctl = agent_with_state(tmp_path / "s1.json")
    a.receive(cmd("cmd-shut0001", freq=1000.0), now=T0)
    a.broker_lost(T0)
    assert statuses(a.shutdown(T0 + timedelta(seconds=1))) == ["reverted"]
    assert all(s == GpuSetting() for s in ctl.applied.values())
    assert json.loads((tmp_path / "s1.json").read_text())["active"] == []


def test_nvml_failure_is_an_error_when_the_agent_may_enforce() -> None:
    try:
        import pynvml

        pynvml.nvmlInit()
        pynvml.nvmlShutdown()
        pytest.skip("an NVIDIA driver answers on this host")
    except Exception:  # noqa: BLE001 - the expected case here: no driver
        pass
    with pytest.raises(SourceError, match="--dry-run"):
        open_gpu_control(dry_run=False)
    assert open_gpu_control(dry_run=False, max_mode="advisory").dry_run


def test_commands_for_other_agents_are_content_bound_too() -> None:
    """The signature covers server_id: a command signed for s2 is refused by s1 even if re-keyed."""
    a, ctl = agent()
    other = cmd("cmd-s2000001", server="s2")
    assert verify_command(other.model_copy(update={"server_id": "s1"}), a.pinned) is not None
    assert isinstance(other, ReconfigCommand) and ctl.calls == 0
