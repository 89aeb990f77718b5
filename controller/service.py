"""``tapas controller``: the live service around the pure decision core.

Two layers, both boring on purpose:

* :class:`Controller` — no Kafka. Messages in (``handle``), decisions out (``tick``),
  time passed in. It keeps the latest forecasts (:mod:`controller.snapshot_builder`),
  builds a :class:`~controller.core.snapshot.Snapshot`, calls the core
  (placement, routing, reconfiguration, emergency), passes every command through the
  :class:`~controller.safety.SafetyGate` and returns :class:`Outgoing` messages.
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
  ``stale_inputs``; no configuration that raises power is issued; placement requests are
  answered infeasible ("cannot vouch for headroom"). Emergency tightening still runs.
  When forecasts return, a ``forecasts_recovered`` event and normal operation.
* **Emergencies** (``power_emergency`` / ``cooling_failure`` events) are planned on
  arrival, within the domain's deadline, by ``controller.core.emergency``; the plan's
  commands carry ``trigger="emergency"``; while an emergency is active no change that
  raises power is issued in its domain; an ``emergency_plan`` event records what was
  relaxed. ``emergency_cleared`` (or the event's ``ends_at``) ends it.
* **Commands** carry deterministic ids (same decision, same planning epoch → same id),
  an expiry of ``command_ttl_s``, and pass the safety bounds; a refused one is reported
  as a ``safety_refused`` event and never published.
"""

from __future__ import annotations

import base64
import logging
import math
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Literal

import numpy as np
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
    InstanceWeight,
    PlacementCandidate,
    PlacementHint,
    PlacementRequest,
    ReconfigCommand,
    ReconfigParams,
    RoutingWeights,
    ServerForecast,
    decode,
    topic_for,
)
from controller.core import placement, reconfigure, routing
from controller.core.catalogue import Catalogue
from controller.core.snapshot import (
    ConfigChange,
    Emergency,
    EmergencyPlan,
    GpuCap,
    PlacementMargins,
    RoutingDecision,
    RoutingParams,
    Snapshot,
)
from controller.core.snapshot import PlacementRequest as CorePlacementRequest
from controller.core.snapshot import ReconfigParams as CoreReconfigParams
from controller.metrics import ControllerMetrics
from controller.safety import SafetyBounds, SafetyGate, make_command_id, refusal_event
from controller.signing import load_signing_key, sign_command
from controller.snapshot_builder import LiveState, build_snapshot
from foundation.settings import ControllerSettings, Settings, kafka_python_kwargs
from foundation.topology import Topology

log = logging.getLogger(__name__)

Mode = Literal["advisory", "enforce"]

FEEDBACK_MIN_STEP_W = 10.0
"""An emergency cap's limit must move by at least this much per GPU before a new command is issued."""


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
    capped_servers: set[str] = field(default_factory=set)
    renew_caps_at: datetime | None = None  # when the plan's caps must be re-issued to outlive max_command_ttl_s


def _ts(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, tz=UTC)


