"""``tapas controller``: the live service around the pure decision core.

Two layers, both boring on purpose:

* :class:`Controller` — no Kafka, the operator envelope. Messages in (``handle``),
  decisions out (``tick``), time passed in. It keeps the latest forecasts
  (:mod:`controller.snapshot_builder`), builds a :class:`~controller.core.snapshot.Snapshot`,
  asks the policy (``controller.core.policy``, ``TAPAS_CONTROLLER__POLICY``: the same
  object ``tapas simulate`` evaluates) via ``policy.tick`` / ``policy.place``, translates
  its decisions to contracts (:mod:`controller.translate`), passes every command through
  the :class:`~controller.safety.SafetyGate` and returns :class:`Outgoing` messages.
* :func:`run_service` — the Kafka shell: ``assign()``-ed consumer (no group join),
  producer, a tick every ``tick_s``, undecodable input to the dead-letter topic.

Behaviour an operator relies on:

* **Modes.** ``advisory``: hints, weights and commands are published marked advisory
  (``advisory=True`` / ``mode="advisory"``); agents show them, nothing is enforced.
  ``enforce``: commands carry ``mode="enforce"`` and agents apply them. A
  :class:`~contracts.ControllerMode` message on ``tapas.control.mode`` switches at run
  time and is answered by a ``mode_changed`` event.
* **Stale forecasts** (newest forecast older than ``stale_after_s``): a
  ``stale_forecasts`` event once; routing weights decay from the last good ones to
  capacity-proportional ones with time constant ``stale_decay_s`` and are flagged
  ``stale_inputs`` (the policy's ``stale_decay_s`` knob); no configuration that raises power
  is issued (``block_power_raises_when_stale``); placement requests are
  answered infeasible ("cannot vouch for headroom"). Emergency tightening still runs.
  When forecasts return, a ``forecasts_recovered`` event and normal operation.
* **Emergencies** (``power_emergency`` / ``cooling_failure`` events) are planned on
  arrival (a tick runs at once, within the domain's deadline) by the policy; the plan's
  commands carry ``trigger="emergency"``; while it is in force the policy's emergency
  rules hold (no relaxing to hotter configurations, no raising for load while IaaS VMs are
  capped, the IaaS caps follow measured row power); an ``emergency_plan`` event records
  what was relaxed. ``emergency_cleared`` (or the event's ``ends_at``) ends it and the
  policy's released caps are reverted.
* **Commands** carry deterministic ids (same decision, same planning epoch → same id),
  an expiry of ``command_ttl_s``, and pass the safety bounds; a refused one is reported
  as a ``safety_refused`` event and never published.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from functools import partial

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from contracts import (
    CommandStatus,
    Contract,
    ContractError,
    ControlEvent,
    ControllerMode,
    DeadLetter,
    DomainForecast,
    GpuSample,
    PlacementHint,
    PlacementRequest,
    ReconfigCommand,
    RoutingWeights,
    ServerForecast,
    decode,
    topic_for,
)
from controller.core.catalogue import Catalogue
from controller.core.policy import PolicyKnobs, knobs_for, make_policy, raises_power
from controller.core.snapshot import (
    ConfigChange,
    Emergency,
    EmergencyPlan,
    GpuCap,
    Policy,
    Snapshot,
    TickActions,
)
from controller.core.snapshot import PlacementRequest as CorePlacementRequest
from controller.metrics import ControllerMetrics
from controller.safety import SafetyBounds, SafetyGate, refusal_event
from controller.signing import load_signing_key, sign_command
from controller.snapshot_builder import NEVER_S, LiveState, build_snapshot
from controller.translate import (
    Mode,
    _age,
    cap_to_commands,
    change_to_commands,
    core_request,
    placement_hint,
    revert_command,
    to_emergency,
    ts,
    weights_message,
)
from foundation.health import HealthServer, Readiness, readiness, start_health_server
from foundation.kafka import KafkaClients, Publisher, Since, Start, assign_all
from foundation.settings import ControllerSettings, Settings
from foundation.topology import Topology

__all__ = ["Controller", "ControllerTopics", "Outgoing", "cap_to_commands", "change_to_commands", "raises_power",
           "run_service", "to_emergency"]

log = logging.getLogger(__name__)

MAX_REPORTED_UNKNOWN = 100_000
"""Most unknown server ids reported one by one; beyond that they are only counted."""


@dataclass(frozen=True)
class ControllerTopics:
    """Topic names the service reads and writes (the topic table's by default; tests use unique ones)."""

    server_forecasts: str = topic_for(ServerForecast)
    domain_forecasts: str = topic_for(DomainForecast)
    gpu_samples: str = topic_for(GpuSample)
    placement_requests: str = topic_for(PlacementRequest)
    placement_hints: str = topic_for(PlacementHint)
    routing_weights: str = topic_for(RoutingWeights)
    commands: str = topic_for(ReconfigCommand)
    status: str = topic_for(CommandStatus)
    mode: str = topic_for(ControllerMode)
    events: str = topic_for(ControlEvent)
    deadletter: str = topic_for(DeadLetter)

    @property
    def inputs(self) -> dict[str, type[Contract]]:
        """Topics consumed, with the contract each carries."""
        return {self.server_forecasts: ServerForecast, self.domain_forecasts: DomainForecast,
                self.gpu_samples: GpuSample, self.placement_requests: PlacementRequest,
                self.mode: ControllerMode, self.events: ControlEvent, self.status: CommandStatus}


@dataclass(frozen=True)
class Outgoing:
    """One message to publish."""

    topic: str
    key: str
    message: Contract


@dataclass
class ActiveEmergency:
    """An emergency being handled and the plan made for it."""

    emergency: Emergency
    event: ControlEvent
    plan: EmergencyPlan | None = None


def knobs_from_settings(settings: ControllerSettings, base: PolicyKnobs | None = None) -> PolicyKnobs:
    """The policy knobs the live service runs: the defaults, the operator settings that map onto knobs, then
    ``TAPAS_CONTROLLER__KNOBS`` overrides by name.

    Settings that map: ``stale_after_s``, ``stale_decay_s``, ``reconfig_period_s`` (the fast cadence),
    ``min_frequency_mhz`` (the safety gate's floor, so no plan proposes what the gate refuses),
    ``command_ttl_s`` and ``home_layout``. Their defaults equal the knobs' defaults except the frequency floor
    (the simulator has no safety gate) and the command TTL (the simulator issues no commands).
    """
    k = base if base is not None else knobs_for(settings.policy)
    k = replace(k, stale_after_s=settings.stale_after_s, stale_decay_s=settings.stale_decay_s,
                reconfig_params=replace(
                    k.reconfig_params, stale_after_s=settings.stale_after_s, command_ttl_s=settings.command_ttl_s,
                    fast_interval_s=settings.reconfig_period_s, min_frequency_mhz=settings.min_frequency_mhz,
                    home_layout=settings.home_layout))
    return k.with_overrides(settings.knobs)


def policy_from_settings(settings: ControllerSettings, topology: Topology, catalogue: Catalogue) -> Policy:
    """The registered policy ``settings.policy`` (``TAPAS_CONTROLLER__POLICY``) with the live knobs."""
    return make_policy(settings.policy, catalogue=catalogue, topology=topology, knobs=knobs_from_settings(settings))


class Controller:
    """The operator envelope around one policy: messages in, decisions out, no I/O and no clock reads.

    messages -> live state -> snapshot -> ``policy.tick`` / ``policy.place`` -> translation to
    contracts (:mod:`controller.translate`) -> safety gate -> :class:`Outgoing`. Every decision
    rule lives in the policy (``controller.core.policy``, the one the simulator evaluates);
    modes, staleness events, intents, idempotent ids, restore and rate limits live here.
    """

    def __init__(self, topology: Topology, catalogue: Catalogue, settings: ControllerSettings, *,
                 mode: Mode | None = None, topics: ControllerTopics | None = None,
                 metrics: ControllerMetrics | None = None, started_at: datetime,
                 policy: Policy | None = None) -> None:
        self.topology = topology
        self.catalogue = catalogue
        self.settings = settings
        self.policy: Policy = policy or policy_from_settings(settings, topology, catalogue)
        self.mode: Mode = mode or settings.mode
        self.mode_pinned = mode is not None
        self.topics = topics or ControllerTopics()
        self.metrics = metrics or ControllerMetrics()
        self.started_at = started_at
        self.state = LiveState(topology)
        self.gate = SafetyGate(SafetyBounds.from_settings(settings))
        self.weights_valid_for_s = max(2.0, 2 * settings.tick_s)
        self.stale = False
        self.stale_since: datetime | None = None
        self.last_polled_at: datetime | None = None
        """When the Kafka shell last polled its inputs (``/readyz``'s ``consuming``)."""
        self.emergencies: dict[str, ActiveEmergency] = {}
        self.intents: dict[str, tuple[str, datetime]] = {}
        """instance id -> (config id last commanded, when those commands expire)."""
        self._command_instance: dict[str, str] = {}
        self._enforced: dict[str, ReconfigCommand] = {}  # enforce commands published and still in the ledger
        """command id -> instance id, for commands behind an intent (bounded by forget_expired)."""
        self.capped_servers: set[str] = set()
        """Servers holding emergency caps this controller issued (reverted when released or when all end)."""
        self.cap_intents: dict[tuple[str, str], tuple[tuple[float | None, float | None], datetime]] = {}
        """(VM or server, action) -> (limit last commanded, when that command expires): caps are not re-published
        while the same limit is in force (the feedback recomputes them every tick)."""
        self._cap_server: dict[str, str] = {}
        """VM or server a cap names -> its server."""
        self.last_actions: TickActions | None = None
        """What the policy decided on the latest tick (the actions behind the tick's outgoing messages)."""
        self._snapshot: Snapshot | None = None
        self._snapshot_at: datetime | None = None
        self.num_refused = 0
        self.num_commands = 0
        self._reported_unknown: set[str] = set()
        """Servers outside the topology already reported by an ``unknown_server`` event."""
        self.lock = threading.RLock()
        """Held by the service loop while it handles input and ticks, and by the placement API (controller.api)."""
        self.metrics.mode_enforce.set(1.0 if self.mode == "enforce" else 0.0)

    # ------------------------------------------------------------------ input
    def handle(self, topic: str, message: Contract, *, now: datetime) -> list[Outgoing]:
        """Take one decoded input message; returns what it causes to be published right away."""
        if isinstance(message, ServerForecast):
            if self.state.add_server_forecast(message, received_at=now):
                self._snapshot = None
                return []
            self.metrics.unknown_forecasts.inc()
            if message.server_id in self._reported_unknown or len(self._reported_unknown) >= MAX_REPORTED_UNKNOWN:
                return []  # reported once already (or a flood of bad ids: counted only)
            self._reported_unknown.add(message.server_id)
            log.warning("event=unknown_server server=%s (not in the inventory: check TAPAS_TOPOLOGY__INVENTORY)",
                        message.server_id)
            digest = hashlib.sha1(message.server_id.encode(), usedforsecurity=False).hexdigest()[:12]
            return [self._event("unknown_server", "warning", now, domain_kind="server",
                                domain_id=message.server_id[:128], event_id=f"ctl-unknown_server-{digest}", detail=(
                                    f"forecast for server {message.server_id!r}, which the inventory does not "
                                    f"list: ignored (counted in tapas_controller_unknown_server_forecasts_total); "
                                    f"add it to TAPAS_TOPOLOGY__INVENTORY or fix the agent's server id"))]
        if isinstance(message, DomainForecast):
            self.state.add_domain_forecast(message)
            self._snapshot = None
            return []
        if isinstance(message, GpuSample):
            n = len(message.gpus)
            power = message.gpu_power_w
            self.state.add_workload(message.server_id, message.workload,
                                    gpu_power_w=power / n if power is not None else None, sampled_at=message.sampled_at)
            self.state.add_memory_temps(message.server_id, message.gpus, sampled_at=message.sampled_at)
            return []
        if isinstance(message, PlacementRequest):
            return [self.place(message, now=now)]
        if isinstance(message, ControllerMode):
            return self.set_mode(message, now=now)
        if isinstance(message, ControlEvent):
            return self.on_event(message, now=now)
        if isinstance(message, CommandStatus):
            alarm = self._alarm_not_applied(message, now)
            if message.status in ("refused", "failed"):
                log.warning("event=command_%s command=%s server=%s detail=%s", message.status, message.command_id,
                            message.server_id, message.detail)
                # the change did not land: forget the intent so the next plan may try again (or otherwise)
                instance = self._command_instance.pop(message.command_id, None)
                if instance is not None:
                    self.intents.pop(instance, None)
            return alarm
        return []

    def _alarm_not_applied(self, status: CommandStatus, now: datetime) -> list[Outgoing]:
        """A metric and a critical event when an agent did not apply an enforce command (dry run, failure)."""
        cmd = self._enforced.get(status.command_id)
        if cmd is None or status.status not in ("dry_run", "failed"):
            return []
        self.metrics.not_applied.labels(status.status).inc()
        log.error("event=enforce_command_not_applied command=%s server=%s status=%s detail=%s", cmd.command_id,
                  status.server_id, status.status, status.detail)
        ev = ControlEvent(event_id=f"notapplied-{cmd.command_id}"[:64], event_kind="command_not_applied",
                          severity="critical", occurred_at=now, domain_kind="server", domain_id=status.server_id[:128],
                          detail=(f"enforce command {cmd.command_id} ({cmd.action}, trigger {cmd.trigger or '-'}) "
                                  f"was not applied by agent {status.server_id}: {status.status}: "
                                  f"{status.detail}")[:4000])
        return [Outgoing(self.topics.events, status.server_id, ev)]

    def set_mode(self, msg: ControllerMode, *, now: datetime) -> list[Outgoing]:
        """Switch advisory/enforce. Retained messages older than our start do not override a ``--mode`` flag."""
        if self.mode_pinned and msg.changed_at < self.started_at:
            return []
        old, self.mode = self.mode, msg.mode
        self.metrics.mode_enforce.set(1.0 if self.mode == "enforce" else 0.0)
        if old == msg.mode:
            return []
        self.intents.clear()  # commands issued in the other mode are re-issued in this one
        self.cap_intents.clear()
        log.info("event=mode_changed from=%s to=%s by=%s", old, msg.mode, msg.changed_by)
        return [self._event("mode_changed", "info", now, detail=f"controller mode {old} -> {msg.mode} "
                                                              f"by {msg.changed_by}")]

    # ------------------------------------------------------------------ snapshot
    def snapshot(self, now: datetime) -> Snapshot:
        """The current snapshot (rebuilt when new data arrived or a tick passed)."""
        if (self._snapshot is None or self._snapshot_at is None
                or (now - self._snapshot_at).total_seconds() >= self.settings.tick_s):
            self._snapshot = build_snapshot(self.state, self.catalogue, now=now)
            self._snapshot_at = now
        return self._snapshot

    def active_emergencies(self) -> list[Emergency]:
        """The core's view of the emergencies in force (what ``policy.tick`` is told)."""
        return [a.emergency for a in self.emergencies.values()]

    # ------------------------------------------------------------------ placement
    def hint(self, req: PlacementRequest, *, now: datetime) -> PlacementHint:
        """Ranked hints for one placement request from ``policy.place`` (infeasible while forecasts are stale)."""
        advisory = self.mode == "advisory"
        age_s = self.state.forecast_age_s(now)
        if age_s > self.settings.stale_after_s:
            self.metrics.placements.labels("false").inc()
            return PlacementHint(
                request_id=req.request_id, issued_at=now, feasible=False, candidates=[], advisory=advisory,
                reason=(f"forecasts stale ({_age(age_s)}): cannot vouch for any server's thermal or power "
                        f"headroom; no placement hinted until forecasts return"))
        return self.hint_for(self.snapshot(now), core_request(req), now=now)

    def hint_for(self, snap: Snapshot, req: CorePlacementRequest, *, now: datetime) -> PlacementHint:
        """``policy.place`` on a given snapshot, translated (the simulator-equivalence test feeds its own)."""
        decision = self.policy.place(snap, req)
        self.metrics.placements.labels("true" if decision.feasible else "false").inc()
        return placement_hint(decision, now=now, advisory=self.mode == "advisory")

    def place(self, req: PlacementRequest, *, now: datetime) -> Outgoing:
        """:meth:`hint`, addressed to the placement-hints topic."""
        return Outgoing(self.topics.placement_hints, req.request_id, self.hint(req, now=now))

    # ------------------------------------------------------------------ tick
    def readiness(self, now: datetime) -> Readiness:
        """``/readyz``: the input loop polled within five ticks (at least 5 s) and forecasts are fresh."""
        polled = self.last_polled_at
        consuming = polled is not None and (now - polled).total_seconds() <= max(5.0, 5 * self.settings.tick_s)
        age_s = self.state.forecast_age_s(now)
        last = None if age_s >= NEVER_S else now - timedelta(seconds=age_s)
        return readiness("controller", consuming=consuming, last_input_at=last, now=now,
                         stale_after_s=self.settings.stale_after_s)

    def tick(self, now: datetime) -> list[Outgoing]:
        """One decision tick: staleness, emergencies' end, then the policy's tick on the live snapshot."""
        t0 = time.perf_counter()
        out: list[Outgoing] = []
        out += self._check_staleness(now)
        self._expire_emergencies(now)
        out += self.decide(self.snapshot(now), self.active_emergencies(), now=now)
        self.gate.forget_expired(now)
        for iid in [i for i, (_cfg, exp) in self.intents.items() if exp <= now]:
            del self.intents[iid]
        for cid in [c for c in self._command_instance if not self.gate.ledger.seen(c)]:
            del self._command_instance[cid]
        for cid in [c for c in self._enforced if not self.gate.ledger.seen(c)]:
            del self._enforced[cid]
        self.metrics.forecast_age.set(min(self.state.forecast_age_s(now), 1e9))
        self.metrics.tick_seconds.set(time.perf_counter() - t0)
        return out

    def decide(self, snap: Snapshot, emergencies: Sequence[Emergency], *, now: datetime) -> list[Outgoing]:
        """``policy.tick`` on ``snap`` and ``emergencies``, translated, gated and addressed.

        The simulator-equivalence test feeds the simulator's own snapshots here; the live tick
        feeds the snapshot built from forecasts. Order matches the simulator's engine: routing,
        plans, changes, caps, then released caps.
        """
        actions = self.policy.tick(snap, emergencies)
        self.last_actions = actions
        out: list[Outgoing] = []
        for d in actions.routing.values():
            self.metrics.observe_routing(d)
            out.append(Outgoing(self.topics.routing_weights, d.endpoint_id, weights_message(
                d, snap, now=now, valid_for_s=self.weights_valid_for_s, advisory=self.mode == "advisory",
                stale=self.stale)))
        for plan in actions.plans:
            out += self._publish_plan(plan, now)
        out += self._issue_changes(actions.changes, now)
        out += self._issue_caps(actions.caps, now, ends_at=None)
        released = sorted({snap.server_ids[s] for s in actions.released_caps if 0 <= s < snap.num_servers})
        for sid in released:
            out += self._revert(sid, now, reason="emergency caps released (the plan's feedback or its end)")
        return out

    def _check_staleness(self, now: datetime) -> list[Outgoing]:
        age_s = self.state.forecast_age_s(now)
        stale = age_s > self.settings.stale_after_s
        self.metrics.stale.set(1.0 if stale else 0.0)
        if stale == self.stale:
            return []
        self.stale = stale
        if stale:
            self.stale_since = now
            log.warning("event=stale_forecasts age_s=%.1f", age_s)
            return [self._event("stale_forecasts", "warning", now, detail=(
                f"newest forecast {_age(age_s)} old (limit {self.settings.stale_after_s:.0f} s): routing decays "
                f"to capacity-proportional weights, no new aggressive reconfiguration, placements refused"))]
        self.stale_since = None
        log.info("event=forecasts_recovered age_s=%.1f", age_s)
        return [self._event("forecasts_recovered", "info", now,
                            detail=f"forecasts fresh again ({_age(age_s)} old); normal operation resumed")]

    # ------------------------------------------------------------------ commands
    def _issue_changes(self, changes: Iterable[ConfigChange], now: datetime) -> list[Outgoing]:
        """Commands for the changes not already in flight.

        A change to the configuration an instance was last commanded to, whose commands
        have more than a third of their lifetime left, is in flight (the serving layer
        or agent has not reported the new configuration yet, or the controller is
        advisory): it is not re-issued. Near expiry it is re-issued with a new id, which
        keeps a still-wanted cap from lapsing.
        """
        out: list[Outgoing] = []
        for change in changes:
            intent = self.intents.get(change.instance_id)
            if intent is not None and intent[0] == change.to_config_id and (
                    intent[1] - now).total_seconds() > self.settings.command_ttl_s / 3:
                continue
            issued = False
            for cmd in change_to_commands(change, self.catalogue, mode=self.mode, now=now,
                                          ttl_s=self.settings.command_ttl_s,
                                          epoch_s=self.settings.reconfig_period_s):
                sent = self._admit(cmd, now, capacity_frac_after=self._capacity_frac(change))
                if any(o.topic == self.topics.commands for o in sent):
                    issued = True
                    self._command_instance[cmd.command_id] = change.instance_id
                out += sent
            if issued:
                self.intents[change.instance_id] = (change.to_config_id,
                                                    now + timedelta(seconds=self.settings.command_ttl_s))
        return out

    def _capacity_frac(self, change: ConfigChange) -> float | None:
        try:
            to = self.catalogue.option(change.to_config_id)
            endpoint = next(ep for ep, opts in self.catalogue.options.items() if to in opts)
            nominal = self.catalogue.default(endpoint).capacity_tokens_per_s_at_slo
        except (KeyError, StopIteration):
            return None
        return to.capacity_tokens_per_s_at_slo / nominal if nominal > 0 else None

    def _admit(self, cmd: ReconfigCommand, now: datetime, *, capacity_frac_after: float | None = None
               ) -> list[Outgoing]:
        verdict = self.gate.admit(cmd, now=now, capacity_frac_after=capacity_frac_after)
        if verdict.ok:
            if cmd.mode == "enforce":
                self._enforced[cmd.command_id] = cmd
            self.num_commands += 1
            self.metrics.commands.labels(cmd.action).inc()
            return [Outgoing(self.topics.commands, cmd.server_id, cmd)]
        if verdict.status == "refused":
            self.num_refused += 1
            self.metrics.refused.inc()
            log.warning("event=safety_refused command=%s reason=%s", cmd.command_id, verdict.reason)
            return [Outgoing(self.topics.events, cmd.server_id,
                             refusal_event(cmd, verdict.reason, now=now, refused_by="controller"))]
        return []

    def restore(self, cmd: ReconfigCommand, *, now: datetime) -> bool:
        """Remember a command published before a restart (ids, rate history, in-flight intent); True if live.

        A restarted controller therefore neither re-issues a change still in flight nor
        exceeds a rate limit its previous life had used up.
        """
        if cmd.expires_at <= now or self.gate.ledger.seen(cmd.command_id):
            return False
        self.gate.restore(cmd)
        if cmd.instance_id and cmd.params.config_id and cmd.mode == self.mode and cmd.trigger != "emergency":
            old = self.intents.get(cmd.instance_id)
            if old is None or old[1] < cmd.expires_at:
                self.intents[cmd.instance_id] = (cmd.params.config_id, cmd.expires_at)
        return True

    # ------------------------------------------------------------------ emergencies
    def on_event(self, ev: ControlEvent, *, now: datetime) -> list[Outgoing]:
        """React to an emergency or its end with a tick at once (the policy plans within the deadline)."""
        if ev.event_kind == "emergency_cleared":
            ended = [k for k, a in self.emergencies.items()
                     if (a.event.domain_kind, a.event.domain_id) == (ev.domain_kind, ev.domain_id)]
            if not ended:
                return []
            for k in ended:
                self._end(k)
            return self.tick(now)
        if ev.event_kind not in ("power_emergency", "cooling_failure"):
            return []
        if ev.event_id in self.emergencies:
            return []  # idempotent: the same event delivered twice is planned once
        em = to_emergency(ev, self.topology)
        if em is None:
            log.warning("event=emergency_ignored id=%s domain=%s/%s (unknown domain)", ev.event_id,
                        ev.domain_kind, ev.domain_id)
            return []
        if ev.ends_at is not None and ev.ends_at <= now:
            return []
        self.emergencies[ev.event_id] = ActiveEmergency(em, ev)
        return self.tick(now)

    def _publish_plan(self, plan: EmergencyPlan, now: datetime) -> list[Outgoing]:
        """A new plan's SaaS changes and IaaS caps as commands, and the ``emergency_plan`` event saying so."""
        e = plan.emergency
        first, _, extra = e.event_id.partition("+")
        # A merged plan (policy knob merge_uniform_power_events) is named "<first event>+<how many more>".
        merged_ids = [k for k, a in self.emergencies.items() if a.plan is None or a.plan.emergency is e] if extra else []
        active = self.emergencies.get(e.event_id) or (self.emergencies.get(first) if extra in ("", "0") else None)
        for a in [self.emergencies[k] for k in merged_ids] + ([active] if active is not None else []):
            a.plan = plan
        ends_at = ts(e.ends_at_s) if e.ends_at_s is not None else None
        out = self._issue_changes(plan.changes, now)
        out += self._issue_caps(plan.caps, now, ends_at=ends_at)
        relaxed = "; ".join(f"{r.subject}: {r.promise} until {ts(r.until_s).isoformat()} "
                            f"(quality cost {r.quality_cost:.3f}, performance cost {r.performance_cost_frac:.0%})"
                            for r in plan.relaxed)
        if active is not None:
            kind, dk, did = active.event.event_kind, active.event.domain_kind, active.event.domain_id
        else:
            kind = "power_emergency" if e.kind == "power" else "cooling_failure"
            dk, did = "cluster", "cluster"
        detail = (f"{kind} {dk}/{did}: {len(plan.changes)} SaaS changes, "
                  f"{len(plan.caps)} IaaS caps, predicted {plan.predicted_power_w:.0f} W vs budget "
                  f"{plan.budget_w:.0f} W ({'meets' if plan.meets_budget else 'DOES NOT meet'} it) by "
                  f"{ts(plan.effective_by_s).isoformat()}; relaxed: {relaxed or 'nothing'}; {plan.reason}")
        out.append(self._event("emergency_plan", "critical" if not plan.meets_budget else "warning", now,
                               domain_kind=dk, domain_id=did, detail=detail[:4000]))
        return out

    def _issue_caps(self, caps: Iterable[GpuCap], now: datetime, *, ends_at: datetime | None) -> list[Outgoing]:
        """Host commands for emergency IaaS caps, through the safety gate; remembers the servers to revert."""
        out: list[Outgoing] = []
        for cap in caps:
            for cmd in cap_to_commands(cap, mode=self.mode, now=now, max_ttl_s=self.settings.max_command_ttl_s,
                                       ends_at=ends_at):
                key = (cmd.instance_id or cmd.server_id, cmd.action)
                value = (cmd.params.power_limit_w, cmd.params.frequency_cap_mhz)
                held = self.cap_intents.get(key)
                if held is not None and held[0] == value and (held[1] - now).total_seconds() > (
                        cmd.expires_at - now).total_seconds() / 3:
                    continue  # the same limit is in force and far from expiry: not re-published
                sent = self._admit(cmd, now)
                if any(o.topic == self.topics.commands for o in sent):
                    self.capped_servers.add(cap.server_id)
                    self.cap_intents[key] = (value, cmd.expires_at)
                    self._cap_server[key[0]] = cap.server_id
                out += sent
        return out

    def _revert(self, server_id: str, now: datetime, *, reason: str) -> list[Outgoing]:
        self.capped_servers.discard(server_id)
        for key in [k for k, (_v, _e) in self.cap_intents.items() if self._cap_server.get(k[0], k[0]) == server_id]:
            del self.cap_intents[key]
        return self._admit(revert_command(server_id, reason=reason, mode=self.mode, now=now,
                                          ttl_s=self.settings.command_ttl_s), now)

    def _expire_emergencies(self, now: datetime) -> None:
        for k in [k for k, a in self.emergencies.items() if a.event.ends_at is not None and a.event.ends_at <= now]:
            self._end(k)

    def _end(self, key: str) -> None:
        """Forget an emergency; the policy releases its caps on the next tick (``released_caps``)."""
        self.emergencies.pop(key)
        log.info("event=emergency_ended id=%s", key)

    # ------------------------------------------------------------------ helpers
    def _event(self, kind: str, severity: str, now: datetime, *, domain_kind: str = "cluster",
               domain_id: str = "cluster", detail: str = "", event_id: str | None = None) -> Outgoing:
        ev = ControlEvent(event_id=(event_id or f"ctl-{kind}-{int(now.timestamp() * 1000)}")[:64], event_kind=kind,  # type: ignore[arg-type]
                          severity=severity, occurred_at=now, domain_kind=domain_kind,  # type: ignore[arg-type]
                          domain_id=domain_id, detail=detail)
        return Outgoing(self.topics.events, domain_id, ev)


# ---------------------------------------------------------------------- the Kafka shell


def run_service(settings: Settings, topology: Topology, catalogue: Catalogue, *, clients: KafkaClients,
                producer: Publisher, stop: threading.Event, mode: Mode | None = None, topics: ControllerTopics | None = None,
                metrics: ControllerMetrics | None = None, clock: Callable[[], datetime] | None = None,
                on_ready: Callable[[Controller], None] | None = None) -> Controller:
    """Run the controller until ``stop`` is set; returns the final Controller (for tests and reports).

    The consumer is ``assign()``-ed to every partition of the input topics (no group
    join): forecasts, samples and requests from their end; events from
    ``max_command_ttl_s`` ago (an emergency announced just before a restart is still
    planned); the mode topic from its beginning (the latest retained mode). Outputs go
    through ``producer`` (the collectors' buffered producer: bounded FIFO, in-order
    retries across a broker outage, so a hint, weight or command decided while the
    broker is away is delivered when it returns instead of crashing the loop); the
    shell builds both (``tapas.bootstrap``).
    """
    now_fn = clock or (lambda: datetime.now(UTC))
    topics = topics or ControllerTopics()
    cs = settings.controller
    controller = Controller(topology, catalogue, cs, mode=mode, topics=topics, metrics=metrics, started_at=now_fn())
    signing_key = load_signing_key(cs)
    if signing_key is None:
        log.warning("event=commands_unsigned reason='no controller.command_signing_key(_file)': agents in enforce "
                    "mode refuse unsigned commands")
    consumer = clients.consumer("controller")
    metrics_server = api_server = None
    health_server: HealthServer | None = None
    try:
        since = Since(now_fn() - timedelta(seconds=cs.max_command_ttl_s), otherwise="end")
        starts: dict[str, Start] = {t: "end" for t in topics.inputs}
        starts.update({topics.mode: "beginning", topics.events: since})
        tps = assign_all(consumer, starts, metadata_wait_s=0.0)
        for tp in tps:  # resolve any lazy seek now, so nothing sent after on_ready() is skipped
            consumer.position(tp)
        restored = _restore_commands(clients, topics.commands, controller, now_fn(), cs.max_command_ttl_s)
        if restored:
            log.info("event=commands_restored live=%d", restored)
        controller.last_polled_at = now_fn()  # assigned and positioned: consuming from here on
        if cs.metrics_port and metrics is None:
            metrics_server = controller.metrics.serve(cs.metrics_port, addr=cs.metrics_host)
        if cs.health_port:
            health_server = start_health_server("controller", lambda: controller.readiness(now_fn()),
                                                host=cs.health_host, port=cs.health_port)
        if settings.api.port:  # the synchronous placement API (controller.api)
            from controller.api import start_api

            api_server = start_api(controller, settings.api, now=now_fn)
        log.info("event=controller_started mode=%s servers=%d endpoints=%d", controller.mode, topology.num_servers,
                 len(catalogue.endpoint_ids))
        if on_ready is not None:
            on_ready(controller)
        next_tick = time.monotonic()
        while not stop.is_set():
            wait_ms = max(0, int((next_tick - time.monotonic()) * 1000))
            batches = consumer.poll(timeout_ms=min(wait_ms, 200), max_records=2000)
            controller.last_polled_at = now_fn()
            out: list[Outgoing] = []
            for tp, records in batches.items():
                model = topics.inputs[tp.topic]
                for rec in records:
                    try:
                        msg = decode(model, rec.value)
                    except ContractError as exc:
                        out.append(_dead_letter(topics, tp.topic, rec, exc, now_fn()))
                        continue
                    out += _contained(controller, "handle", partial(controller.handle, tp.topic, msg, now=now_fn()))
            if time.monotonic() >= next_tick:
                out += _contained(controller, "tick", lambda: controller.tick(now_fn()))
                next_tick = max(next_tick + cs.tick_s, time.monotonic())
            for o in out:
                producer.publish(o.topic, o.key.encode(), signed(o.message, signing_key).to_bytes())
            producer.pump()
    finally:
        consumer.close()
        producer.close(5)
        if metrics_server is not None:
            metrics_server.shutdown()  # type: ignore[attr-defined]
        if health_server is not None:
            health_server.close()
        if api_server is not None:
            api_server.close()
    return controller


def signed(message: Contract, key: Ed25519PrivateKey | None) -> Contract:
    """Sign a command on its way out (the one place commands are signed); other messages pass unchanged."""
    if key is None or not isinstance(message, ReconfigCommand):
        return message
    return sign_command(message, key)


def _restore_commands(clients: KafkaClients, topic: str, controller: Controller, now: datetime,
                      lookback_s: float) -> int:
    """Read back the commands published in the last ``lookback_s`` into ``controller`` (see Controller.restore)."""
    consumer = clients.consumer("controller-restore")
    live = 0
    try:
        # no record that late, or no timestamp lookup: from the beginning (restore drops expired commands)
        tps = assign_all(consumer, {topic: Since(now - timedelta(seconds=lookback_s), otherwise="beginning")},
                         metadata_wait_s=0.0)
        ends = consumer.end_offsets(tps, timeout_ms=10_000)
        pending = {tp for tp in tps if consumer.position(tp) < ends.get(tp, 0)}
        deadline = time.monotonic() + 30
        while pending and time.monotonic() < deadline:
            for _tp, records in consumer.poll(timeout_ms=500, max_records=5000).items():
                for rec in records:
                    try:
                        live += controller.restore(decode(ReconfigCommand, rec.value), now=now)
                    except ContractError:
                        continue
            pending = {tp for tp in pending if consumer.position(tp) < ends.get(tp, 0)}
    except Exception:  # noqa: BLE001 - restoring is best effort; the gate still guards what follows
        log.exception("event=restore_failed topic=%s", topic)
    finally:
        consumer.close()
    return live


def _contained(controller: Controller, what: str, step: Callable[[], list[Outgoing]]) -> list[Outgoing]:
    """Run one decision step (holding the controller's lock); a bug in it is logged and counted, and the service
    keeps running."""
    try:
        with controller.lock:
            return step()
    except Exception:  # noqa: BLE001 - a live service must outlive one bad decision
        controller.metrics.decision_errors.labels(what).inc()
        log.exception("event=decision_failed step=%s", what)
        return []


def _dead_letter(topics: ControllerTopics, source: str, rec: object, exc: ContractError, now: datetime) -> Outgoing:
    raw: bytes = getattr(rec, "value", b"") or b""
    key = getattr(rec, "key", None)
    dl = DeadLetter(source_topic=source, partition=getattr(rec, "partition", None),
                    offset=getattr(rec, "offset", None), received_at=now, field=exc.field,
                    reason=f"controller: {exc.reason}"[:4000], raw_b64=base64.b64encode(raw[:100_000]).decode())
    return Outgoing(topics.deadletter, key.decode(errors="replace") if isinstance(key, bytes) else "", dl)


def publish_mode(clients: KafkaClients, mode: Mode, *, changed_by: str = "operator",
                 topic: str | None = None) -> ControllerMode:
    """Publish a ControllerMode message (``tapas controller mode ...``)."""
    msg = ControllerMode(mode=mode, changed_at=datetime.now(UTC), changed_by=changed_by)
    producer = clients.producer("controller-mode", acks=1, enable_idempotence=False)
    try:
        producer.send(topic or topic_for(ControllerMode), key=b"mode", value=msg.to_bytes()).get(timeout=10)
    finally:
        producer.close(timeout=5)
    return msg
