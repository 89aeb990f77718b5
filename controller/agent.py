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

**Signed commands, the agent's clock.** Enforce commands must carry a valid Ed25519
signature from a pinned controller key (``controller.signing``); the gate checks
``issued_at`` and the remaining lifetime against the agent's own clock, counts the rate
per GPU, and lets an emergency skip the rate limit only when it tightens. ``--max-mode
advisory`` caps every command at advisory. SECURITY.md#commands says what is checked.

**Caps never outlive the agent.** What it applies is persisted first
(:class:`AgentStateFile`); at start-up it reconciles against that file, applies the
safe cap while the broker does not answer, and on stop lifts every cap it set.

**Dry run.** With ``--dry-run`` the agent runs in dry-run mode, says so at start and in
every status (``dry_run``), and only records what it would have set. Without an NVIDIA
driver it refuses to start unless ``--dry-run`` or ``--max-mode advisory``.
``mode="advisory"`` commands are reported ``dry_run`` and never applied.

**Serving-layer commands** (``layer="serving"``: batch size, tensor parallelism,
precision, model variant) are not for the host: the agent ignores them; the inference
server's adapter consumes them (contract: ``docs/serving-commands.md``).
"""

from __future__ import annotations

import json
import logging
import os
import re
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Protocol

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from contracts import (
    CommandStatus,
    Contract,
    ContractError,
    ControlEvent,
    ReconfigCommand,
    SourceError,
    decode,
    topic_for,
)
from controller.safety import SafetyBounds, SafetyGate, check_times, refusal_event
from controller.signing import load_pinned_keys, verify_command
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


def open_gpu_control(*, dry_run: bool, max_mode: str = "enforce") -> GpuControl:
    """NVML when a driver answers and dry run was not asked for.

    Without ``--dry-run`` an agent that may enforce (``max_mode="enforce"``) and cannot
    open NVML raises :class:`~contracts.SourceError`: silently becoming a dry run would
    report ``dry_run`` while the controller counts on its caps. An agent capped at
    advisory falls back to a dry-run recorder saying why (it never applies anything).
    """
    if dry_run:
        return DryRunGpuControl(reason="--dry-run")
    try:
        ctl = NvmlGpuControl()
    except Exception as exc:  # noqa: BLE001 - pynvml raises NVMLError_LibraryNotFound, DriverNotLoaded, ...
        why = f"no NVIDIA driver: {exc.__class__.__name__}: {exc}"
        if max_mode == "enforce":
            raise SourceError(f"NVML: {why} (this agent may enforce caps; pass --dry-run to only report, or "
                              f"--max-mode advisory)") from exc
        return DryRunGpuControl(reason=why)
    if ctl.gpu_count() == 0:
        if max_mode == "enforce":
            raise SourceError("NVML found no GPU (pass --dry-run to only report, or --max-mode advisory)")
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


class AgentStateFile:
    """What the agent has applied, on disk before it is applied (write, fsync, rename, fsync the folder).

    A crash (SIGKILL, OOM, power loss) between "decided" and "applied" then leaves a file
    that says at least what may be on the GPUs, so the next start can reconcile: re-apply
    the still-valid commands, reset the GPUs whose commands expired meanwhile.
    """

    def __init__(self, path: Path) -> None:
        self.path = path

    def save(self, server_id: str, active: Iterable[ReconfigCommand], touched: Iterable[int], now: datetime) -> None:
        """Persist the active commands and the GPUs the agent may have changed (durable when this returns)."""
        doc = {"server_id": server_id, "saved_at": now.isoformat(), "touched": sorted(set(touched)),
               "active": [c.model_dump(mode="json") for c in active]}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".tmp")
        with open(tmp, "w", encoding="utf-8") as fh:
            json.dump(doc, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.path)
        dir_fd = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)

    def load(self, server_id: str) -> tuple[list[ReconfigCommand], set[int] | None]:
        """The persisted (active commands, touched GPUs); ``([], set())`` when there is no file.

        A corrupt file is moved aside (``.corrupt``) and reported as touched GPUs
        ``None``: the agent cannot know what it set, so it resets every GPU.
        """
        if not self.path.exists():
            return [], set()
        try:
            doc = json.loads(self.path.read_text(encoding="utf-8"))
            if doc.get("server_id") != server_id:
                raise ValueError(f"state of server {doc.get('server_id')!r}, this agent is {server_id!r}")
            active = [ReconfigCommand.model_validate(c) for c in doc["active"]]
            touched = {int(g) for g in doc["touched"]}
        except (ValueError, KeyError, TypeError) as exc:
            aside = self.path.with_name(self.path.name + ".corrupt")
            os.replace(self.path, aside)
            log.error("event=agent_state_corrupt path=%s moved_to=%s error=%s (resetting every GPU)",
                      self.path, aside, exc)
            return [], None
        return active, touched


def state_file_for(settings: ControllerSettings, server_id: str) -> AgentStateFile:
    """The agent's state file: ``agent_state_dir/<server id>.json`` (unsafe characters replaced)."""
    return AgentStateFile(Path(settings.agent_state_dir) / (re.sub(r"[^A-Za-z0-9._-]", "_", server_id) + ".json"))


