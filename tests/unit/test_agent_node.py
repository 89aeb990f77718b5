"""Node agent without Kafka: signatures, safety on the agent's clock, idempotence, composition, expiry revert,
safe cap, persisted state, dry run."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from contracts import CommandStatus, ControlEvent, ReconfigCommand, ReconfigParams
from controller.agent import DryRunGpuControl, GpuSetting, NodeAgent, open_gpu_control
from controller.signing import pin, sign_command
from foundation.settings import ControllerSettings

T0 = datetime(2026, 11, 25, 10, 0, tzinfo=UTC)
KEY = Ed25519PrivateKey.generate()


def cmd(cid: str, *, action: str = "set_frequency_cap", freq: float | None = 1200.0, power: float | None = None,
        gpus: list[int] | None = None, ttl_s: float = 60.0, mode: str = "enforce", server: str = "s1",
        at: datetime = T0, layer: str = "host", trigger: str = "", instance: str | None = None,
        key: Ed25519PrivateKey | None = KEY) -> ReconfigCommand:
    c = ReconfigCommand(command_id=cid, issued_at=at, expires_at=at + timedelta(seconds=ttl_s), server_id=server,
                        gpu_indices=gpus or [], action=action,  # type: ignore[arg-type]
                        params=ReconfigParams(frequency_cap_mhz=freq, power_limit_w=power), reason="test",
                        mode=mode, layer=layer, trigger=trigger, instance_id=instance)  # type: ignore[arg-type]
    return sign_command(c, key) if key is not None else c


def agent(**settings: object) -> tuple[NodeAgent, DryRunGpuControl]:
    ctl = DryRunGpuControl(num_gpus=4, default_limit_w=400.0)
    return NodeAgent("s1", ctl, ControllerSettings(**settings), pinned=pin([KEY.public_key()])), ctl


def statuses(out: list) -> list[str]:
    return [m.status for m in out if isinstance(m, CommandStatus)]


def test_applies_once_and_reports_duplicates() -> None:
    a, ctl = agent()
    assert statuses(a.receive(cmd("cmd-freq0001"), now=T0)) == ["dry_run"]
    assert ctl.applied[0] == GpuSetting(frequency_cap_mhz=1200.0)
    calls = ctl.calls
    assert statuses(a.receive(cmd("cmd-freq0001"), now=T0 + timedelta(seconds=1))) == ["duplicate"]
    assert ctl.calls == calls and a.num_applied == 1


def test_commands_for_other_servers_and_serving_layer_are_ignored() -> None:
    a, ctl = agent()
    assert a.receive(cmd("cmd-other001", server="s2"), now=T0) == []
    batch = ReconfigCommand(command_id="cmd-batch001", issued_at=T0, expires_at=T0 + timedelta(seconds=60),
                            server_id="s1", action="set_max_batch", params=ReconfigParams(max_batch=8),
                            reason="x", layer="serving", mode="enforce")
    assert a.receive(batch, now=T0) == [] and ctl.calls == 0


def test_out_of_bounds_refused_with_event_and_never_applied() -> None:
    a, ctl = agent(min_frequency_mhz=900.0)
    out = a.receive(cmd("cmd-toolow01", freq=300.0), now=T0)
    assert statuses(out) == ["refused"]
    [ev] = [m for m in out if isinstance(m, ControlEvent)]
    assert ev.event_kind == "safety_refused" and "agent s1" in ev.detail
    assert ctl.calls == 0


def test_advisory_commands_are_shown_not_applied() -> None:
    a, ctl = agent()
    out = a.receive(cmd("cmd-advis001", mode="advisory"), now=T0)
    assert statuses(out) == ["dry_run"] and "advisory" in out[0].detail
    assert ctl.calls == 0 and not a.active


def test_most_restrictive_cap_wins_and_expiry_reverts() -> None:
    a, ctl = agent()
    a.receive(cmd("cmd-long0001", freq=1300.0, ttl_s=120), now=T0)
    a.receive(cmd("cmd-short001", freq=1000.0, gpus=[1], ttl_s=30), now=T0)
    a.receive(cmd("cmd-power001", action="set_power_limit", freq=None, power=250.0, ttl_s=120), now=T0)
    assert ctl.applied[1] == GpuSetting(1000.0, 250.0) and ctl.applied[0] == GpuSetting(1300.0, 250.0)
    out = a.reconcile(T0 + timedelta(seconds=31))
    assert statuses(out) == ["reverted"] and out[0].command_id == "cmd-short001"
    assert ctl.applied[1] == GpuSetting(1300.0, 250.0)
    assert statuses(a.reconcile(T0 + timedelta(seconds=121))) == ["reverted", "reverted"]
    assert all(s == GpuSetting() for s in ctl.applied.values())


def test_revert_command_lifts_active_caps() -> None:
    a, ctl = agent()
    a.receive(cmd("cmd-cap00001", freq=1100.0), now=T0)
    out = a.receive(cmd("cmd-revert01", action="revert", freq=None), now=T0 + timedelta(seconds=1))
    assert statuses(out) == ["dry_run"] and not a.active
    assert all(s == GpuSetting() for s in ctl.applied.values())


def test_broker_loss_applies_documented_safe_cap_and_lifts_it() -> None:
    a, ctl = agent(agent_safe_power_frac=0.75)
    a.receive(cmd("cmd-cap00002", freq=1100.0), now=T0)
    assert a.broker_lost(T0) and not a.broker_lost(T0)
    assert ctl.applied[0] == GpuSetting(1100.0, 300.0)  # 0.75 × 400 W default limit
    a.receive(cmd("cmd-pow00002", action="set_power_limit", freq=None, power=200.0), now=T0)
    assert ctl.applied[2].power_limit_w == 200.0  # a tighter command still wins
    assert a.broker_back(T0 + timedelta(seconds=5))
    assert ctl.applied[0] == GpuSetting(1100.0, 200.0)


def test_dry_run_without_driver_says_so() -> None:
    ctl = open_gpu_control(dry_run=True)
    assert ctl.dry_run and "DRY RUN" in ctl.describe()


def test_reconcile_touches_only_gpus_the_agent_capped() -> None:
    a, ctl = agent()
    a.reconcile(T0)
    assert ctl.calls == 0  # never capped: never touched (operator settings survive)
    a.receive(cmd("cmd-gpu10001", freq=1100.0, gpus=[1]), now=T0)
    calls = ctl.calls
    a.reconcile(T0 + timedelta(seconds=10))
    assert ctl.calls == calls + 1 and set(ctl.applied) == {1}


class FakeNvml:
    """Records the NVML calls NvmlGpuControl makes (the real library needs a driver and root)."""

    class NVMLError(Exception):
        pass

    def __init__(self) -> None:
        self.calls: list[tuple] = []
        self.limit_mw = 400_000

    def nvmlInit(self) -> None: ...
    def nvmlDeviceGetCount(self) -> int: return 2
    def nvmlDeviceGetHandleByIndex(self, i: int) -> str: return f"h{i}"
    def nvmlDeviceGetName(self, h: str) -> str: return "NVIDIA A100-SXM4-80GB"
    def nvmlDeviceGetSupportedMemoryClocks(self, h: str) -> list[int]: return [1593, 1215]
    def nvmlDeviceGetSupportedGraphicsClocks(self, h: str, mem: int) -> list[int]:
        assert mem == 1593
        return [1410, 1200, 210]
    def nvmlDeviceGetPowerManagementDefaultLimit(self, h: str) -> int: return 400_000
    def nvmlDeviceGetPowerManagementLimitConstraints(self, h: str) -> tuple[int, int]: return (100_000, 400_000)
    def nvmlDeviceGetPowerManagementLimit(self, h: str) -> int: return self.limit_mw
    def nvmlDeviceSetPowerManagementLimit(self, h: str, mw: int) -> None:
        self.calls.append(("power", h, mw))
        self.limit_mw = mw
    def nvmlDeviceSetGpuLockedClocks(self, h: str, lo: int, hi: int) -> None: self.calls.append(("lock", h, lo, hi))
    def nvmlDeviceResetGpuLockedClocks(self, h: str) -> None: self.calls.append(("reset", h))


def test_nvml_control_translates_settings_to_nvml_calls() -> None:
    from controller.agent import NvmlGpuControl

    nv = FakeNvml()
    ctl = NvmlGpuControl(nvml=nv)
    assert ctl.gpu_count() == 2 and ctl.default_power_limit_w(0) == 400.0 and "A100" in ctl.describe()
    ctl.apply(1, GpuSetting(frequency_cap_mhz=1100.0, power_limit_w=50.0))
    assert nv.calls == [("lock", "h1", 210, 1100), ("power", "h1", 100_000)]  # clamped to the device's minimum
    nv.calls.clear()
    ctl.apply(1, GpuSetting())
    assert nv.calls == [("reset", "h1"), ("power", "h1", 400_000)]
