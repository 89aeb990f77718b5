"""The worker's whole per-batch pipeline without Kafka: decode, join, update, forecast, aggregate, store rows.

:class:`StreamProcessor` takes raw records (bytes as they come off a topic) and
returns what to send: forecasts, dead letters, changed per-server state bytes for
the changelog table, domain partials and history points. ``streams.app`` wires it
to Faust in a few lines; tests and benchmarks drive it directly, and the SIGKILL
test uses it as the reference the restored worker must match bit for bit.
"""

from __future__ import annotations

import base64
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

import numpy as np
import numpy.typing as npt

from contracts.errors import ContractError
from contracts.messages import (
    DeadLetter,
    DomainForecast,
    GpuSample,
    InletSample,
    ModelAnnouncement,
    PduPowerSample,
    decode,
)
from forecasting.online import OnlineForecaster
from forecasting.state import Observation, ServerModelState
from streams.aggregate import DOMAIN_KINDS, DomainCombiner, DomainKind, DomainLimits, Partial, worker_partials
from streams.joins import JoinWindows, apply_gpu, apply_inlet, joined_observation, summarize_gpu
from streams.publish import ServerPlace, power_headroom_w, server_forecast_json
from streams.state import ServerStates
from streams.store.base import Point

#: Slowdown temperature assumed for a server outside the topology whose GPUs do not report one (A100), °C.
FALLBACK_SLOWDOWN_C = 87.0
#: Nameplate assumed for a server outside the topology (DGX A100 system maximum), W.
FALLBACK_NAMEPLATE_W = 6500.0


@dataclass(frozen=True, slots=True)
class RawRecord:
    """One record as consumed: key, value bytes and where it came from."""

    key: bytes | None
    value: bytes
    topic: str
    partition: int | None = None
    offset: int | None = None


@dataclass
class BatchOutput:
    """What one batch produced, to be sent by the shell (state bytes come from ``take_dirty_states``)."""

    forecasts: list[tuple[bytes, bytes]] = field(default_factory=list)
    dead_letters: list[tuple[bytes | None, bytes]] = field(default_factory=list)
    points: list[Point] = field(default_factory=list)


#: Most bytes of a refused record kept in its dead letter (64 KiB). A longer record keeps its first
#: ``DEAD_LETTER_MAX_RAW_BYTES`` bytes with ``raw_truncated`` set and its full size in ``raw_length``, so a
#: dead letter always fits a Kafka request (a 750 KB record, base64-encoded, did not).
DEAD_LETTER_MAX_RAW_BYTES = 64 * 1024


def dead_letter(rec: RawRecord, err: ContractError, received_at: datetime) -> bytes:
    """The dead-letter message for ``rec`` (reason, field and the original bytes, base64, truncated)."""
    raw = rec.value if rec.value is not None else b""
    kept = raw[:DEAD_LETTER_MAX_RAW_BYTES]
    return DeadLetter(source_topic=rec.topic[:256], partition=rec.partition, offset=rec.offset,
                      received_at=received_at, field=err.field[:256], reason=err.reason[:4000],
                      raw_b64=base64.b64encode(kept).decode(), raw_length=len(raw),
                      raw_truncated=len(kept) < len(raw)).to_bytes()


def internal_error(exc: BaseException) -> ContractError:
    """A record whose handling raised: dead-lettered with the exception, never allowed to stop the batch."""
    return ContractError("", f"internal error while handling this record: {type(exc).__name__}: {exc}"[:2000])


def key_error(key: bytes | None, body_id: str, name: str) -> ContractError | None:
    """A mismatch between the Kafka key and the body's id (``None`` when they agree).

    The key decides the partition and so the worker that holds the server's state; a body
    naming another server would update state on a worker that does not own it.
    """
    if key is not None and len(key) == len(body_id) and key.decode(errors="replace") == body_id:
        return None
    shown = "missing" if key is None else repr(key[:200].decode(errors="replace"))
    return ContractError(name, f"{name} {body_id[:200]!r} does not match the Kafka key ({shown})")


@dataclass(frozen=True, slots=True)
class TimeWindow:
    """Receiver-clock bounds of a sample's time: ``[now - max_age_s, now + max_skew_s]``."""

    max_age_s: float = 86_400.0
    max_skew_s: float = 30.0


