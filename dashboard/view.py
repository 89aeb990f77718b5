"""The dashboard's bounded, in-memory view of the live streams, and the Kafka consumer that feeds it.

The page never reads raw history: a background :class:`ViewConsumer` decodes each
message once and folds it into a :class:`DashboardView`, which keeps only

* the latest :class:`~contracts.ServerForecast` per server plus a short per-server
  history (actual against forecast) and the last per-GPU samples,
* the latest :class:`~contracts.DomainForecast` per row/PDU/zone with a bounded history,
* a ring buffer of control actions (placement hints, routing-weight *changes*,
  reconfiguration commands, control events) with their reasons,
* the active cooling/power emergencies,
* announced model versions and the forecast accuracy (MAE per horizon over the last
  hour), computed by matching each forecast to the actual observed at its target time.

Every buffer has a fixed bound, so memory stays flat however long the page runs.
Page callbacks call :meth:`DashboardView.snapshot` (a cheap copy under a lock) and
render from it.
"""

from __future__ import annotations

import logging
import re
import threading
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Literal

from contracts import (
    Contract,
    ContractError,
    ControlEvent,
    DomainForecast,
    GpuSample,
    ModelAnnouncement,
    PlacementHint,
    ReconfigCommand,
    RoutingWeights,
    ServerForecast,
    decode,
    topic_for,
)
from foundation.health import Readiness, readiness
from foundation.kafka import KafkaClients, Last, Start, assign_all

if TYPE_CHECKING:
    from foundation.topology import Topology

log = logging.getLogger(__name__)

ActionKind = Literal["placement", "routing", "reconfig", "event"]
EMERGENCY_KINDS = frozenset({"cooling_failure", "power_emergency"})


def natural_key(text: str) -> tuple[object, ...]:
    """Sort key that orders ``rack2`` before ``rack10``."""
    return tuple(int(p) if p.isdigit() else p for p in re.split(r"(\d+)", text))


# --------------------------------------------------------------------------- floor layout


@dataclass
class FloorLayout:
    """Where servers sit: rows → racks → servers, with each rack's zone and PDU.

    Built from the cluster topology when the dashboard knows it, and completed from the
    ``rack_id``/``row_id``/``zone_id``/``pdu_id`` fields of forecasts otherwise, so the
    floor map works against any pipeline that tags its forecasts.
    """

    racks_by_row: dict[str, list[str]] = field(default_factory=dict)
    servers_by_rack: dict[str, list[str]] = field(default_factory=dict)
    rack_row: dict[str, str] = field(default_factory=dict)
    rack_zone: dict[str, str] = field(default_factory=dict)
    rack_pdu: dict[str, str] = field(default_factory=dict)
    server_rack: dict[str, str] = field(default_factory=dict)
    #: Bumped on every change so renderers can cache what they derive from the layout.
    version: int = 0

    @classmethod
    def from_topology(cls, topology: Topology) -> FloorLayout:
        """The full floor of a :class:`foundation.topology.Topology`, in its own order."""
        layout = cls()
        for row in topology.rows:
            layout.racks_by_row[row.row_id] = list(row.rack_ids)
        for rack in topology.racks:
            layout.servers_by_rack[rack.rack_id] = list(rack.server_ids)
            layout.rack_row[rack.rack_id] = rack.row_id
            layout.rack_zone[rack.rack_id] = rack.zone_id
            layout.rack_pdu[rack.rack_id] = rack.pdu_id
            for sid in rack.server_ids:
                layout.server_rack[sid] = rack.rack_id
        layout.version = 1
        return layout

    def learn(self, server_id: str, rack_id: str | None, row_id: str | None, zone_id: str | None,
              pdu_id: str | None) -> None:
        """Add a server seen in a forecast that the layout did not know yet."""
        if server_id in self.server_rack or rack_id is None:
            return
        row = row_id or "row?"
        if rack_id not in self.servers_by_rack:
            self.servers_by_rack[rack_id] = []
            racks = self.racks_by_row.setdefault(row, [])
            racks.append(rack_id)
            racks.sort(key=natural_key)
            self.rack_row[rack_id] = row
            if zone_id:
                self.rack_zone[rack_id] = zone_id
            if pdu_id:
                self.rack_pdu[rack_id] = pdu_id
        servers = self.servers_by_rack[rack_id]
        servers.append(server_id)
        servers.sort(key=natural_key)
        self.server_rack[server_id] = rack_id
        self.version += 1

    @property
    def rows(self) -> list[str]:
        """Row ids in floor order."""
        return sorted(self.racks_by_row, key=natural_key)

    def racks_in(self, domain_kind: str, domain_id: str) -> set[str]:
        """Racks affected by an event on a domain (zone, row, PDU, rack, server or cluster)."""
        if domain_kind == "cluster":
            return set(self.servers_by_rack)
        if domain_kind == "zone":
            return {r for r, z in self.rack_zone.items() if z == domain_id}
        if domain_kind == "row":
            return set(self.racks_by_row.get(domain_id, ()))
        if domain_kind == "pdu":
            return {r for r, p in self.rack_pdu.items() if p == domain_id}
        if domain_kind == "rack":
            return {domain_id} if domain_id in self.servers_by_rack else set()
        if domain_kind == "server":
            rack = self.server_rack.get(domain_id)
            return {rack} if rack else set()
        return set()

    def copy(self) -> FloorLayout:
        """An independent copy (renderers read it without the view's lock)."""
        return FloorLayout(
            racks_by_row={k: list(v) for k, v in self.racks_by_row.items()},
            servers_by_rack={k: list(v) for k, v in self.servers_by_rack.items()},
            rack_row=dict(self.rack_row), rack_zone=dict(self.rack_zone), rack_pdu=dict(self.rack_pdu),
            server_rack=dict(self.server_rack), version=self.version,
        )