class Controller:
    """The controller's state machine: messages in, decisions out, no I/O and no clock reads."""

    def __init__(self, topology: Topology, catalogue: Catalogue, settings: ControllerSettings, *,
                 mode: Mode | None = None, topics: ControllerTopics | None = None,
                 metrics: ControllerMetrics | None = None, started_at: datetime,
                 routing_params: RoutingParams | None = None, margins: PlacementMargins | None = None,
                 reconfig_params: CoreReconfigParams | None = None) -> None:
        self.topology = topology
        self.catalogue = catalogue
        self.settings = settings
        self.mode: Mode = mode or settings.mode
        self.mode_pinned = mode is not None
        self.topics = topics or ControllerTopics()
        self.metrics = metrics or ControllerMetrics()
        self.started_at = started_at
        self.state = LiveState(topology)
        self.gate = SafetyGate(SafetyBounds.from_settings(settings))
        self.routing_params = routing_params or RoutingParams(valid_for_s=max(2.0, 2 * settings.tick_s))
        self.margins = margins or PlacementMargins()
        self.reconfig_params = reconfig_params or CoreReconfigParams(
            stale_after_s=settings.stale_after_s, command_ttl_s=settings.command_ttl_s,
            fast_interval_s=settings.reconfig_period_s, min_frequency_mhz=settings.min_frequency_mhz,
            home_layout=settings.home_layout)
        self.stale = False
        self.stale_since: datetime | None = None
        self.previous_routing: dict[str, RoutingDecision] = {}
        self.last_good_routing: dict[str, RoutingDecision] = {}
        self.emergencies: dict[str, ActiveEmergency] = {}
        self.intents: dict[str, tuple[str, datetime]] = {}
        """instance id -> (config id last commanded, when those commands expire)."""
        self._command_instance: dict[str, str] = {}
        self._enforced: dict[str, ReconfigCommand] = {}  # enforce commands published and still in the ledger
        """command id -> instance id, for commands behind an intent (bounded by forget_expired)."""
        self.last_reconfig_at: datetime | None = None
        self._snapshot: Snapshot | None = None
        self._snapshot_at: datetime | None = None
        self.num_refused = 0
        self.num_commands = 0
        self.metrics.mode_enforce.set(1.0 if self.mode == "enforce" else 0.0)

    # ------------------------------------------------------------------ input
    def handle(self, topic: str, message: Contract, *, now: datetime) -> list[Outgoing]:
        """Take one decoded input message; returns what it causes to be published right away."""
        if isinstance(message, ServerForecast):
            seen = len(self.state.unknown_server_ids)
            if not self.state.add_server_forecast(message, received_at=now) and seen < len(
                    self.state.unknown_server_ids) <= 10:
                log.warning("event=unknown_server server=%s (not in the topology: check TAPAS_CLUSTER_FILE or "
                            "--servers)", message.server_id)
            self._snapshot = None
            return []
        if isinstance(message, DomainForecast):
            self.state.add_domain_forecast(message)
            self._snapshot = None
            return []
        if isinstance(message, GpuSample):
            n = len(message.gpus)
            power = message.gpu_power_w
            self.state.add_workload(message.server_id, message.workload,
                                    gpu_power_w=power / n if power is not None else None, sampled_at=message.sampled_at)
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
        log.info("event=mode_changed from=%s to=%s by=%s", old, msg.mode, msg.changed_by)
        return [self._event("mode_changed", "info", now, detail=f"controller mode {old} -> {msg.mode} "
                                                              f"by {msg.changed_by}")] + self._reissue_plans(now)

    def _reissue_plans(self, now: datetime) -> list[Outgoing]:
        """After a mode switch, re-issue the active emergencies' caps in the new mode (new ids).

        Their commands went out in the old mode: switching advisory -> enforce mid-emergency
        otherwise never enforced the plan.
        """
        out: list[Outgoing] = []
        for active in self.emergencies.values():
            if active.plan is not None and active.plan.caps:
                active.renew_caps_at = None
                out += self._issue_caps(active, [replace(c, issued_at_s=now.timestamp()) for c in active.plan.caps],
                                        now)
        return out

    # ------------------------------------------------------------------ snapshot
    def snapshot(self, now: datetime) -> Snapshot:
        """The current snapshot (rebuilt when new data arrived or a tick passed)."""
        if (self._snapshot is None or self._snapshot_at is None
                or (now - self._snapshot_at).total_seconds() >= self.settings.tick_s):
            self._snapshot = build_snapshot(self.state, self.catalogue, now=now)
            self._snapshot_at = now
        return self._snapshot

    # ------------------------------------------------------------------ placement
    def place(self, req: PlacementRequest, *, now: datetime) -> Outgoing:
        """Answer one placement request with ranked hints (infeasible while forecasts are stale)."""
        advisory = self.mode == "advisory"
        age_s = self.state.forecast_age_s(now)
        if age_s > self.settings.stale_after_s:
            hint = PlacementHint(
                request_id=req.request_id, issued_at=now, feasible=False, candidates=[], advisory=advisory,
                reason=(f"forecasts stale ({_age(age_s)}): cannot vouch for any server's thermal or power "
                        f"headroom; no placement hinted until forecasts return"))
            self.metrics.placements.labels("false").inc()
            return Outgoing(self.topics.placement_hints, req.request_id, hint)
        snap = self.snapshot(now)
        core_req = CorePlacementRequest(
            request_id=req.request_id, vm_kind=req.vm_kind, num_gpus=req.num_gpus,
            gpu_power_w=req.expected_power_w_per_gpu, vm_class=req.vm_class,
            expected_lifetime_s=req.expected_lifetime_s, endpoint_id=req.endpoint_id)
        decision = placement.rank_servers(snap, core_req, now_s=snap.now_s, margins=self.margins)
        hint = PlacementHint(
            request_id=req.request_id, issued_at=now, feasible=decision.feasible, advisory=advisory,
            reason=decision.reason[:2000],
            candidates=[PlacementCandidate(
                server_id=c.server_id, rank=c.rank, score=_finite(c.score),
                predicted_peak_gpu_temp_c=_finite(c.predicted_peak_gpu_temp_c),
                thermal_headroom_c=_finite(c.thermal_headroom_c),
                row_power_headroom_w=_finite(c.row_power_headroom_w),
                zone_heat_headroom_w=_finite(c.zone_heat_headroom_w), free_gpus=c.free_gpus)
                for c in decision.candidates])
        self.metrics.placements.labels("true" if decision.feasible else "false").inc()
        return Outgoing(self.topics.placement_hints, req.request_id, hint)

    # ------------------------------------------------------------------ tick
    def tick(self, now: datetime) -> list[Outgoing]:
        """One decision tick: staleness, emergencies' end, routing weights, and (every period) reconfiguration."""
        t0 = time.perf_counter()
        out: list[Outgoing] = []
        out += self._check_staleness(now)
        out += self._expire_emergencies(now)
        out += self._renew_emergency_caps(now)
        snap = self.snapshot(now)
        out += self._routing(snap, now)
        due = self.last_reconfig_at is None or (
            (now - self.last_reconfig_at).total_seconds() >= self.settings.reconfig_period_s)
        if due and len(snap.instances) > 0:
            self.last_reconfig_at = now
            out += self._reconfigure(snap, now)
        if due and self.emergencies:
            out += self._emergency_feedback(snap, now)
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

    # ------------------------------------------------------------------ routing
    def _routing(self, snap: Snapshot, now: datetime) -> list[Outgoing]:
        out: list[Outgoing] = []
        present = set(snap.instances.endpoint_ids)
        for ep in snap.endpoint_ids:
            if ep not in present:
                continue
            # While stale the core returns the capacity-proportional target unsmoothed; _decay_to blends.
            decision = routing.routing_weights(
                snap, ep, previous=None if self.stale else self.previous_routing.get(ep), now_s=snap.now_s,
                params=self.routing_params,
                catalogue=self.catalogue, stale_after_s=self.settings.stale_after_s)
            if self.stale:
                decision = self._decay_to(decision, now)
            else:
                self.last_good_routing[ep] = decision
            self.previous_routing[ep] = decision
            self.metrics.observe_routing(decision)
            out.append(Outgoing(self.topics.routing_weights, ep, self._weights_message(decision, now)))
        return out

    def _decay_to(self, fallback: RoutingDecision, now: datetime) -> RoutingDecision:
        """Last good weights decaying toward the capacity-proportional fallback (time constant stale_decay_s)."""
        good = self.last_good_routing.get(fallback.endpoint_id)
        if good is None or self.stale_since is None:
            return fallback
        elapsed_s = max(0.0, (now - self.stale_since).total_seconds())
        keep = math.exp(-elapsed_s / self.settings.stale_decay_s)
        last = dict(zip(good.instance_ids, good.weights, strict=True))
        prev = np.asarray([last.get(i, w) for i, w in zip(fallback.instance_ids, fallback.weights, strict=True)])
        w = keep * prev + (1.0 - keep) * fallback.weights
        w = w / w.sum() if w.sum() > 0 else fallback.weights
        return replace(fallback, weights=w, reason=(
            f"STALE forecasts for {elapsed_s:.0f}s: last good weights decaying to capacity-proportional "
            f"({keep:.0%} last good); " + fallback.reason)[:2000])

    def _weights_message(self, d: RoutingDecision, now: datetime) -> RoutingWeights:
        snap_ids = self.snapshot(now).server_ids
        inst = self.snapshot(now).instances
        w = np.clip(d.weights, 0.0, 1.0)
        w = w / w.sum()
        lp = np.clip(d.long_prompt_weights, 0.0, 1.0)
        return RoutingWeights(
            endpoint_id=d.endpoint_id, issued_at=now,
            valid_until=now + timedelta(seconds=self.routing_params.valid_for_s),
            advisory=self.mode == "advisory", stale_inputs=self.stale or d.stale_inputs, reason=d.reason[:2000],
            weights=[InstanceWeight(
                instance_id=iid, server_id=snap_ids[int(inst.server_index[int(d.instance_index[j])])],
                weight=float(w[j]), state="drain" if d.draining[j] else "active",
                thermal_headroom_c=_finite(d.thermal_headroom_c[j]),
                power_headroom_w=_finite(d.power_headroom_w[j]),
                capacity_tokens_per_s=max(0.0, _finite(d.capacity_tokens_per_s[j])),
                long_prompt_weight=float(lp[j])) for j, iid in enumerate(d.instance_ids)])

    # ------------------------------------------------------------------ reconfiguration
    def _reconfigure(self, snap: Snapshot, now: datetime) -> list[Outgoing]:
        changes = reconfigure.plan_reconfiguration(
            snap, self.catalogue, now_s=snap.now_s, params=self.reconfig_params,
            stale_after_s=self.settings.stale_after_s)
        kept = [c for c in changes if not self._blocked(c, snap)]
        return self._issue_changes(kept, now)

    def _blocked(self, change: ConfigChange, snap: Snapshot) -> bool:
        """No change that raises power while forecasts are stale or while its domain is in an emergency."""
        if not raises_power(change, snap, self.catalogue):
            return False
        if self.stale:
            return True
        srv = change.server_index
        for em in self.emergencies.values():
            e = em.emergency
            if e.domain_kind == "cluster":
                return True
            if e.domain_kind == "row" and int(snap.server_row[srv]) == e.domain_index:
                return True
            if e.domain_kind == "zone" and int(snap.server_zone[srv]) == e.domain_index:
                return True
        return False

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
        """React to an emergency (plan now) or its end; other events are informational."""
        if ev.event_kind == "emergency_cleared":
            return self._clear(ev, now)
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
        active = ActiveEmergency(em, ev)
        self.emergencies[ev.event_id] = active
        return self._plan(active, now)

    def _plan(self, active: ActiveEmergency, now: datetime) -> list[Outgoing]:
        from controller.core import emergency as core_emergency

        snap = self.snapshot(now)
        plan = core_emergency.plan_emergency(snap, self.catalogue, active.emergency, now_s=snap.now_s,
                                             min_frequency_mhz=self.settings.min_frequency_mhz)
        active.plan = plan
        out = self._issue_changes(plan.changes, now)
        out += self._issue_caps(active, plan.caps, now)
        relaxed = "; ".join(f"{r.subject}: {r.promise} until {_ts(r.until_s).isoformat()} "
                            f"(quality cost {r.quality_cost:.3f}, performance cost {r.performance_cost_frac:.0%})"
                            for r in plan.relaxed)
        e = active.event
        detail = (f"{e.event_kind} {e.domain_kind}/{e.domain_id}: {len(plan.changes)} SaaS changes, "
                  f"{len(plan.caps)} IaaS caps, predicted {plan.predicted_power_w:.0f} W vs budget "
                  f"{plan.budget_w:.0f} W ({'meets' if plan.meets_budget else 'DOES NOT meet'} it) by "
                  f"{_ts(plan.effective_by_s).isoformat()}; relaxed: {relaxed or 'nothing'}; {plan.reason}")
        out.append(self._event("emergency_plan", "critical" if not plan.meets_budget else "warning", now,
                               domain_kind=e.domain_kind, domain_id=e.domain_id, detail=detail[:4000]))
        return out

    def _emergency_feedback(self, snap: Snapshot, now: datetime) -> list[Outgoing]:
        """Close the loop on active plans' IaaS caps from what the rows and inlets measure now.

        The same core function as the simulator's ``tapas`` policy, ``feedback_caps``: a power plan's
        surplus goes back to (or more is taken from) the capped VMs, and VMs that the measured inlet of
        a failed zone now puts over the slowdown line are capped. Only
        limits that moved by at least ``FEEDBACK_MIN_STEP_W`` become commands; a lifted cap becomes a
        limit at the GPU's TDP (the server's other caps stay; all are reverted when the emergency ends).
        """
        from controller.core import emergency as core_emergency

        out: list[Outgoing] = []
        for active in self.emergencies.values():
            plan = active.plan
            if plan is None:
                continue
            # The live snapshot shows nominal budgets; the plan was made against the reduced ones.
            new = core_emergency.feedback_caps(
                snap, plan, now_s=snap.now_s, budget_w=core_emergency.emergency_budget_w(snap.row_budget_w, plan.emergency))
            if new is None:
                continue
            old = {c.vm_id: c for c in plan.caps}
            kept = {c.vm_id for c in new}
            issue: list[GpuCap] = []
            in_force: list[GpuCap] = []
            for c in new:
                prev = old.get(c.vm_id)
                moved = prev is None or prev.power_limit_w is None or c.power_limit_w is None or abs(
                    prev.power_limit_w - c.power_limit_w) >= FEEDBACK_MIN_STEP_W
                in_force.append(c if moved else prev)  # type: ignore[arg-type]
                if moved:
                    issue.append(c)
            for c in plan.caps:
                if c.vm_id not in kept:
                    tdp = float(snap.gpu_tdp_w[c.server_index])
                    issue.append(replace(c, power_limit_w=tdp, issued_at_s=snap.now_s,
                                         reason=f"{c.reason}; feedback: room again, limit back to TDP {tdp:.0f} W"))
            out += self._issue_caps(active, issue, now)
            active.plan = replace(plan, caps=tuple(in_force))
        return out

    def _issue_caps(self, active: ActiveEmergency, caps: Iterable[GpuCap], now: datetime) -> list[Outgoing]:
        """Host commands for an emergency's IaaS caps, through the safety gate; remembers the servers to revert."""
        out: list[Outgoing] = []
        for cap in caps:
            for cmd in cap_to_commands(cap, mode=self.mode, now=now, max_ttl_s=self.settings.max_command_ttl_s,
                                       ends_at=active.event.ends_at):
                sent = self._admit(cmd, now)
                if any(o.topic == self.topics.commands for o in sent):
                    active.capped_servers.add(cap.server_id)
                    if active.event.ends_at is None or cmd.expires_at < active.event.ends_at:
                        at = cmd.expires_at - (cmd.expires_at - cmd.issued_at) / 3
                        active.renew_caps_at = at if active.renew_caps_at is None else min(active.renew_caps_at, at)
                out += sent
        return out

    def _renew_emergency_caps(self, now: datetime) -> list[Outgoing]:
        """Re-issue an emergency's IaaS caps (new ids) when a third of their life is left and the emergency lasts.

        Commands live at most ``max_command_ttl_s`` (900 s); without this a one-hour power
        emergency's caps lapsed at 900 s while the controller still listed them in force.
        """
        out: list[Outgoing] = []
        for active in self.emergencies.values():
            if active.plan is None or active.renew_caps_at is None or now < active.renew_caps_at:
                continue
            active.renew_caps_at = None
            caps = [replace(c, issued_at_s=now.timestamp()) for c in active.plan.caps]
            log.info("event=emergency_caps_renewed id=%s caps=%d", active.event.event_id, len(caps))
            out += self._issue_caps(active, caps, now)
        return out

    def _clear(self, ev: ControlEvent, now: datetime) -> list[Outgoing]:
        ended = [k for k, a in self.emergencies.items()
                 if (a.event.domain_kind, a.event.domain_id) == (ev.domain_kind, ev.domain_id)]
        return [o for k in ended for o in self._end(k, now)]

    def _expire_emergencies(self, now: datetime) -> list[Outgoing]:
        ended = [k for k, a in self.emergencies.items() if a.event.ends_at is not None and a.event.ends_at <= now]
        return [o for k in ended for o in self._end(k, now)]

    def _end(self, key: str, now: datetime) -> list[Outgoing]:
        active = self.emergencies.pop(key)
        out: list[Outgoing] = []
        for sid in sorted(active.capped_servers):
            cmd = ReconfigCommand(
                command_id=make_command_id(target=sid, action="revert", params=ReconfigParams(),
                                           epoch=int(now.timestamp())),
                issued_at=now, expires_at=now + timedelta(seconds=self.settings.command_ttl_s), server_id=sid,
                action="revert", reason=f"emergency {key} over: lift its IaaS caps", trigger="emergency",
                mode=self.mode, layer="host")
            out += self._admit(cmd, now)
        log.info("event=emergency_ended id=%s reverted=%d", key, len(active.capped_servers))
        return out

    # ------------------------------------------------------------------ helpers
    def _event(self, kind: str, severity: str, now: datetime, *, domain_kind: str = "cluster",
               domain_id: str = "cluster", detail: str = "") -> Outgoing:
        ev = ControlEvent(event_id=f"ctl-{kind}-{int(now.timestamp() * 1000)}"[:64], event_kind=kind,  # type: ignore[arg-type]
                          severity=severity, occurred_at=now, domain_kind=domain_kind,  # type: ignore[arg-type]
                          domain_id=domain_id, detail=detail)
        return Outgoing(self.topics.events, domain_id, ev)