@dataclass(frozen=True)
class TopologyView:
    """What the worker needs of the topology: each server's place and every domain's limits."""

    places: dict[str, ServerPlace]
    slowdown_c: dict[str, float]
    domain_pos: dict[str, dict[DomainKind, int]]
    limits: DomainLimits

    @classmethod
    def from_topology(cls, topo: object | None, *, inlet_limit_c: float) -> TopologyView:
        """Build from a ``foundation.topology.Topology`` (``None``: no places, no limits)."""
        if topo is None:
            empty: dict[DomainKind, tuple[str, ...]] = {k: () for k in DOMAIN_KINDS}
            return cls({}, {}, {}, DomainLimits(empty, {k: () for k in DOMAIN_KINDS},
                                                {k: {} for k in DOMAIN_KINDS}, inlet_limit_c))
        servers = topo.servers  # type: ignore[attr-defined]
        over = float(topo.oversubscription)  # type: ignore[attr-defined]
        pdu_np: dict[str, float] = {}
        row_np: dict[str, float] = {}
        for s in servers:
            pdu_np[s.pdu_id] = pdu_np.get(s.pdu_id, 0.0) + s.nameplate_w
            row_np[s.row_id] = row_np.get(s.row_id, 0.0) + s.nameplate_w
        places = {s.server_id: ServerPlace(s.rack_id, s.row_id, s.pdu_id, s.zone_id, s.nameplate_w,
                                           s.nameplate_w / pdu_np[s.pdu_id], s.nameplate_w / row_np[s.row_id])
                  for s in servers}
        racks, rows, zones = topo.racks, topo.rows, topo.zones  # type: ignore[attr-defined]
        ids: dict[DomainKind, tuple[str, ...]] = {
            "rack": tuple(r.rack_id for r in racks), "pdu": tuple(r.pdu_id for r in racks),
            "row": tuple(r.row_id for r in rows), "zone": tuple(z.zone_id for z in zones)}
        pos = {k: {d: j for j, d in enumerate(v)} for k, v in ids.items()}
        rack_pdu = {r.rack_id: r.pdu_id for r in racks}
        row_pdus = {r.row_id: tuple(rack_pdu[k] for k in r.rack_ids) for r in rows}
        limit: dict[DomainKind, tuple[float, ...]] = {
            "rack": tuple(pdu_np.get(r.pdu_id, 0.0) / over for r in racks),
            "pdu": tuple(pdu_np.get(r.pdu_id, 0.0) / over for r in racks),
            "row": tuple(float(r.budget_w) for r in rows),
            "zone": tuple(float(z.capacity_w) for z in zones)}
        pdus_of: dict[DomainKind, dict[str, tuple[str, ...]]] = {
            "rack": {r.rack_id: (r.pdu_id,) for r in racks}, "pdu": {r.pdu_id: (r.pdu_id,) for r in racks},
            "row": row_pdus,
            "zone": {z.zone_id: tuple(p for row in z.row_ids for p in row_pdus[row]) for z in zones}}
        domain_pos = {s.server_id: {"rack": pos["rack"][s.rack_id], "pdu": pos["pdu"][s.pdu_id],
                                    "row": pos["row"][s.row_id], "zone": pos["zone"][s.zone_id]}
                      for s in servers}
        slowdown = {s.server_id: float(s.sku.slowdown_temp_c) for s in servers}
        return cls(places, slowdown, domain_pos,  # type: ignore[arg-type]
                   DomainLimits(ids, limit, pdus_of, inlet_limit_c))