# --------------------------------------------------------------------------- records kept


@dataclass(frozen=True)
class ServerPoint:
    """One forecast of one server, reduced to what the drill-down plots."""

    at_s: float
    gpu_temp_c: float
    power_w: float
    #: (horizon_s, temp, temp_lo, temp_hi, power, power_lo, power_hi) per horizon.
    horizons: tuple[tuple[float, float, float, float, float, float, float], ...]


@dataclass(frozen=True)
class GpuPoint:
    """One per-GPU sample of a server."""

    at_s: float
    temps_c: tuple[float | None, ...]
    powers_w: tuple[float | None, ...]


@dataclass(frozen=True)
class DomainPoint:
    """One aggregate reading of a row, PDU or zone."""

    at_s: float
    power_w: float
    power_limit_w: float | None
    max_inlet_temp_c: float | None
    inlet_limit_c: float | None


@dataclass(frozen=True)
class ActionEntry:
    """One line of the actions log: what TAPAS did, where, why and at which headroom."""

    at: datetime
    kind: ActionKind
    target: str
    row_id: str | None
    summary: str
    reason: str
    headroom: str


@dataclass(frozen=True)
class Emergency:
    """An active cooling or power emergency and the racks it touches."""

    event_id: str
    event_kind: str
    severity: str
    domain_kind: str
    domain_id: str
    occurred_at: datetime
    ends_at: datetime | None
    detail: str
    racks: frozenset[str]


@dataclass(frozen=True)
class HorizonAccuracy:
    """Forecast error at one horizon over the accuracy window."""

    horizon_s: float
    num_matched: int
    temp_mae_c: float | None
    power_mae_w: float | None


@dataclass(frozen=True)
class ViewSnapshot:
    """An immutable copy of the view for one page update."""

    taken_at: datetime
    last_message_at: datetime | None
    stale_since: datetime | None
    data_clock: datetime | None
    layout: FloorLayout
    servers: dict[str, ServerForecast]
    domains: dict[tuple[str, str], DomainForecast]
    actions: list[ActionEntry]
    emergencies: list[Emergency]
    models: dict[str, ModelAnnouncement]
    forecast_model_version: str | None
    accuracy: list[HorizonAccuracy]
    num_messages: int
    num_rejected: int
    #: Actions logged since start (the page re-renders the log only when it grows).
    num_actions: int = 0

    @property
    def highlighted_racks(self) -> set[str]:
        """Racks inside any active emergency's domain."""
        out: set[str] = set()
        for e in self.emergencies:
            out |= e.racks
        return out