# ---------------------------------------------------------------------- pure translations


def raises_power(change: ConfigChange, snap: Snapshot, catalogue: Catalogue) -> bool:
    """True when the target configuration draws more per-GPU power at the instance's load than the current one."""
    try:
        a = catalogue.option(change.from_config_id)
        b = catalogue.option(change.to_config_id)
    except KeyError:
        return True
    i = change.instance_index
    load = float(snap.instances.load_tokens_per_s[i]) if 0 <= i < len(snap.instances) else 0.0
    pf = float(snap.instances.prefill_frac[i]) if 0 <= i < len(snap.instances) else 0.5
    pa = a.gpu_power_w(pf * load, (1 - pf) * load)
    pb = b.gpu_power_w(pf * min(load, b.capacity_tokens_per_s_at_slo), (1 - pf) * min(load, b.capacity_tokens_per_s_at_slo))
    return pb > pa + 1e-6 or b.frequency_cap_mhz > a.frequency_cap_mhz


def change_to_commands(change: ConfigChange, catalogue: Catalogue, *, mode: Mode, now: datetime, ttl_s: float,
                       epoch_s: float) -> list[ReconfigCommand]:
    """The commands that carry one configuration change.

    The host command (frequency cap, applied by ``tapas agent``) and, when the batch size
    or the weight layout changes, one serving-layer command carrying the whole target
    configuration (``params.config_id`` plus every knob). For a slow change its action
    names the heaviest knob (variant > precision > tensor parallelism). Contract for
    the serving layer: docs/serving-commands.md.
    """
    a = catalogue.option(change.from_config_id)
    b = catalogue.option(change.to_config_id)
    expires_s = min(change.expires_at_s, now.timestamp() + ttl_s) if change.expires_at_s > now.timestamp() \
        else now.timestamp() + ttl_s
    expires_at = _ts(expires_s)
    epoch = int(change.issued_at_s // max(epoch_s, 1e-3))
    common = dict(issued_at=now, expires_at=expires_at, server_id=change.server_id, instance_id=change.instance_id,
                  trigger=change.trigger[:64], headroom=_finite(change.headroom), mode=mode)
    reason = f"{change.from_config_id} -> {change.to_config_id}: {change.reason}"[:2000]
    out: list[ReconfigCommand] = []
    if b.frequency_cap_mhz != a.frequency_cap_mhz:
        p = ReconfigParams(frequency_cap_mhz=b.frequency_cap_mhz, config_id=b.config_id)
        out.append(ReconfigCommand(command_id=make_command_id(target=change.instance_id, action="set_frequency_cap",
                                                              params=p, epoch=epoch),
                                   action="set_frequency_cap", params=p, reason=reason, layer="host",
                                   **common))  # type: ignore[arg-type]
    action: str | None = None
    if b.model_variant != a.model_variant:
        action = "set_model_variant"
    elif b.precision != a.precision:
        action = "set_precision"
    elif b.tensor_parallelism != a.tensor_parallelism:
        action = "set_tensor_parallelism"
    elif b.max_batch != a.max_batch:
        action = "set_max_batch"
    if action is not None:
        p = ReconfigParams(max_batch=b.max_batch, tensor_parallelism=b.tensor_parallelism,
                           precision=b.precision if b.precision in ("fp16", "bf16", "fp8", "int8", "int4") else None,  # type: ignore[arg-type]
                           model_variant=b.model_variant[:64], config_id=b.config_id,
                           frequency_cap_mhz=b.frequency_cap_mhz)
        out.append(ReconfigCommand(command_id=make_command_id(target=change.instance_id, action=action, params=p,
                                                              epoch=epoch),
                                   action=action, params=p, reason=reason, layer="serving",  # type: ignore[arg-type]
                                   **common))  # type: ignore[arg-type]
    return out


def cap_to_commands(cap: GpuCap, *, mode: Mode, now: datetime, max_ttl_s: float,
                    ends_at: datetime | None) -> list[ReconfigCommand]:
    """Host commands for an emergency cap on a server's GPUs (power limit and/or frequency cap)."""
    end_s = cap.expires_at_s if cap.expires_at_s > now.timestamp() else (
        ends_at.timestamp() if ends_at is not None else now.timestamp() + max_ttl_s)
    expires_at = _ts(min(end_s, now.timestamp() + max_ttl_s))
    out: list[ReconfigCommand] = []
    target = cap.vm_id or cap.server_id
    for action, p in (("set_power_limit", ReconfigParams(power_limit_w=cap.power_limit_w)
                       if cap.power_limit_w is not None else None),
                      ("set_frequency_cap", ReconfigParams(frequency_cap_mhz=cap.frequency_cap_mhz)
                       if cap.frequency_cap_mhz is not None else None)):
        if p is None:
            continue
        out.append(ReconfigCommand(
            command_id=make_command_id(target=target, action=action, params=p, epoch=int(cap.issued_at_s)),
            issued_at=now, expires_at=expires_at, server_id=cap.server_id, instance_id=cap.vm_id,
            action=action, params=p, reason=cap.reason[:2000], trigger="emergency", mode=mode,  # type: ignore[arg-type]
            layer="host"))
    return out


def to_emergency(ev: ControlEvent, topology: Topology) -> Emergency | None:
    """The core's Emergency for an event, mapping PDU/rack/server domains to their row or zone."""
    kind: Literal["power", "cooling"] = "power" if ev.event_kind == "power_emergency" else "cooling"
    dk, did = ev.domain_kind, ev.domain_id
    row_id: str | None = None
    zone_id: str | None = None
    if dk == "cluster":
        return Emergency(event_id=ev.event_id, kind=kind, domain_kind="cluster", domain_index=0,
                         started_at_s=ev.occurred_at.timestamp(),
                         ends_at_s=ev.ends_at.timestamp() if ev.ends_at else None, budget_frac=ev.budget_frac,
                         supply_temp_rise_c=ev.supply_temp_rise_c)
    if dk == "row":
        row_id = did
    elif dk == "zone":
        zone_id = did
    elif dk in ("rack", "pdu"):
        rack = next((r for r in topology.racks if did in (r.rack_id, r.pdu_id)), None)
        if rack is not None:
            row_id, zone_id = rack.row_id, rack.zone_id
    elif dk == "server" and did in topology.by_id:
        s = topology.by_id[did]
        row_id, zone_id = s.row_id, s.zone_id
    if kind == "power" and row_id in topology.row_ids:
        return Emergency(event_id=ev.event_id, kind="power", domain_kind="row",
                         domain_index=topology.row_ids.index(row_id), started_at_s=ev.occurred_at.timestamp(),
                         ends_at_s=ev.ends_at.timestamp() if ev.ends_at else None, budget_frac=ev.budget_frac)
    if kind == "cooling":
        if zone_id is None and row_id is not None:
            zone_id = next((r.zone_id for r in topology.rows if r.row_id == row_id), None)
        if zone_id in topology.zone_ids:
            return Emergency(event_id=ev.event_id, kind="cooling", domain_kind="zone",
                             domain_index=topology.zone_ids.index(zone_id), started_at_s=ev.occurred_at.timestamp(),
                             ends_at_s=ev.ends_at.timestamp() if ev.ends_at else None,
                             supply_temp_rise_c=ev.supply_temp_rise_c)
    return None


def _finite(x: float) -> float:
    v = float(x)
    return v if math.isfinite(v) else (1e9 if v > 0 else -1e9)


def _age(age_s: float) -> str:
    return "never received" if age_s >= 1e8 else f"{age_s:.0f} s"


# ---------------------------------------------------------------------- the Kafka shell


def run_service(settings: Settings, topology: Topology, catalogue: Catalogue, *, stop: threading.Event,
                mode: Mode | None = None, topics: ControllerTopics | None = None,
                metrics: ControllerMetrics | None = None, clock: Callable[[], datetime] | None = None,
                on_ready: Callable[[Controller], None] | None = None) -> Controller:
    """Run the controller until ``stop`` is set; returns the final Controller (for tests and reports).

    The consumer is ``assign()``-ed to every partition of the input topics (no group
    join): forecasts, samples and requests from their end; events from
    ``max_command_ttl_s`` ago (an emergency announced just before a restart is still
    planned); the mode topic from its beginning (the latest retained mode).
    """
    from kafka import KafkaConsumer, TopicPartition

    from ingest.producer import build_producer

    now_fn = clock or (lambda: datetime.now(UTC))
    topics = topics or ControllerTopics()
    cs = settings.controller
    kw = kafka_python_kwargs(settings.kafka)
    controller = Controller(topology, catalogue, cs, mode=mode, topics=topics, metrics=metrics, started_at=now_fn())
    signing_key = load_signing_key(cs)
    if signing_key is None:
        log.warning("event=commands_unsigned reason='no controller.command_signing_key(_file)': agents in enforce "
                    "mode refuse unsigned commands")
    consumer = KafkaConsumer(**kw, client_id=f"{settings.kafka.client_id}-controller", enable_auto_commit=False,
                             group_id=None)
    # Outputs go through the collectors' buffered producer: bounded FIFO, in-order retries across a
    # broker outage, so a hint, weight or command decided while the broker is away is delivered when it
    # returns (agents drop commands that expired meanwhile) instead of crashing the loop.
    producer = build_producer(settings, source="controller", client_id=f"{settings.kafka.client_id}-controller")
    metrics_server = None
    try:
        tps: list[TopicPartition] = []
        for topic in topics.inputs:
            parts = consumer.partitions_for_topic(topic) or {0}
            tps += [TopicPartition(topic, p) for p in sorted(parts)]
        consumer.assign(tps)
        consumer.seek_to_end()
        mode_tps = [tp for tp in tps if tp.topic == topics.mode]
        consumer.seek_to_beginning(*mode_tps)
        event_tps = [tp for tp in tps if tp.topic == topics.events]
        since_ms = int((now_fn().timestamp() - cs.max_command_ttl_s) * 1000)
        try:
            found = consumer.offsets_for_times({tp: since_ms for tp in event_tps})
        except Exception:  # noqa: BLE001 - a broker without timestamp lookup: start at the end
            found = {}
        for tp, off in found.items():
            if off is not None:
                consumer.seek(tp, off.offset)
        for tp in tps:  # resolve the lazy seeks now, so nothing sent after on_ready() is skipped
            consumer.position(tp)
        restored = _restore_commands(kw, topics.commands, controller, now_fn(), cs.max_command_ttl_s)
        if restored:
            log.info("event=commands_restored live=%d", restored)
        if cs.metrics_port and metrics is None:
            metrics_server = controller.metrics.serve(cs.metrics_port)
        log.info("event=controller_started mode=%s servers=%d endpoints=%d", controller.mode, topology.num_servers,
                 len(catalogue.endpoint_ids))
        if on_ready is not None:
            on_ready(controller)
        next_tick = time.monotonic()
        while not stop.is_set():
            wait_ms = max(0, int((next_tick - time.monotonic()) * 1000))
            batches = consumer.poll(timeout_ms=min(wait_ms, 200), max_records=2000)
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
    return controller


def signed(message: Contract, key: Ed25519PrivateKey | None) -> Contract:
    """Sign a command on its way out (the one place commands are signed); other messages pass unchanged."""
    if key is None or not isinstance(message, ReconfigCommand):
        return message
    return sign_command(message, key)


def _restore_commands(kw: dict[str, object], topic: str, controller: Controller, now: datetime,
                      lookback_s: float) -> int:
    """Read back the commands published in the last ``lookback_s`` into ``controller`` (see Controller.restore)."""
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(**kw, enable_auto_commit=False, group_id=None)
    live = 0
    try:
        tps = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or {0})]
        consumer.assign(tps)
        ends = consumer.end_offsets(tps, timeout_ms=10_000)
        try:
            starts = consumer.offsets_for_times({tp: int((now.timestamp() - lookback_s) * 1000) for tp in tps})
        except Exception:  # noqa: BLE001 - no timestamp lookup: read from the beginning
            starts = {}
        for tp in tps:
            off = starts.get(tp)
            if off is None:
                consumer.seek_to_beginning(tp)
            else:
                consumer.seek(tp, off.offset)
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
    """Run one decision step; a bug in it is logged and counted, and the service keeps running."""
    try:
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


def publish_mode(settings: Settings, mode: Mode, *, changed_by: str = "operator", topic: str | None = None) -> ControllerMode:
    """Publish a ControllerMode message (``tapas controller mode ...``)."""
    from kafka import KafkaProducer

    msg = ControllerMode(mode=mode, changed_at=datetime.now(UTC), changed_by=changed_by)
    producer = KafkaProducer(**kafka_python_kwargs(settings.kafka), acks=1, enable_idempotence=False)
    try:
        producer.send(topic or topic_for(ControllerMode), key=b"mode", value=msg.to_bytes()).get(timeout=10)
    finally:
        producer.close(timeout=5)
    return msg