class StreamProcessor:
    """Per-worker pipeline state and logic (no I/O; time comes from ``clock``).

    Args:
        view: servers' places and domain limits.
        forecaster: the model version in use (swappable with :meth:`set_forecaster`).
        horizons_s: forecast horizons.
        tick_s: a server's forecast is published at most once per ``tick_s`` of sample time.
        windows: join windows.
        downsample_s: raw telemetry and forecasts go to the store once per this period per server.
        worker_id: this worker's id in domain partials.
        clock: wall-clock seconds (``time.time`` in production); samples are judged against it.
        time_window: how old and how far ahead of ``clock`` a sample may be (outside: dead-lettered).
        max_servers: most per-server states held; beyond it the least recently seen server is evicted.
    """

    def __init__(self, view: TopologyView, forecaster: OnlineForecaster, *, horizons_s: Sequence[float],
                 tick_s: float = 1.0, windows: JoinWindows | None = None, downsample_s: float = 10.0,
                 worker_id: str = "w0", store_enabled: bool = True,
                 clock: Callable[[], float] = time.time, time_window: TimeWindow | None = None,
                 max_servers: int = 100_000) -> None:
        self.view = view
        self.forecaster = forecaster
        self.horizons_s = tuple(sorted(float(h) for h in horizons_s))
        self.tick_s = tick_s
        self.windows = windows or JoinWindows()
        self.downsample_s = downsample_s
        self.worker_id = worker_id
        self.store_enabled = store_enabled
        self.clock = clock
        self.time_window = time_window or TimeWindow()
        self.max_servers = max_servers
        self.states = ServerStates()
        h = len(self.horizons_s)
        self._fc_power = np.full((256, h), np.nan)
        self._fc_power_hi = np.full((256, h), np.nan)
        self._dom = {k: np.full(256, -1, dtype=np.int64) for k in DOMAIN_KINDS}
        self.pdu_power: dict[str, tuple[float, float]] = {}
        self.combiner = DomainCombiner(view.limits, clock=clock)
        self._limits_by_id = {k: dict(zip(view.limits.ids[k], view.limits.power_limit_w[k], strict=True))
                              for k in DOMAIN_KINDS}
        self.stream_time_s = math.nan
        self.num_dead_letters = 0
        self.num_forecasts = 0
        self.num_samples = 0
        self.num_late = 0
        self.num_time_refused = 0
        self.num_internal_errors = 0
        self.num_evicted = 0
        #: Extremes of sample time minus receipt time since start (collector clock skew; NaN before any sample).
        self.skew_min_s = math.nan
        self.skew_max_s = math.nan
        #: Receiver's clock when each slot last got an accepted GPU sample (freshness of domain partials).
        self._seen_at = np.full(256, np.nan)
        #: Receiver's clock when each PDU's reading arrived.
        self._pdu_seen_at: dict[str, float] = {}
        #: Slots changed since the last :meth:`take_dirty_states` (written to the changelog before each commit).
        self.dirty: set[int] = set()
        self._row_power_cache: dict[tuple[str, float], float | None] = {}

    # ------------------------------------------------------------------ state
    def _ensure(self, server_id: str) -> int:
        i = self.states.slot(server_id)
        cap = len(self.states.arr["gpu_at_s"])
        if cap > len(self._fc_power):
            grow = cap - len(self._fc_power)
            self._fc_power = np.vstack([self._fc_power, np.full((grow, len(self.horizons_s)), np.nan)])
            self._fc_power_hi = np.vstack([self._fc_power_hi, np.full((grow, len(self.horizons_s)), np.nan)])
            self._seen_at = np.concatenate([self._seen_at, np.full(grow, np.nan)])
            for k in DOMAIN_KINDS:
                self._dom[k] = np.concatenate([self._dom[k], np.full(grow, -1, dtype=np.int64)])
        pos = self.view.domain_pos.get(server_id)
        if pos is not None and self._dom["row"][i] < 0:
            for k in DOMAIN_KINDS:
                self._dom[k][i] = pos[k]
        return i

    def restore(self, server_id: str, raw: bytes) -> None:
        """Load a server's state from its changelog bytes (replaces what is in memory)."""
        self._ensure(server_id)
        self.states.load_slot(server_id, raw)

    def forget_servers(self) -> None:
        """Drop in-memory per-server state (after a rebalance; it reloads from the table on next sight)."""
        self.states = ServerStates()
        self.dirty = set()
        for k in DOMAIN_KINDS:
            self._dom[k][:] = -1
        self._fc_power[:] = np.nan
        self._fc_power_hi[:] = np.nan
        self._seen_at[:] = np.nan

    def state_bytes(self, server_id: str) -> bytes | None:
        """The server's state bytes (what the changelog table holds), or ``None`` when unknown."""
        i = self.states.index.get(server_id)
        return None if i is None else self.states.slot_bytes(i)

    def take_dirty_states(self) -> dict[str, bytes]:
        """State bytes of every server changed since the last call (clears the dirty set)."""
        return {self.states.ids[i]: self.states.slot_bytes(i) for i in self.take_dirty_slots()}

    def take_dirty_slots(self) -> list[int]:
        """Slots of every server changed since the last call, in slot order (clears the dirty set)."""
        dirty, self.dirty = self.dirty, set()
        return sorted(dirty)

    def set_forecaster(self, forecaster: OnlineForecaster) -> None:
        """Switch model version; per-server states carry over (same state layout across versions)."""
        self.forecaster = forecaster

    def _now(self) -> datetime:
        """The injected clock as a UTC datetime (dead letters' ``received_at``, domain forecasts' ``issued_at``)."""
        return datetime.fromtimestamp(self.clock(), UTC)

    # ------------------------------------------------------------------ inputs
    def _window(self) -> tuple[float, float, float]:
        """``(now, oldest, newest)`` sample time accepted in this batch, by the receiver's clock."""
        now = self.clock()
        return now, now - self.time_window.max_age_s, now + self.time_window.max_skew_s

    def _time_error(self, at_s: float, now_s: float, lo: float, hi: float, name: str) -> ContractError | None:
        """Why a sample time outside ``[lo, hi]`` is refused; tracks collector skew (cheap: float compares)."""
        skew = at_s - now_s
        if not skew >= self.skew_min_s:  # NaN-safe: the first sample sets both
            self.skew_min_s = skew
        if not skew <= self.skew_max_s:
            self.skew_max_s = skew
        if lo <= at_s <= hi:
            return None
        self.num_time_refused += 1
        if at_s > hi:
            return ContractError(name, f"{name} is {skew:.1f} s ahead of the receiver's clock (max skew "
                                       f"{self.time_window.max_skew_s:g} s); the collector's clock is wrong")
        return ContractError(name, f"{name} is {-skew:.1f} s older than the receiver's clock (max age "
                                   f"{self.time_window.max_age_s:g} s)")

    def _server_slot(self, server_id: str) -> int | None:
        """The server's slot, or ``None`` when it is new and the worker already holds ``max_servers``."""
        if server_id not in self.states.index and len(self.states) >= self.max_servers:
            return None
        return self._ensure(server_id)

    def _too_many(self, what: str, limit: int) -> ContractError:
        self.num_evicted += 1
        return ContractError("", f"this worker already holds {limit} {what}s; a new {what} id is refused "
                                 "(raise worker.max_servers if the fleet is that large)")

    def handle_gpu(self, records: Sequence[RawRecord]) -> BatchOutput:
        """Decode, join, update and forecast a batch of GPU samples.

        Every record is handled on its own: a contract error, a time outside the window, a
        key that does not match the body or any exception while handling it dead-letters
        that record only, and the rest of the batch goes on.
        """
        out = BatchOutput()
        received = self._now()
        now_s, lo, hi = self._window()
        changed: set[int] = set()
        self._row_power_cache.clear()  # PDU readings may have changed since the last batch
        for rec in records:
            try:
                err = self._gpu_record(rec, out, changed, now_s, lo, hi)
            except Exception as exc:  # noqa: BLE001 - one poison record must not drop the batch
                self.num_internal_errors += 1
                err = internal_error(exc)
            if err is not None:
                out.dead_letters.append((rec.key, dead_letter(rec, err, received)))
        self.num_dead_letters += len(out.dead_letters)
        self.num_forecasts += len(out.forecasts)
        self.dirty |= changed
        return out

    def _gpu_record(self, rec: RawRecord, out: BatchOutput, changed: set[int], now_s: float, lo: float,
                    hi: float) -> ContractError | None:
        try:
            sample = decode(GpuSample, rec.value)
        except ContractError as err:
            return err
        bad_key = key_error(rec.key, sample.server_id, "server_id")
        if bad_key is not None:
            return bad_key
        summary = summarize_gpu(sample)
        if summary is None:
            return ContractError("gpus.gpu_temp_c", "no GPU reported a valid temperature; sample unusable")
        bad_time = self._time_error(summary.at_s, now_s, lo, hi, "sampled_at")
        if bad_time is not None:
            return bad_time
        i = self._server_slot(sample.server_id)
        if i is None:
            return self._too_many("server", self.max_servers)
        slowdown = self.view.slowdown_c.get(sample.server_id, FALLBACK_SLOWDOWN_C)
        if apply_gpu(self.states, sample, summary, default_slowdown_temp_c=slowdown) is None:
            self.num_late += 1  # late or replayed: state unchanged, so a replay is idempotent
            return None
        self.num_samples += 1
        self._seen_at[i] = now_s
        self._join_pdu_share(sample.server_id, i, summary.at_s)
        obs = joined_observation(self.states, i, self.windows)
        model = self.states.models[i]
        model = self.forecaster.update(model if model is not None else self.forecaster.new_state(), obs)
        self.states.models[i] = model
        changed.add(i)
        if math.isnan(self.stream_time_s) or summary.at_s > self.stream_time_s:
            self.stream_time_s = min(summary.at_s, hi)  # never ahead of the wall clock plus the skew
        a = self.states.arr
        last_fc = float(a["last_forecast_at_s"][i])
        if math.isnan(last_fc) or summary.at_s - last_fc >= self.tick_s * 0.999:
            a["last_forecast_at_s"][i] = summary.at_s
            out.forecasts.append((sample.server_id.encode(), self._forecast(i, obs, model, out)))
        if self.store_enabled:
            last_store = float(a["last_store_at_s"][i])
            if math.isnan(last_store) or summary.at_s - last_store >= self.downsample_s * 0.999:
                a["last_store_at_s"][i] = summary.at_s
                out.points.append(self._gpu_point(i, obs))
        return None

    def handle_inlet(self, records: Sequence[RawRecord]) -> BatchOutput:
        """Keep the newest inlet reading per server (joined into the next GPU sample); per-record isolation."""
        out = BatchOutput()
        received = self._now()
        now_s, lo, hi = self._window()
        for rec in records:
            try:
                err = self._inlet_record(rec, out, now_s, lo, hi)
            except Exception as exc:  # noqa: BLE001 - one poison record must not drop the batch
                self.num_internal_errors += 1
                err = internal_error(exc)
            if err is not None:
                out.dead_letters.append((rec.key, dead_letter(rec, err, received)))
        self.num_dead_letters += len(out.dead_letters)
        return out

    def _inlet_record(self, rec: RawRecord, out: BatchOutput, now_s: float, lo: float,
                      hi: float) -> ContractError | None:
        try:
            sample = decode(InletSample, rec.value)
        except ContractError as err:
            return err
        bad = key_error(rec.key, sample.server_id, "server_id") or self._time_error(
            sample.sampled_at.timestamp(), now_s, lo, hi, "sampled_at")
        if bad is not None:
            return bad
        if self._server_slot(sample.server_id) is None:
            return self._too_many("server", self.max_servers)
        i = apply_inlet(self.states, sample)
        if i is None:
            self.num_late += 1
            return None
        self.dirty.add(i)
        if self.store_enabled and sample.inlet_temp_c is not None:
            fields = {"inlet_temp_c": sample.inlet_temp_c}
            if sample.chassis_power_w is not None:
                fields["chassis_power_w"] = sample.chassis_power_w
            out.points.append(Point("inlet", {"server_id": sample.server_id}, fields, sample.sampled_at))
        return None

    def handle_pdu(self, records: Sequence[RawRecord]) -> BatchOutput:
        """Keep the newest measured power of every PDU (every worker sees every PDU); per-record isolation."""
        out = BatchOutput()
        received = self._now()
        now_s, lo, hi = self._window()
        for rec in records:
            try:
                err = self._pdu_record(rec, out, now_s, lo, hi)
            except Exception as exc:  # noqa: BLE001 - one poison record must not drop the batch
                self.num_internal_errors += 1
                err = internal_error(exc)
            if err is not None:
                out.dead_letters.append((rec.key, dead_letter(rec, err, received)))
        self.num_dead_letters += len(out.dead_letters)
        return out

    def _pdu_record(self, rec: RawRecord, out: BatchOutput, now_s: float, lo: float,
                    hi: float) -> ContractError | None:
        try:
            sample = decode(PduPowerSample, rec.value)
        except ContractError as err:
            return err
        at_s = sample.sampled_at.timestamp()
        bad = key_error(rec.key, sample.pdu_id, "pdu_id") or self._time_error(at_s, now_s, lo, hi, "sampled_at")
        if bad is not None:
            return bad
        old = self.pdu_power.get(sample.pdu_id)
        if old is None and len(self.pdu_power) >= self.max_servers:
            return self._too_many("PDU", self.max_servers)
        if sample.power_w is None or (old is not None and at_s <= old[1]):
            return None
        self.pdu_power[sample.pdu_id] = (sample.power_w, at_s)
        self._pdu_seen_at[sample.pdu_id] = now_s
        if self.store_enabled:
            fields = {"power_w": sample.power_w}
            if sample.current_a is not None:
                fields["current_a"] = sample.current_a
            out.points.append(Point("pdu", {"pdu_id": sample.pdu_id}, fields, sample.sampled_at))
        return None

    @staticmethod
    def decode_announcement(rec: RawRecord) -> ModelAnnouncement | bytes:
        """The announcement in ``rec``, or its dead-letter bytes when malformed."""
        try:
            return decode(ModelAnnouncement, rec.value)
        except ContractError as err:
            return dead_letter(rec, err, datetime.now(UTC))

    # ------------------------------------------------------------------ joins and forecasts
    def _fresh_pdu(self, pdu_id: str | None, at_s: float) -> float | None:
        if pdu_id is None:
            return None
        got = self.pdu_power.get(pdu_id)
        if got is None or abs(at_s - got[1]) > self.windows.power_max_age_s:
            return None
        return got[0]

    def _join_pdu_share(self, server_id: str, i: int, at_s: float) -> None:
        place = self.view.places.get(server_id)
        if place is None or place.pdu_id is None:
            return
        got = self.pdu_power.get(place.pdu_id)
        if got is not None:
            self.states.arr["pdu_share_w"][i] = got[0] * place.pdu_weight
            self.states.arr["pdu_at_s"][i] = got[1]

    def _row_power(self, row_id: str | None, at_s: float) -> float | None:
        if row_id is None:
            return None
        key = (row_id, at_s)  # a tick's samples share at_s: one sum per row per tick, not per server
        if key in self._row_power_cache:
            return self._row_power_cache[key]
        got = self._row_power_uncached(row_id, at_s)
        self._row_power_cache[key] = got
        return got

    def _row_power_uncached(self, row_id: str, at_s: float) -> float | None:
        pdus = self.view.limits.pdus_of["row"].get(row_id, ())
        vals = [self._fresh_pdu(p, at_s) for p in pdus]
        if not pdus or any(v is None for v in vals):
            return None
        return sum(v for v in vals if v is not None)

    def _forecast(self, i: int, obs: Observation, model: ServerModelState, out: BatchOutput) -> bytes:
        values = self.forecaster.forecast_values(model, obs, self.horizons_s)
        sid = obs.server_id
        place = self.view.places.get(sid) or ServerPlace(None, None, None, None, FALLBACK_NAMEPLATE_W, 0.0, 0.0)
        power_now = obs.server_power_w if obs.server_power_w is not None else values[0][3]
        self._fc_power[i] = [v[3] for v in values]
        self._fc_power_hi[i] = [v[5] for v in values]
        pdu_w = self._fresh_pdu(place.pdu_id, obs.at_s)
        pdu_limit = self._limit("pdu", place.pdu_id)
        row_w = self._row_power(place.row_id, obs.at_s)
        row_limit = self._limit("row", place.row_id)
        head_w = power_headroom_w(
            nameplate_w=place.nameplate_w, power_hi_w=values[0][5], place=place,
            pdu_remaining_w=None if pdu_w is None or pdu_limit is None else pdu_limit - pdu_w,
            row_remaining_w=None if row_w is None or row_limit is None else row_limit - row_w)
        now_s = self.clock()
        if self.store_enabled and (math.isnan(self.states.arr["last_store_at_s"][i])
                                   or obs.at_s - self.states.arr["last_store_at_s"][i] >= self.downsample_s * 0.999):
            at = datetime.fromtimestamp(obs.at_s, UTC)
            for h, v in zip(self.horizons_s, values, strict=True):
                out.points.append(Point("forecast", {"server_id": sid, "horizon_s": f"{h:g}"}, {
                    "gpu_temp_c": v[0], "gpu_temp_lo_c": v[1], "gpu_temp_hi_c": v[2], "power_w": v[3],
                    "power_lo_w": v[4], "power_hi_w": v[5], "thermal_headroom_c": obs.slowdown_temp_c - values[0][2],
                    "power_headroom_w": head_w}, at))
        return server_forecast_json(
            server_id=sid, issued_at_s=now_s, based_on_at_s=obs.at_s, model_version=self.forecaster.version,
            interval_level=self.forecaster.params.interval_level, gpu_temp_c=obs.hottest_gpu_temp_c,
            power_w=max(power_now, 0.0), inlet_temp_c=obs.inlet_temp_c, slowdown_temp_c=obs.slowdown_temp_c,
            thermal_headroom_c=obs.slowdown_temp_c - values[0][2], power_headroom_w=head_w,
            horizons=[(h, *v) for h, v in zip(self.horizons_s, values, strict=True)], place=place)

    def _limit(self, kind: DomainKind, dom: str | None) -> float | None:
        if dom is None:
            return None
        return self._limits_by_id[kind].get(dom)

    def _gpu_point(self, i: int, obs: Observation) -> Point:
        w = self.states.window_stats(i)
        fields = {"hottest_gpu_temp_c": obs.hottest_gpu_temp_c, "gpu_power_w": obs.gpu_power_w,
                  "mean_gpu_util_pct": obs.mean_gpu_util_pct, "prefill_tokens_per_s": obs.prefill_tokens_per_s,
                  "decode_tokens_per_s": obs.decode_tokens_per_s, "batch_size": obs.batch_size,
                  "num_gpus": float(obs.num_gpus), "slowdown_temp_c": obs.slowdown_temp_c,
                  "window_max_temp_c": w.max_temp_c,
                  "hottest_gpu_power_w": math.nan if obs.hottest_gpu_power_w is None else obs.hottest_gpu_power_w}
        if obs.server_power_w is not None:
            fields["server_power_w"] = obs.server_power_w
        if obs.frequency_cap_mhz is not None:
            fields["frequency_cap_mhz"] = obs.frequency_cap_mhz
        return Point("gpu", {"server_id": obs.server_id},
                     {k: v for k, v in fields.items() if math.isfinite(v)},
                     datetime.fromtimestamp(obs.at_s, UTC))

    # ------------------------------------------------------------------ domains
    def domain_partials(self) -> list[Partial]:
        """This worker's per-domain sums over servers forecast within the last few ticks."""
        n = len(self.states)
        if n == 0 or math.isnan(self.stream_time_s):
            return []
        a = self.states.arr
        # Judged by when each server's samples arrived on this worker's clock, not by sample time: one
        # collector whose clock runs ahead must not make every other server of its row look stale.
        seen = self._seen_at[:n]
        fresh: npt.NDArray[np.bool_] = ~np.isnan(seen) & (self.clock() - np.nan_to_num(seen) <= 3 * self.tick_s
                                                          + self.windows.power_max_age_s)
        return worker_partials(
            worker_id=self.worker_id, at_s=self.stream_time_s, fresh=fresh,
            domain_index={k: v[:n] for k, v in self._dom.items()}, limits=self.view.limits,
            power_w=a["server_power_w"][:n], inlet_c=a["inlet_temp_c"][:n], horizons_s=self.horizons_s,
            power_fc_w=self._fc_power[:n], power_fc_hi_w=self._fc_power_hi[:n])

    def domain_forecasts(self) -> list[DomainForecast]:
        """Combine the partials received so far into domain forecasts (for domains this worker owns)."""
        now = self.clock()
        seen = self._pdu_seen_at
        fresh_pdus = {p: w for p, (w, _) in self.pdu_power.items()
                      if now - seen.get(p, -math.inf) <= self.windows.power_max_age_s}
        return self.combiner.combine(issued_at=self._now(), pdu_power_w=fresh_pdus, now_s=now)