@dataclass(frozen=True)
class ServerDetail:
    """History of one server for the drill-down."""

    server_id: str
    forecasts: list[ServerPoint]
    gpus: list[GpuPoint]
    latest_forecast: ServerForecast | None
    latest_sample: GpuSample | None


# --------------------------------------------------------------------------- accuracy


class _WindowMae:
    """Mean absolute error over a sliding time window, O(1) per update and per read."""

    def __init__(self, window_s: float, max_points: int) -> None:
        self.window_s = window_s
        self.max_points = max_points
        self.points: deque[tuple[float, float, float]] = deque()
        self.sum_temp = 0.0
        self.sum_power = 0.0

    def add(self, at_s: float, temp_err_c: float, power_err_w: float) -> None:
        self.points.append((at_s, temp_err_c, power_err_w))
        self.sum_temp += temp_err_c
        self.sum_power += power_err_w
        self.evict(at_s)

    def evict(self, now_s: float) -> None:
        while self.points and (self.points[0][0] < now_s - self.window_s or len(self.points) > self.max_points):
            _, t, p = self.points.popleft()
            self.sum_temp -= t
            self.sum_power -= p

    def read(self) -> tuple[int, float | None, float | None]:
        n = len(self.points)
        if n == 0:
            return 0, None, None
        return n, max(0.0, self.sum_temp / n), max(0.0, self.sum_power / n)


_PARAM_UNITS = {"frequency_cap_mhz": ("frequency cap", "MHz"), "power_limit_w": ("power limit", "W"),
                "max_batch": ("max batch", ""), "tensor_parallelism": ("TP", ""), "precision": ("precision", ""),
                "model_variant": ("model", ""), "config_id": ("config", "")}


def describe_command(c: ReconfigCommand) -> str:
    """A reconfiguration as an operator reads it, e.g. ``frequency cap → 1200 MHz``.

    Examples:
        >>> from datetime import UTC, datetime, timedelta
        >>> from contracts import ReconfigParams
        >>> t = datetime(2026, 1, 1, tzinfo=UTC)
        >>> describe_command(ReconfigCommand(command_id="cmd-00000001", issued_at=t,
        ...     expires_at=t + timedelta(minutes=2), server_id="s1", action="set_frequency_cap",
        ...     params=ReconfigParams(frequency_cap_mhz=1200), reason="hot"))
        'frequency cap → 1200 MHz'
    """
    parts = []
    for key, value in c.params.model_dump(exclude_none=True).items():
        label, unit = _PARAM_UNITS.get(key, (key, ""))
        shown = f"{value:g}" if isinstance(value, float) else str(value)
        parts.append(f"{label} → {shown}{' ' + unit if unit else ''}")
    return ", ".join(parts) if parts else c.action.replace("_", " ")


# --------------------------------------------------------------------------- the view


@dataclass(frozen=True)
class ViewLimits:
    """Bounds on everything the view keeps (memory stays flat however long it runs)."""

    server_history: int = 180
    gpu_history: int = 90
    domain_history: int = 900
    actions: int = 500
    accuracy_window_s: float = 3600.0
    accuracy_sample_s: float = 5.0
    accuracy_max_points: int = 50_000
    accuracy_match_tolerance_s: float = 5.0
    #: A routing-weight change smaller than this (absolute, any instance) is not logged.
    routing_change_min: float = 0.05