class NodeAgent:
    """The agent's state machine: commands in, GPU settings and status reports out; time passed in.

    Args:
        server_id: the server this agent runs on (only its commands are handled).
        control: the GPU backend (NVML, or a recorder).
        settings: bounds, skew, max mode, signature policy, safe cap.
        pinned: the controller public keys by key id (default: from ``settings``).
        state: where applied caps are persisted before they are applied (None = memory only).
    """

    def __init__(self, server_id: str, control: GpuControl, settings: ControllerSettings, *,
                 pinned: dict[str, Ed25519PublicKey] | None = None, state: AgentStateFile | None = None) -> None:
        self.server_id = server_id
        self.control = control
        self.settings = settings
        self.bounds = replace(SafetyBounds.from_settings(settings),
                              max_commands_per_window=settings.agent_max_commands_per_gpu_per_min)
        self.num_gpus = control.gpu_count()
        self.gate = SafetyGate(self.bounds, rate_keys=self._gpu_rate_keys)
        self.pinned = load_pinned_keys(settings) if pinned is None else pinned
        self.state = state
        self.active: dict[str, ReconfigCommand] = {}
        self.applied: dict[int, GpuSetting] = {}
        self._recovered: set[int] = set()  # GPUs a previous life of the agent may have changed
        self.safe_mode = False
        self.num_applied = 0
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
        if cmd.mode == "advisory" or self.settings.agent_max_mode == "advisory":
            verdict = self.gate.admit(cmd, now=now, count=False)  # advisory: no rate budget, no ledger entry
            if verdict.status in ("refused", "expired"):
                return [self._status(cmd, verdict.status, now, f"advisory command: {verdict.reason}")]
            why = ("advisory command: shown, not enforced" if cmd.mode == "advisory" else
                   "enforce command shown, not enforced: this agent is capped at advisory (agent_max_mode)")
            return [self._status(cmd, "dry_run", now, why)]
        unsigned = verify_command(cmd, self.pinned)
        if unsigned is not None:
            if not self.settings.agent_accept_unsigned:
                return self._refuse(cmd, now, f"{unsigned}; enforce commands must be signed by a pinned controller "
                                              f"key (controller.command_public_keys)")
            log.warning("event=unsigned_command_accepted server=%s command=%s reason=%s (agent_accept_unsigned)",
                        self.server_id, cmd.command_id, unsigned)
        bad_gpus = [g for g in cmd.gpu_indices if not 0 <= g < self.num_gpus]
        if bad_gpus:
            return self._refuse(cmd, now, f"gpu_indices {bad_gpus[:8]} not on this server ({self.num_gpus} GPUs)")
        verdict = self.gate.admit(cmd, now=now, tightens=self._tightens(cmd, now))
        if verdict.status in ("duplicate", "expired"):
            return [self._status(cmd, verdict.status, now, verdict.reason)]
        if verdict.status == "refused":
            return self._refuse(cmd, now, verdict.reason)
        before = dict(self.active)
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
            self.active = before
            try:
                self._apply(now, force=True)
            except Exception:  # noqa: BLE001 - already failing: the status says so
                log.exception("event=rollback_failed server=%s command=%s", self.server_id, cmd.command_id)
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

    def recover(self, now: datetime) -> list[Contract]:
        """At start-up: reconcile the GPUs with what a previous life of the agent persisted.

        Still-valid commands (on this agent's clock) are re-applied and re-enter the
        ledger (a replay from the broker is then a duplicate); expired ones are reverted;
        every GPU the previous life may have touched is set to the desired state (its
        default when nothing is active). Without a state file nothing is touched.
        """
        if self.state is None:
            return []
        commands, touched = self.state.load(self.server_id)
        self._recovered = set(range(self.num_gpus)) if touched is None else {g for g in touched
                                                                          if 0 <= g < self.num_gpus}
        out: list[Contract] = []
        for cmd in commands:
            if cmd.expires_at > now and check_times(cmd, self.bounds, now=now) is None:
                self.active[cmd.command_id] = cmd
                self.gate.restore(cmd)
            else:
                out.append(self._status(cmd, "reverted", now, f"expired at {cmd.expires_at.isoformat()} while the "
                                                              f"agent was down; {cmd.action} lifted at restart"))
        if self._recovered or self.active:
            self._apply(now, force=True)
        for cmd in self.active.values():
            out.append(self._status(cmd, "dry_run" if self.control.dry_run else "applied", now,
                                    f"re-applied after agent restart: {cmd.action} {self._describe(cmd)} until "
                                    f"{cmd.expires_at.isoformat()}"))
        log.info("event=agent_recovered server=%s active=%d reset_or_reapplied_gpus=%s", self.server_id,
                 len(self.active), sorted(self._recovered))
        return out

    def shutdown(self, now: datetime) -> list[Contract]:
        """On SIGTERM: lift every cap this agent set (clocks and power limits back to default)."""
        lifted = list(self.active.values())
        self.active.clear()
        self.safe_mode = False
        self._apply(now, force=True)
        return [self._status(c, "reverted", now, "agent stopped; cap lifted") for c in lifted]

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
    def _desired(self, now: datetime) -> dict[int, GpuSetting]:
        live = [c for c in self.active.values() if c.expires_at > now]
        return desired_settings(live, self.num_gpus, safe_power_w=self.safe_power_w() if self.safe_mode else None)

    def _apply(self, now: datetime, *, force: bool) -> None:
        want = self._desired(now)
        default = GpuSetting()
        todo = [g for g, setting in want.items()
                if (force and (g in self.applied or g in self._recovered)) or self.applied.get(g, default) != setting]
        if self.state is not None:  # persist before touching a GPU: a crash in between is reconciled at restart
            touched = set(self.applied) | self._recovered | {g for g, st in want.items() if st != default}
            self.state.save(self.server_id, self.active.values(), touched, now)
        for g in todo:
            self.control.apply(g, want[g])
            self._recovered.discard(g)
            if want[g] == default:
                self.applied.pop(g, None)
            else:
                self.applied[g] = want[g]

    def _targets(self, cmd: ReconfigCommand) -> list[int]:
        return [g for g in cmd.gpu_indices if 0 <= g < self.num_gpus] if cmd.gpu_indices else list(
            range(self.num_gpus))

    def _gpu_rate_keys(self, cmd: ReconfigCommand) -> list[str]:
        """The agent counts every command against each GPU it targets, whatever its ``instance_id``."""
        return [f"{cmd.server_id}/gpu{g}" for g in self._targets(cmd)] or [f"{cmd.server_id}/gpu-none"]

    def _tightens(self, cmd: ReconfigCommand, now: datetime) -> bool:
        """True when ``cmd`` lowers (or keeps) the cap of every GPU it targets: the emergency exemption's test."""
        want = self._desired(now)
        p = cmd.params
        for g in self._targets(cmd):
            if cmd.action == "set_frequency_cap" and p.frequency_cap_mhz is not None:
                cur = want[g].frequency_cap_mhz
                if cur is not None and p.frequency_cap_mhz > cur:
                    return False
            elif cmd.action == "set_power_limit" and p.power_limit_w is not None:
                cur = want[g].power_limit_w
                if cur is None:
                    cur = self.control.default_power_limit_w(g)
                if p.power_limit_w > cur:
                    return False
            else:
                return False
        return True

    def _refuse(self, cmd: ReconfigCommand, now: datetime, reason: str) -> list[Contract]:
        log.warning("event=command_refused server=%s command=%s reason=%s", self.server_id, cmd.command_id, reason)
        return [self._status(cmd, "refused", now, reason),
                refusal_event(cmd, reason, now=now, refused_by=f"agent {self.server_id}")]

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
              on_ready: Callable[[NodeAgent], None] | None = None,
              on_started: Callable[[NodeAgent], None] | None = None) -> NodeAgent:
    """Run the agent until ``stop`` is set; returns it (tests inspect what it applied).

    Order of start-up: reconcile the GPUs with the persisted state (``agent_state_dir``),
    then connect; while the broker does not answer, the documented safe cap is applied
    and expiries are still enforced (``on_started`` is called before connecting,
    ``on_ready`` once connected). Reading starts ``max_command_ttl_s`` back in time
    (offsets by timestamp), so commands still valid are applied; ids already applied are
    duplicates. When ``stop`` is set every cap this agent set is lifted.
    """
    cs = settings.controller
    now_fn = clock or (lambda: datetime.now(UTC))
    commands_topic = commands_topic or topic_for(ReconfigCommand)
    status_topic = status_topic or topic_for(CommandStatus)
    events_topic = events_topic or topic_for(ControlEvent)
    agent = NodeAgent(server_id, control, cs, state=state_file_for(cs, server_id))
    log.info("event=agent_started server=%s control=%s max_mode=%s pinned_keys=%d", server_id, control.describe(),
             cs.agent_max_mode, len(agent.pinned))
    outbox: deque[Contract] = deque(maxlen=10_000)
    outbox.extend(agent.recover(now_fn()))
    if on_started is not None:
        on_started(agent)
    key = server_id.encode()
    health_server: HealthServer | None = None
    if cs.agent_health_port:  # up before the broker: /readyz says "safe mode" while it is away
        health_server = start_health_server(
            "agent", lambda: agent.readiness(now_fn(), poll_window_s=max(15.0, 3 * health_every_s)),
            host=cs.agent_health_host, port=cs.agent_health_port)
    metrics_server = None
    if cs.agent_metrics_port:
        from controller.agent_metrics import serve_agent_metrics

        metrics_server = serve_agent_metrics(agent, cs.agent_metrics_port, cs.agent_metrics_addr)
    next_reconcile = time.monotonic() + cs.agent_reconcile_s
    conn: tuple[Any, Any, list[Any]] | None = None
    try:
        while conn is None and not stop.is_set():
            try:
                conn = _connect(clients, server_id, commands_topic, now_fn, cs.max_command_ttl_s)
            except Exception as exc:  # noqa: BLE001 - NoBrokersAvailable, timeouts: keep the GPUs safe meanwhile
                log.warning("event=broker_unreachable server=%s error=%s", server_id, exc)
                agent.broker_lost(now_fn())
                if time.monotonic() >= next_reconcile:
                    next_reconcile = time.monotonic() + cs.agent_reconcile_s
                    outbox.extend(agent.reconcile(now_fn()))
                stop.wait(1.0)
        if conn is None:
            return agent
        consumer, producer, tps = conn
        agent.broker_ok_at = agent.last_polled_at = now_fn()
        agent.broker_back(now_fn())
        try:
            if on_ready is not None:
                on_ready(agent)
            last_ok = time.monotonic()
            next_health = last_ok + health_every_s
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
            consumer.close()
            outbox.extend(_lift_all(agent, now_fn()))
            _flush(producer, outbox, status_topic, events_topic, key)
            producer.close(timeout=5)
            conn = None
    finally:
        if conn is None and agent.applied:  # stopped before connecting (or the shell failed): still lift caps
            _lift_all(agent, now_fn())
        if health_server is not None:
            health_server.close()
        if metrics_server is not None:
            metrics_server.shutdown()  # type: ignore[attr-defined]
    return agent


