"""``tapas agent --server-id ID``: the node-side executor of host reconfiguration commands.

The agent reads ``tapas.control.commands`` (``assign()`` to every partition and a filter
on the key, which is the server id: no consumer-group join), passes each command for
its server through its own :class:`~controller.safety.SafetyGate` (bounds, expiry,
rate limit, idempotent ids) and applies the *host* ones through NVML:

* ``set_frequency_cap`` → ``nvmlDeviceSetGpuLockedClocks(gpu, min_supported, cap)``
  (frequency locking reclaims power on demand; POLCA, ASPLOS 2024);
* ``set_power_limit`` → ``nvmlDeviceSetPowerManagementLimit(gpu, mW)``;
* ``revert`` → drop every active command on the named GPUs (all when none named).

Several active commands on one GPU compose to the most restrictive cap. Every
``agent_reconcile_s`` the agent re-applies the desired state of the GPUs it has capped
(so a driver reset or a manual ``nvidia-smi`` change is undone) and drops expired
commands, reverting their effect ("reverted" status). GPUs it never capped are never
touched. Reports go to ``tapas.control.status`` as
:class:`~contracts.CommandStatus`; refusals also as ``safety_refused`` events.

**Safe cap when the broker is lost.** If the broker has not answered for
``agent_broker_lost_after_s``, the agent cannot receive an emergency order any more, so
it caps every GPU's power limit at ``agent_safe_power_frac`` (default 0.75) of its
default limit: the paper's power emergency leaves 75 % of the budget, and a server
capped at that fraction stays within its share of it without any message. Active
commands stay in force until their expiry. The cap is lifted as soon as the broker
answers again.

**Dry run.** Without an NVIDIA driver (or with ``--dry-run``) the agent runs in dry-run
mode, says so at start and in every status (``dry_run``), and only records what it
would have set. ``mode="advisory"`` commands are reported ``dry_run`` and never applied.

**Serving-layer commands** (``layer="serving"``: batch size, tensor parallelism,
precision, model variant) are not for the host: the agent ignores them; the inference
server's adapter consumes them (contract: ``docs/serving-commands.md``).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from contracts import CommandStatus, Contract, ContractError, ControlEvent, ReconfigCommand, decode, topic_for
from controller.safety import SafetyBounds, SafetyGate, refusal_event
from foundation.health import HealthServer, Readiness, readiness, start_health_server
from foundation.kafka import KafkaClients, Since, assign_all
from foundation.settings import ControllerSettings, Settings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class GpuSetting:
    """The caps wanted on one GPU (None = the GPU's default)."""

    frequency_cap_mhz: float | None = None
    power_limit_w: float | None = None


class GpuControl(Protocol):
    """What the agent needs from the GPUs: NVML on a real host, a recorder in dry run."""

    dry_run: bool

    def gpu_count(self) -> int: ...

    def default_power_limit_w(self, index: int) -> float: ...

    def apply(self, index: int, setting: GpuSetting) -> None: ...

    def describe(self) -> str: ...


@dataclass
class DryRunGpuControl:
    """Records what would be set; used without an NVIDIA driver and in tests."""

    num_gpus: int = 8
    default_limit_w: float = 400.0
    reason: str = "dry run requested"
    dry_run: bool = True
    applied: dict[int, GpuSetting] = field(default_factory=dict)
    calls: int = 0

    def gpu_count(self) -> int:
        return self.num_gpus

    def default_power_limit_w(self, index: int) -> float:
        return self.default_limit_w

    def apply(self, index: int, setting: GpuSetting) -> None:
        self.calls += 1
        self.applied[index] = setting

    def describe(self) -> str:
        return f"DRY RUN ({self.reason}): {self.num_gpus} simulated GPUs, nothing is changed on this host"


class NvmlGpuControl:
    """GPU clock locks and power limits through nvidia-ml-py (needs root or the right capabilities)."""

    dry_run = False

    def __init__(self, nvml: Any = None) -> None:
        if nvml is None:
            import pynvml

            nvml = pynvml
        self._nvml = nvml
        nvml.nvmlInit()
        self._handles = [nvml.nvmlDeviceGetHandleByIndex(i) for i in range(nvml.nvmlDeviceGetCount())]
        self._min_clock_mhz: dict[int, int] = {}

    def gpu_count(self) -> int:
        return len(self._handles)

    def default_power_limit_w(self, index: int) -> float:
        return float(self._nvml.nvmlDeviceGetPowerManagementDefaultLimit(self._handles[index])) / 1000.0

    def _lowest_clock_mhz(self, index: int) -> int:
        if index not in self._min_clock_mhz:
            h = self._handles[index]
            try:
                mem = max(self._nvml.nvmlDeviceGetSupportedMemoryClocks(h))
                self._min_clock_mhz[index] = int(min(self._nvml.nvmlDeviceGetSupportedGraphicsClocks(h, mem)))
            except self._nvml.NVMLError:
                self._min_clock_mhz[index] = 0
        return self._min_clock_mhz[index]

    def apply(self, index: int, setting: GpuSetting) -> None:
        h, nv = self._handles[index], self._nvml
        if setting.frequency_cap_mhz is None:
            nv.nvmlDeviceResetGpuLockedClocks(h)
        else:
            nv.nvmlDeviceSetGpuLockedClocks(h, self._lowest_clock_mhz(index), int(setting.frequency_cap_mhz))
        lo_mw, hi_mw = nv.nvmlDeviceGetPowerManagementLimitConstraints(h)
        want_w = setting.power_limit_w if setting.power_limit_w is not None else self.default_power_limit_w(index)
        want_mw = int(min(max(want_w * 1000.0, lo_mw), hi_mw))
        if nv.nvmlDeviceGetPowerManagementLimit(h) != want_mw:
            nv.nvmlDeviceSetPowerManagementLimit(h, want_mw)

    def describe(self) -> str:
        names = {self._nvml.nvmlDeviceGetName(h) for h in self._handles}
        return f"NVML: {len(self._handles)} GPU(s) {sorted(str(n) for n in names)}"

    def close(self) -> None:
        self._nvml.nvmlShutdown()


def open_gpu_control(*, dry_run: bool) -> GpuControl:
    """NVML when a driver answers and dry run was not asked for; otherwise a dry-run recorder saying why."""
    if dry_run:
        return DryRunGpuControl(reason="--dry-run")
    try:
        ctl = NvmlGpuControl()
    except Exception as exc:  # noqa: BLE001 - pynvml raises NVMLError_LibraryNotFound, DriverNotLoaded, ...
        return DryRunGpuControl(reason=f"no NVIDIA driver: {exc.__class__.__name__}: {exc}")
    if ctl.gpu_count() == 0:
        return DryRunGpuControl(reason="NVML found no GPU")
    return ctl


def desired_settings(active: Iterable[ReconfigCommand], num_gpus: int, *,
                     safe_power_w: list[float] | None = None) -> dict[int, GpuSetting]:
    """The most restrictive cap per GPU over the active commands (and the safe cap, when given).

    Examples:
        >>> from datetime import UTC, datetime, timedelta
        >>> from contracts import ReconfigParams
        >>> t = datetime(2026, 1, 1, tzinfo=UTC)
        >>> def cmd(cid, gpus, mhz):
        ...     return ReconfigCommand(command_id=cid, issued_at=t, expires_at=t + timedelta(minutes=1), server_id="s",
        ...                            gpu_indices=gpus, action="set_frequency_cap",
        ...                            params=ReconfigParams(frequency_cap_mhz=mhz), reason="r")
        >>> d = desired_settings([cmd("cmd-aaaaaaaa", [], 1200), cmd("cmd-bbbbbbbb", [1], 1000)], 2)
        >>> d[0].frequency_cap_mhz, d[1].frequency_cap_mhz
        (1200.0, 1000.0)
    """
    freq: dict[int, float] = {}
    power: dict[int, float] = {}
    for cmd in active:
        gpus = [g for g in cmd.gpu_indices if 0 <= g < num_gpus] if cmd.gpu_indices else range(num_gpus)
        for g in gpus:
            if cmd.action == "set_frequency_cap" and cmd.params.frequency_cap_mhz is not None:
                freq[g] = min(freq.get(g, cmd.params.frequency_cap_mhz), cmd.params.frequency_cap_mhz)
            elif cmd.action == "set_power_limit" and cmd.params.power_limit_w is not None:
                power[g] = min(power.get(g, cmd.params.power_limit_w), cmd.params.power_limit_w)
    if safe_power_w is not None:
        for g in range(num_gpus):
            power[g] = min(power.get(g, safe_power_w[g]), safe_power_w[g])
    return {g: GpuSetting(freq.get(g), power.get(g)) for g in range(num_gpus)}


class NodeAgent:
    """The agent's state machine: commands in, GPU settings and status reports out; time passed in."""

    def __init__(self, server_id: str, control: GpuControl, settings: ControllerSettings) -> None:
        self.server_id = server_id
        self.control = control
        self.settings = settings
        self.bounds = SafetyBounds.from_settings(settings)
        self.gate = SafetyGate(self.bounds)
        self.active: dict[str, ReconfigCommand] = {}
        self.applied: dict[int, GpuSetting] = {}
        self.safe_mode = False
        self.num_applied = 0
        self.num_gpus = control.gpu_count()
        self.last_polled_at: datetime | None = None
        """When the loop last polled the commands topic (``/readyz``'s ``consuming``)."""
        self.broker_ok_at: datetime | None = None
        """When the broker last answered (``/readyz``'s freshness)."""

    def readiness(self, now: datetime, *, poll_window_s: float = 15.0) -> Readiness:
        """``/readyz``: polling, the broker answered within ``agent_broker_lost_after_s``, not in safe mode."""
        polled = self.last_polled_at
        consuming = polled is not None and (now - polled).total_seconds() <= poll_window_s
        return readiness("agent", consuming=consuming, last_input_at=self.broker_ok_at, now=now,
                         stale_after_s=self.settings.agent_broker_lost_after_s,
                         not_ready_because="safe mode: GPUs at the safe power cap" if self.safe_mode else "",
                         detail={"server_id": self.server_id, "safe_mode": self.safe_mode,
                                 "active_commands": len(self.active)})

    # ------------------------------------------------------------------ commands
    def receive(self, cmd: ReconfigCommand, *, now: datetime) -> list[Contract]:
        """Check and (when enforceable) apply one command; returns the reports to publish."""
        if cmd.server_id != self.server_id or cmd.layer != "host":
            return []
        verdict = self.gate.admit(cmd, now=now)
        if verdict.status == "duplicate":
            return [self._status(cmd, "duplicate", now, verdict.reason)]
        if verdict.status == "expired":
            return [self._status(cmd, "expired", now, verdict.reason)]
        if verdict.status == "refused":
            return [self._status(cmd, "refused", now, verdict.reason),
                    refusal_event(cmd, verdict.reason, now=now, refused_by=f"agent {self.server_id}")]
        if cmd.mode == "advisory":
            return [self._status(cmd, "dry_run", now, "advisory command: shown, not enforced")]
        if cmd.action == "revert":
            scope = set(cmd.gpu_indices)
            for cid in [c for c, a in self.active.items()
                        if not scope or not a.gpu_indices or set(a.gpu_indices) <= scope]:
                del self.active[cid]
        else:
            self.active[cmd.command_id] = cmd
        try:
            self._apply(now, force=False)
        except Exception as exc:  # noqa: BLE001 - NVMLError and permissions: report, keep running
            self.active.pop(cmd.command_id, None)
            return [self._status(cmd, "failed", now, f"{exc.__class__.__name__}: {exc}")]
        self.num_applied += 1
        status = "dry_run" if self.control.dry_run else "applied"
        return [self._status(cmd, status, now, f"{cmd.action} {self._describe(cmd)} until "
                                               f"{cmd.expires_at.isoformat()}; {self.control.describe()}")]

    def reconcile(self, now: datetime) -> list[Contract]:
        """Drop expired commands (reverting their effect) and re-apply the desired settings."""
        expired = [c for c in self.active.values() if c.expires_at <= now]
        for c in expired:
            del self.active[c.command_id]
        self.gate.forget_expired(now)
        try:
            self._apply(now, force=True)
        except Exception as exc:  # noqa: BLE001
            log.error("event=reconcile_failed server=%s error=%s", self.server_id, exc)
            return [self._status(c, "failed", now, f"revert after expiry failed: {exc}") for c in expired]
        return [self._status(c, "reverted", now, f"expired at {c.expires_at.isoformat()}; {c.action} lifted")
                for c in expired]

    # ------------------------------------------------------------------ broker health
    def broker_lost(self, now: datetime) -> bool:
        """Enter safe mode (safe power cap); True when this call changed the mode."""
        if self.safe_mode:
            return False
        self.safe_mode = True
        log.warning("event=broker_lost server=%s safe_power_frac=%.2f", self.server_id,
                    self.settings.agent_safe_power_frac)
        self._apply(now, force=True)
        return True

    def broker_back(self, now: datetime) -> bool:
        """Leave safe mode; True when this call changed the mode."""
        if not self.safe_mode:
            return False
        self.safe_mode = False
        log.info("event=broker_back server=%s", self.server_id)
        self._apply(now, force=True)
        return True

    def safe_power_w(self) -> list[float]:
        """The documented safe cap per GPU: a fraction of its default limit, never below the safety floor."""
        return [max(self.bounds.min_power_limit_w,
                    self.settings.agent_safe_power_frac * self.control.default_power_limit_w(g))
                for g in range(self.num_gpus)]

    # ------------------------------------------------------------------ internals
    def _apply(self, now: datetime, *, force: bool) -> None:
        live = [c for c in self.active.values() if c.expires_at > now]
        want = desired_settings(live, self.num_gpus, safe_power_w=self.safe_power_w() if self.safe_mode else None)
        default = GpuSetting()
        for g, setting in want.items():
            ours = g in self.applied  # the agent only ever touches GPUs it has capped
            if (force and ours) or self.applied.get(g, default) != setting:
                self.control.apply(g, setting)
                if setting == default:
                    self.applied.pop(g, None)
                else:
                    self.applied[g] = setting

    @staticmethod
    def _describe(cmd: ReconfigCommand) -> str:
        p = cmd.params
        what = (f"{p.frequency_cap_mhz:g} MHz" if p.frequency_cap_mhz is not None
                else f"{p.power_limit_w:g} W" if p.power_limit_w is not None else "")
        gpus = ",".join(map(str, cmd.gpu_indices)) or "all"
        return f"{what} on GPUs {gpus}".strip()

    def _status(self, cmd: ReconfigCommand, status: str, now: datetime, detail: str) -> CommandStatus:
        return CommandStatus(command_id=cmd.command_id, server_id=self.server_id, reported_at=now,
                             status=status, detail=detail[:2000])  # type: ignore[arg-type]


# ---------------------------------------------------------------------- the Kafka shell


def run_agent(settings: Settings, server_id: str, control: GpuControl, *, clients: KafkaClients,
              stop: threading.Event,
              commands_topic: str | None = None, status_topic: str | None = None, events_topic: str | None = None,
              clock: Callable[[], datetime] | None = None, health_every_s: float = 5.0,
              on_ready: Callable[[NodeAgent], None] | None = None) -> NodeAgent:
    """Run the agent until ``stop`` is set; returns it (tests inspect what it applied).

    Starts reading ``max_command_ttl_s`` back in time (offsets by timestamp), so commands
    still valid when the agent (re)starts are applied; ids already applied are not
    applied again within one run.
    """
    cs = settings.controller
    now_fn = clock or (lambda: datetime.now(UTC))
    commands_topic = commands_topic or topic_for(ReconfigCommand)
    status_topic = status_topic or topic_for(CommandStatus)
    events_topic = events_topic or topic_for(ControlEvent)
    agent = NodeAgent(server_id, control, cs)
    log.info("event=agent_started server=%s control=%s", server_id, control.describe())
    # An offset out of range (a broker that restarted with an empty log, or retention) resets to the
    # earliest retained command rather than the latest: the ledger drops ids already applied and the
    # expiry drops stale ones, while "latest" would skip commands published just after the restart.
    consumer = clients.consumer(f"agent-{server_id}", request_timeout_ms=5000, fetch_max_wait_ms=500,
                                reconnect_backoff_max_ms=2000, auto_offset_reset="earliest")
    producer = clients.producer(f"agent-{server_id}", acks=1, enable_idempotence=False, max_block_ms=1000,
                                request_timeout_ms=5000, reconnect_backoff_max_ms=2000)
    outbox: deque[Contract] = deque(maxlen=10_000)
    key = server_id.encode()
    health_server: HealthServer | None = None
    metrics_server = None
    if cs.agent_metrics_port:
        from controller.agent_metrics import serve_agent_metrics

        metrics_server = serve_agent_metrics(agent, cs.agent_metrics_port, cs.agent_metrics_addr)
    try:
        # no record that late, or no timestamp index: read from the beginning, expiry filters
        since = Since(now_fn() - timedelta(seconds=cs.max_command_ttl_s), otherwise="beginning")
        tps = assign_all(consumer, {commands_topic: since}, metadata_wait_s=0.0)
        for tp in tps:  # resolve the lazy seeks before reporting ready
            consumer.position(tp)
        agent.broker_ok_at = agent.last_polled_at = now_fn()
        if cs.agent_health_port:
            health_server = start_health_server(
                "agent", lambda: agent.readiness(now_fn(), poll_window_s=max(15.0, 3 * health_every_s)),
                host=cs.agent_health_host, port=cs.agent_health_port)
        if on_ready is not None:
            on_ready(agent)
        last_ok = time.monotonic()
        next_health = last_ok + health_every_s
        next_reconcile = last_ok + cs.agent_reconcile_s
        while not stop.is_set():
            polled = consumer.poll(timeout_ms=200)
            agent.last_polled_at = now_fn()
            for _tp, records in polled.items():
                for rec in records:
                    if rec.key != key:
                        continue
                    try:
                        cmd = decode(ReconfigCommand, rec.value)
                    except ContractError as exc:
                        log.warning("event=bad_command server=%s field=%s reason=%s", server_id, exc.field,
                                    exc.reason)
                        continue
                    outbox.extend(agent.receive(cmd, now=now_fn()))
            mono = time.monotonic()
            if mono >= next_health:
                next_health = mono + health_every_s
                try:
                    consumer.end_offsets(tps, timeout_ms=int(health_every_s * 1000 * 0.8))
                    last_ok = time.monotonic()
                    agent.broker_ok_at = now_fn()
                    agent.broker_back(now_fn())
                except Exception:  # noqa: BLE001 - KafkaTimeoutError and connection errors
                    if time.monotonic() - last_ok >= cs.agent_broker_lost_after_s:
                        agent.broker_lost(now_fn())
            if mono >= next_reconcile:
                next_reconcile = mono + cs.agent_reconcile_s
                outbox.extend(agent.reconcile(now_fn()))
            _flush(producer, outbox, status_topic, events_topic, key)
    finally:
        if health_server is not None:
            health_server.close()
        consumer.close()
        _flush(producer, outbox, status_topic, events_topic, key)
        producer.close(timeout=5)
        if metrics_server is not None:
            metrics_server.shutdown()  # type: ignore[attr-defined]
    return agent


def _flush(producer: Any, outbox: deque[Contract], status_topic: str, events_topic: str, key: bytes) -> None:
    """Send the queued reports; on failure keep them for the next attempt (bounded queue)."""
    while outbox:
        msg = outbox[0]
        topic = events_topic if isinstance(msg, ControlEvent) else status_topic
        try:
            producer.send(topic, key=key, value=msg.to_bytes())
        except Exception:  # noqa: BLE001 - broker unreachable: retry later
            return
        outbox.popleft()
    try:
        producer.flush(timeout=2)
    except Exception:  # noqa: BLE001
        pass