class DashboardView:
    """Thread-safe bounded state folded from the live topics.

    ``clock`` returns the current wall-clock time (injected so tests control staleness).

    Examples:
        >>> view = DashboardView(stale_after_s=10.0)
        >>> view.snapshot().stale_since is None
        True
    """

    def __init__(self, *, layout: FloorLayout | None = None, stale_after_s: float = 10.0,
                 limits: ViewLimits | None = None, clock: Callable[[], datetime] | None = None) -> None:
        self.limits = limits or ViewLimits()
        self.stale_after_s = stale_after_s
        self._clock = clock or (lambda: datetime.now(UTC))
        self._lock = threading.Lock()
        self._layout = layout or FloorLayout()
        self._layout_copy: FloorLayout | None = None
        self._servers: dict[str, ServerForecast] = {}
        self._server_hist: dict[str, deque[ServerPoint]] = {}
        self._gpu_hist: dict[str, deque[GpuPoint]] = {}
        self._samples: dict[str, GpuSample] = {}
        self._domains: dict[tuple[str, str], DomainForecast] = {}
        self._domain_hist: dict[tuple[str, str], deque[DomainPoint]] = {}
        self._actions: deque[ActionEntry] = deque(maxlen=self.limits.actions)
        self._emergencies: dict[tuple[str, str], Emergency] = {}
        self._models: dict[str, ModelAnnouncement] = {}
        self._weights: dict[str, dict[str, float]] = {}
        self._pending: dict[str, dict[float, deque[tuple[float, float, float]]]] = {}
        self._last_registered_s: dict[str, float] = {}
        self._mae: dict[float, _WindowMae] = {}
        self._forecast_version: str | None = None
        self._last_message_at: datetime | None = None
        self._data_clock: datetime | None = None
        self._num_messages = 0
        self._num_rejected = 0
        self._num_actions = 0

    def readiness(self, *, consuming: bool) -> Readiness:
        """``/readyz``'s verdict: consuming and a message within ``stale_after_s`` (the stale banner's rule)."""
        with self._lock:
            last = self._last_message_at
        return readiness("dashboard", consuming=consuming, last_input_at=last, now=self._clock(),
                         stale_after_s=self.stale_after_s)

    # ----------------------------------------------------------------- folding
    def apply(self, message: Contract, received_at: datetime | None = None) -> None:
        """Fold one decoded message into the view."""
        at = received_at or self._clock()
        with self._lock:
            self._num_messages += 1
            if isinstance(message, ServerForecast):
                self._apply_server(message)
                self._mark_stream(at, message.issued_at)
            elif isinstance(message, DomainForecast):
                self._apply_domain(message)
                self._mark_stream(at, message.issued_at)
            elif isinstance(message, GpuSample):
                self._apply_sample(message)
            elif isinstance(message, PlacementHint):
                self._apply_hint(message)
            elif isinstance(message, RoutingWeights):
                self._apply_weights(message)
            elif isinstance(message, ReconfigCommand):
                self._apply_command(message)
            elif isinstance(message, ControlEvent):
                self._apply_event(message)
            elif isinstance(message, ModelAnnouncement):
                self._models[message.model_name] = message

    def _log_action(self, entry: ActionEntry) -> None:
        self._actions.append(entry)
        self._num_actions += 1

    def reject(self) -> None:
        """Count a message that failed its contract (it is skipped, never shown)."""
        with self._lock:
            self._num_rejected += 1

    def _mark_stream(self, received_at: datetime, issued_at: datetime) -> None:
        self._last_message_at = received_at
        if self._data_clock is None or issued_at > self._data_clock:
            self._data_clock = issued_at

    def _apply_server(self, f: ServerForecast) -> None:
        sid = f.server_id
        if sid not in self._layout.server_rack:
            self._layout.learn(sid, f.rack_id, f.row_id, f.zone_id, f.pdu_id)
        self._servers[sid] = f
        at_s = f.based_on_sample_at.timestamp()
        point = ServerPoint(at_s, f.gpu_temp_c, f.power_w, tuple(
            (h.horizon_s, h.gpu_temp_c, h.gpu_temp_lo_c, h.gpu_temp_hi_c, h.power_w, h.power_lo_w, h.power_hi_w)
            for h in f.horizons))
        hist = self._server_hist.get(sid)
        if hist is None:
            hist = self._server_hist[sid] = deque(maxlen=self.limits.server_history)
        hist.append(point)
        self._forecast_version = f.model_version
        self._score(sid, at_s, f.gpu_temp_c, f.power_w)
        self._register(sid, point)

    def _score(self, sid: str, at_s: float, temp_c: float, power_w: float) -> None:
        """Match pending forecasts whose target time has come to this observation."""
        tol = self.limits.accuracy_match_tolerance_s
        for horizon, pending in self._pending.get(sid, {}).items():
            while pending and pending[0][0] <= at_s:
                target_s, temp_pred, power_pred = pending.popleft()
                if at_s - target_s <= tol:
                    mae = self._mae.get(horizon)
                    if mae is None:
                        mae = self._mae[horizon] = _WindowMae(self.limits.accuracy_window_s,
                                                              self.limits.accuracy_max_points)
                    mae.add(at_s, abs(temp_c - temp_pred), abs(power_w - power_pred))

    def _register(self, sid: str, point: ServerPoint) -> None:
        """Remember this forecast for scoring, at most once per ``accuracy_sample_s`` per server."""
        last = self._last_registered_s.get(sid)
        if last is not None and point.at_s - last < self.limits.accuracy_sample_s:
            return
        self._last_registered_s[sid] = point.at_s
        bound = int(self.limits.accuracy_window_s / self.limits.accuracy_sample_s) + 1
        by_horizon = self._pending.setdefault(sid, {})
        for horizon, temp, _, _, power, _, _ in point.horizons:
            pending = by_horizon.get(horizon)
            if pending is None:
                pending = by_horizon[horizon] = deque(maxlen=bound)
            pending.append((point.at_s + horizon, temp, power))

    def _apply_sample(self, s: GpuSample) -> None:
        self._samples[s.server_id] = s
        hist = self._gpu_hist.get(s.server_id)
        if hist is None:
            hist = self._gpu_hist[s.server_id] = deque(maxlen=self.limits.gpu_history)
        hist.append(GpuPoint(s.sampled_at.timestamp(), tuple(g.gpu_temp_c for g in s.gpus),
                             tuple(g.power_usage_w for g in s.gpus)))

    def _apply_domain(self, d: DomainForecast) -> None:
        key = (d.domain_kind, d.domain_id)
        self._domains[key] = d
        hist = self._domain_hist.get(key)
        if hist is None:
            hist = self._domain_hist[key] = deque(maxlen=self.limits.domain_history)
        hist.append(DomainPoint(d.issued_at.timestamp(), d.power_w, d.power_limit_w, d.max_inlet_temp_c,
                                d.inlet_limit_c))

    def _row_of_server(self, server_id: str | None) -> str | None:
        if server_id is None:
            return None
        rack = self._layout.server_rack.get(server_id)
        return self._layout.rack_row.get(rack) if rack else None

    def _apply_hint(self, h: PlacementHint) -> None:
        top = h.candidates[0] if h.candidates else None
        summary = (f"place {h.request_id} → {top.server_id}" if top and h.feasible
                   else f"place {h.request_id}: no feasible server")
        headroom = (f"{top.thermal_headroom_c:.1f} °C, row {top.row_power_headroom_w / 1000:.1f} kW"
                    if top else "")
        self._log_action(ActionEntry(h.issued_at, "placement", top.server_id if top else h.request_id,
                                         self._row_of_server(top.server_id if top else None), summary,
                                         h.reason, headroom))

    def _apply_weights(self, w: RoutingWeights) -> None:
        new = {iw.instance_id: (iw.weight if iw.state == "active" else -1.0) for iw in w.weights}
        old = self._weights.get(w.endpoint_id)
        self._weights[w.endpoint_id] = new
        if old is not None:
            changes = {k: abs(v - old.get(k, 0.0)) for k, v in new.items()}
            changes.update({k: abs(old[k]) for k in old.keys() - new.keys()})
            if not changes or max(changes.values()) < self.limits.routing_change_min:
                return
        moved = max(w.weights, key=lambda iw: iw.weight if old is None else abs(
            new[iw.instance_id] - old.get(iw.instance_id, 0.0)))
        drained = [iw.instance_id for iw in w.weights if iw.state == "drain"]
        summary = f"{w.endpoint_id}: " + ", ".join(f"{iw.instance_id} {iw.weight:.2f}" for iw in w.weights[:4])
        if len(w.weights) > 4:
            summary += f" (+{len(w.weights) - 4})"
        if drained:
            summary += f"; drain {', '.join(drained[:3])}"
        headroom = (f"{moved.thermal_headroom_c:.1f} °C" if moved.thermal_headroom_c is not None else "")
        if moved.power_headroom_w is not None:
            headroom += f"{', ' if headroom else ''}{moved.power_headroom_w:.0f} W"
        self._log_action(ActionEntry(w.issued_at, "routing", w.endpoint_id,
                                         self._row_of_server(moved.server_id), summary,
                                         w.reason or ("stale inputs: safe fallback" if w.stale_inputs else ""),
                                         headroom))

    def _apply_command(self, c: ReconfigCommand) -> None:
        unit = "°C" if c.trigger == "thermal" else "W" if c.trigger in ("power", "emergency") else ""
        headroom = f"{c.headroom:.1f} {unit}".strip() if c.headroom is not None else ""
        on = f" on {c.instance_id}" if c.instance_id else ""
        self._log_action(ActionEntry(c.issued_at, "reconfig", c.server_id, self._row_of_server(c.server_id),
                                         f"{describe_command(c)}{on} [{c.mode}]", c.reason,
                                         f"{c.trigger} {headroom}".strip()))

    def _apply_event(self, e: ControlEvent) -> None:
        key = (e.domain_kind, e.domain_id)
        if e.event_kind in EMERGENCY_KINDS:
            self._emergencies[key] = Emergency(e.event_id, e.event_kind, e.severity, e.domain_kind, e.domain_id,
                                               e.occurred_at, e.ends_at, e.detail,
                                               frozenset(self._layout.racks_in(e.domain_kind, e.domain_id)))
        elif e.event_kind == "emergency_cleared":
            self._emergencies.pop(key, None)
            if e.domain_kind == "cluster":
                self._emergencies.clear()
        row = e.domain_id if e.domain_kind == "row" else self._row_of_server(
            e.domain_id if e.domain_kind == "server" else None)
        if row is None and e.domain_kind in ("rack", "pdu", "zone"):
            rows = {self._layout.rack_row.get(r) for r in self._layout.racks_in(e.domain_kind, e.domain_id)}
            row = next(iter(rows)) if len(rows) == 1 else None
        headroom = ""
        if e.budget_frac is not None:
            headroom = f"budget {e.budget_frac:.0%}"
        if e.supply_temp_rise_c is not None:
            headroom += f"{', ' if headroom else ''}supply +{e.supply_temp_rise_c:.1f} °C"
        self._log_action(ActionEntry(e.occurred_at, "event", f"{e.domain_kind} {e.domain_id}", row,
                                         f"{e.severity}: {e.event_kind}", e.detail, headroom))

    # ----------------------------------------------------------------- reading
    def snapshot(self) -> ViewSnapshot:
        """A consistent copy for one page update (no raw history is scanned)."""
        now = self._clock()
        with self._lock:
            if self._layout_copy is None or self._layout_copy.version != self._layout.version:
                self._layout_copy = self._layout.copy()
            clock = self._data_clock
            for key, em in list(self._emergencies.items()):
                if em.ends_at is not None and clock is not None and clock >= em.ends_at:
                    del self._emergencies[key]
            last = self._last_message_at
            stale_since = None
            if last is not None and (now - last).total_seconds() > self.stale_after_s:
                stale_since = last
            accuracy = []
            for horizon in sorted(self._mae):
                mae = self._mae[horizon]
                if clock is not None:
                    mae.evict(clock.timestamp())
                n, t, p = mae.read()
                accuracy.append(HorizonAccuracy(horizon, n, t, p))
            return ViewSnapshot(
                taken_at=now, last_message_at=last, stale_since=stale_since, data_clock=clock,
                layout=self._layout_copy, servers=dict(self._servers), domains=dict(self._domains),
                actions=list(self._actions), emergencies=list(self._emergencies.values()),
                models=dict(self._models), forecast_model_version=self._forecast_version, accuracy=accuracy,
                num_messages=self._num_messages, num_rejected=self._num_rejected, num_actions=self._num_actions,
            )

    def domain_history(self, kinds: Iterable[str]) -> dict[tuple[str, str], list[DomainPoint]]:
        """Bounded history of every domain of the given kinds."""
        wanted = set(kinds)
        with self._lock:
            return {k: list(v) for k, v in self._domain_hist.items() if k[0] in wanted}

    def server_detail(self, server_id: str) -> ServerDetail:
        """Bounded history of one server for the drill-down."""
        with self._lock:
            return ServerDetail(server_id, list(self._server_hist.get(server_id, ())),
                                list(self._gpu_hist.get(server_id, ())), self._servers.get(server_id),
                                self._samples.get(server_id))