def _lift_all(agent: NodeAgent, now: datetime) -> list[Contract]:
    try:
        return agent.shutdown(now)
    except Exception:  # noqa: BLE001 - NVML failing at exit: say so, the state file keeps what is set
        log.exception("event=shutdown_revert_failed server=%s", agent.server_id)
        return []


def _connect(clients: KafkaClients, server_id: str, commands_topic: str,
             now_fn: Callable[[], datetime], max_command_ttl_s: float) -> tuple[Any, Any, list[Any]]:
    """Consumer (assigned, positioned ``max_command_ttl_s`` back) and producer; raises while the broker is away."""
    from kafka import KafkaConsumer

    # An offset out of range (a broker that restarted with an empty log, or retention) resets to the
    # earliest retained command rather than the latest: the ledger drops ids already applied and the
    # expiry drops stale ones, while "latest" would skip commands published just after the restart.
    # Fail fast while the broker is away (kafka-python's default waits 30 s per attempt, during which the
    # agent would enforce neither the safe cap nor expiries); older kafka-python has no such option.
    fast = {"bootstrap_timeout_ms": 3000} if "bootstrap_timeout_ms" in KafkaConsumer.DEFAULT_CONFIG else {}
    consumer = clients.consumer(f"agent-{server_id}", **fast, request_timeout_ms=5000, fetch_max_wait_ms=500,
                                reconnect_backoff_max_ms=2000, auto_offset_reset="earliest")
    try:
        producer = clients.producer(f"agent-{server_id}", **fast, acks=1, enable_idempotence=False, max_block_ms=1000,
                                    request_timeout_ms=5000, reconnect_backoff_max_ms=2000)
    except Exception:
        consumer.close()
        raise
    try:
        # no record that late, or no timestamp index: read from the beginning, expiry filters
        since = Since(now_fn() - timedelta(seconds=max_command_ttl_s), otherwise="beginning")
        tps = assign_all(consumer, {commands_topic: since}, metadata_wait_s=0.0)
        for tp in tps:  # resolve the lazy seeks before reporting ready
            consumer.position(tp)
    except Exception:
        consumer.close()
        producer.close(timeout=1)
        raise
    return consumer, producer, tps




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