# --------------------------------------------------------------------------- the consumer


@dataclass(frozen=True)
class DashboardTopics:
    """Topic names the dashboard reads (overridable so tests can use unique topics)."""

    server_forecasts: str = topic_for(ServerForecast)
    domain_forecasts: str = topic_for(DomainForecast)
    gpu_samples: str = topic_for(GpuSample)
    placement_hints: str = topic_for(PlacementHint)
    routing_weights: str = topic_for(RoutingWeights)
    commands: str = topic_for(ReconfigCommand)
    events: str = topic_for(ControlEvent)
    models: str = topic_for(ModelAnnouncement)

    def models_by_topic(self) -> dict[str, type[Contract]]:
        """Which contract each topic carries."""
        return {self.server_forecasts: ServerForecast, self.domain_forecasts: DomainForecast,
                self.gpu_samples: GpuSample, self.placement_hints: PlacementHint,
                self.routing_weights: RoutingWeights, self.commands: ReconfigCommand,
                self.events: ControlEvent, self.models: ModelAnnouncement}

    def backlog(self) -> dict[str, int | None]:
        """Messages per partition replayed at start: recent actions and events; all model announcements.

        ``None`` means from the beginning (compacted); 0 means only new messages.
        """
        return {self.server_forecasts: 0, self.domain_forecasts: 0, self.gpu_samples: 0,
                self.placement_hints: 100, self.routing_weights: 100, self.commands: 200,
                self.events: 200, self.models: None}


class ViewConsumer:
    """Background thread: assign every partition of the dashboard's topics, decode, fold into the view.

    Uses manual partition assignment (no consumer group: each page process wants every
    message, and a group join on some brokers takes tens of seconds).
    """

    def __init__(self, view: DashboardView, *, clients: KafkaClients, topics: DashboardTopics | None = None,
                 poll_timeout_ms: int = 200) -> None:
        self.view = view
        self.clients = clients
        self.topics = topics or DashboardTopics()
        self.poll_timeout_ms = poll_timeout_ms
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._thread: threading.Thread | None = None
        self.error: BaseException | None = None

    def start(self, wait_s: float = 20.0) -> ViewConsumer:
        """Start the thread and wait until its partitions are assigned."""
        self._thread = threading.Thread(target=self._run, name="dashboard-view-consumer", daemon=True)
        self._thread.start()
        if not self._ready.wait(wait_s):
            self.stop()
            raise TimeoutError(f"dashboard consumer could not assign partitions within {wait_s:.0f} s")
        if self.error is not None:
            raise self.error
        return self

    @property
    def alive(self) -> bool:
        """True while the consumer thread runs and has not failed (``/readyz``'s ``consuming``)."""
        return self._thread is not None and self._thread.is_alive() and self.error is None

    def stop(self, timeout_s: float = 5.0) -> None:
        """Stop the thread and close the consumer."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
            self._thread = None

    def __enter__(self) -> ViewConsumer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _starts(self) -> dict[str, Start]:
        backlog = self.topics.backlog()
        return {topic: "beginning" if (keep := backlog.get(topic, 0)) is None else Last(keep)
                for topic in self.topics.models_by_topic()}

    def _run(self) -> None:
        models = self.topics.models_by_topic()
        try:
            consumer = self.clients.consumer("dashboard")
        except BaseException as exc:  # surfaced to start()
            self.error = exc
            self._ready.set()
            return
        try:
            assign_all(consumer, self._starts(), metadata_wait_s=15.0, missing="skip")
            self._ready.set()
            while not self._stop.is_set():
                batches = consumer.poll(timeout_ms=self.poll_timeout_ms, max_records=5000)
                now = datetime.now(UTC)
                for tp, records in batches.items():
                    model = models[tp.topic]
                    for rec in records:
                        try:
                            self.view.apply(decode(model, rec.value), received_at=now)
                        except ContractError as exc:
                            self.view.reject()
                            log.warning("event=dashboard_rejected topic=%s offset=%s error=%s",
                                        tp.topic, rec.offset, exc)
        except BaseException as exc:  # noqa: BLE001 - keep the page up; report on the page/log
            self.error = exc
            self._ready.set()
            log.exception("event=dashboard_consumer_failed")
        finally:
            consumer.close()

