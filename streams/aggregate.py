"""Rack, row, PDU and cooling-zone aggregates: per-worker partial sums and their combination; pure.

Servers of one row are spread over every worker (telemetry is keyed by server),
so aggregation is two steps, the map-side combine of MapReduce: each worker sums
its own servers per domain every tick (:func:`worker_partials`, vectorised with
``np.bincount``) and sends its partials for every domain as ONE message to a
one-partition internal topic (re-keyed: domain data leaves the server-keyed
partitions); the worker owning that partition combines the latest partial of every worker
(:func:`combine_partials`) into a :class:`contracts.DomainForecast`. Partials are
rebuilt every tick, so this state needs no changelog: a moved partition is whole
again after one tick.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from contracts.messages import DomainForecast

DomainKind = Literal["rack", "row", "pdu", "zone"]
DOMAIN_KINDS: tuple[DomainKind, ...] = ("rack", "row", "pdu", "zone")


@dataclass(frozen=True)
class DomainLimits:
    """Members and limits of every domain, from the topology.

    Attributes:
        ids: per kind, the domain ids in index order.
        power_limit_w: per kind, each domain's power limit (PDU: nameplate / oversubscription,
            row: budget, zone: cooling capacity).
        pdus_of: per kind and domain id, the PDUs whose measured power sums to the domain's power.
        inlet_limit_c: zone inlet limit, °C.
    """

    ids: Mapping[DomainKind, tuple[str, ...]]
    power_limit_w: Mapping[DomainKind, tuple[float, ...]]
    pdus_of: Mapping[DomainKind, Mapping[str, tuple[str, ...]]]
    inlet_limit_c: float


@dataclass(frozen=True)
class Partial:
    """One worker's sums over its servers of one domain at one tick (the internal re-keyed message)."""

    worker_id: str
    kind: DomainKind
    domain_id: str
    at_s: float
    num_servers: int
    power_w: float
    max_inlet_c: float | None
    horizons_s: tuple[float, ...]
    power_forecast_w: tuple[float, ...]
    power_forecast_hi_w: tuple[float, ...]

    @property
    def key(self) -> str:
        """Kafka key of the partial (and of the domain forecast): ``kind:domain_id``."""
        return f"{self.kind}:{self.domain_id}"


def worker_partials(*, worker_id: str, at_s: float, fresh: npt.NDArray[np.bool_],
                    domain_index: Mapping[DomainKind, npt.NDArray[np.int64]], limits: DomainLimits,
                    power_w: npt.NDArray[np.float64], inlet_c: npt.NDArray[np.float64],
                    horizons_s: Sequence[float], power_fc_w: npt.NDArray[np.float64],
                    power_fc_hi_w: npt.NDArray[np.float64]) -> list[Partial]:
    """Per-domain sums over this worker's fresh servers.

    Args:
        fresh: which slots count (a recent forecast exists).
        domain_index: per kind, each slot's domain index (-1 when the server is not in the topology).
        power_w: each slot's latest server power (NaN unknown → counted as 0).
        inlet_c: each slot's latest inlet (NaN unknown).
        power_fc_w, power_fc_hi_w: ``[slot, horizon]`` point forecast and upper bound of server power.

    Examples:
        >>> lim = DomainLimits({"rack": ("k1",), "row": ("r1",), "pdu": ("p1",), "zone": ("z1",)},
        ...                    {k: (1e4,) for k in DOMAIN_KINDS}, {k: {} for k in DOMAIN_KINDS}, 27.0)
        >>> idx = {k: np.array([0, 0, -1]) for k in DOMAIN_KINDS}
        >>> ps = worker_partials(worker_id="w", at_s=5.0, fresh=np.array([True, True, True]), domain_index=idx,
        ...     limits=lim, power_w=np.array([100.0, 200.0, 50.0]), inlet_c=np.array([22.0, 25.0, 30.0]),
        ...     horizons_s=[60.0], power_fc_w=np.array([[110.0], [210.0], [60.0]]),
        ...     power_fc_hi_w=np.array([[120.0], [230.0], [70.0]]))
        >>> [(p.kind, p.num_servers, p.power_w, p.max_inlet_c, p.power_forecast_hi_w) for p in ps][:1]
        [('rack', 2, 300.0, 25.0, (350.0,))]
    """
    out: list[Partial] = []
    pw = np.where(np.isnan(power_w), 0.0, power_w)
    fc = np.where(np.isnan(power_fc_w), 0.0, power_fc_w)
    fc_hi = np.where(np.isnan(power_fc_hi_w), 0.0, power_fc_hi_w)
    inlet = np.where(np.isnan(inlet_c), -np.inf, inlet_c)
    hs = tuple(float(h) for h in horizons_s)
    for kind in DOMAIN_KINDS:
        idx = domain_index[kind]
        sel = fresh & (idx >= 0)
        if not sel.any():
            continue
        n_dom = len(limits.ids[kind])
        d = idx[sel]
        counts = np.bincount(d, minlength=n_dom)
        power = np.bincount(d, weights=pw[sel], minlength=n_dom)
        fcs = [np.bincount(d, weights=fc[sel, h], minlength=n_dom) for h in range(len(horizons_s))]
        fcs_hi = [np.bincount(d, weights=fc_hi[sel, h], minlength=n_dom) for h in range(len(horizons_s))]
        max_inlet = np.full(n_dom, -np.inf)
        np.maximum.at(max_inlet, d, inlet[sel])
        # One tolist() per column, not a numpy scalar read per domain (about 1,000 domains a tick at 2,000 servers).
        fc_rows = np.column_stack(fcs).tolist() if fcs else [[] for _ in range(n_dom)]
        fc_hi_rows = np.column_stack(fcs_hi).tolist() if fcs_hi else [[] for _ in range(n_dom)]
        counts_l, power_l, inlet_l, ids = counts.tolist(), power.tolist(), max_inlet.tolist(), limits.ids[kind]
        for j in np.flatnonzero(counts).tolist():
            mi = inlet_l[j]
            out.append(Partial(worker_id, kind, ids[j], at_s, counts_l[j], power_l[j],
                               mi if math.isfinite(mi) else None, hs, tuple(fc_rows[j]), tuple(fc_hi_rows[j])))
    return out


_PARTIAL_FIELDS = tuple(f.name for f in fields(Partial))


def partials_to_bytes(partials: list[Partial]) -> bytes:
    """One worker's partials of one tick as a single internal message: a JSON list of rows in field order.

    Rows rather than objects: about 1,000 partials a tick at 2,000 servers, and the
    repeated keys were most of the encode and decode time.

    Examples:
        >>> p = Partial("w1", "row", "r1", 5.0, 2, 300.0, None, (60.0,), (310.0,), (350.0,))
        >>> partials_from_bytes(partials_to_bytes([p])) == [p]
        True
    """
    return json.dumps([[getattr(p, k) for k in _PARTIAL_FIELDS] for p in partials]).encode()


def partials_from_bytes(raw: bytes) -> list[Partial]:
    """Inverse of :func:`partials_to_bytes` (also reads the older list-of-objects form, for rolling upgrades).

    Raises ``ValueError``/``KeyError``/``TypeError`` on foreign bytes.
    """
    out = []
    for row in json.loads(raw):
        if isinstance(row, dict):
            row = [row[k] for k in _PARTIAL_FIELDS]
        if not isinstance(row, list) or len(row) != len(_PARTIAL_FIELDS):
            raise ValueError(f"partial row {str(row)[:80]!r} is not {len(_PARTIAL_FIELDS)} fields")
        wid, kind, dom, at_s, num, power, inlet, hs, fc, fc_hi = row
        if kind not in DOMAIN_KINDS:
            raise ValueError(f"partial kind {kind!r} unknown")
        out.append(Partial(str(wid), kind, str(dom), float(at_s), int(num), float(power),
                           None if inlet is None else float(inlet), tuple(map(float, hs)), tuple(map(float, fc)),
                           tuple(map(float, fc_hi))))
    return out


@dataclass
class DomainCombiner:
    """Latest partial of every worker per domain; combines the fresh ones into domain forecasts.

    Freshness is judged per worker by when its partial *arrived* (the receiver's clock,
    ``now_s`` of :meth:`add`), not by the partial's stream time: a worker whose stream
    time runs ahead (a collector with a fast clock) must not make the others look stale.
    """

    limits: DomainLimits
    stale_after_s: float = 5.0
    latest: dict[str, dict[str, Partial]] = field(default_factory=dict)
    #: Receiver's clock (seconds); ``None``: partials' own stream time stands in for arrival.
    clock: Callable[[], float] | None = None
    #: Receiver's clock when each (domain, worker) partial arrived.
    received: dict[tuple[str, str], float] = field(default_factory=dict)

    def _pos(self, kind: DomainKind, dom: str) -> int:
        return self._positions_of(kind)[dom]

    def add(self, p: Partial, now_s: float | None = None) -> None:
        """Keep ``p`` if it is the newest partial of its worker for its domain (received at ``now_s``).

        ``now_s`` ``None``: the combiner's clock, or without one the partial's own stream time.
        Partials for domains outside the topology are ignored (their ids come off a topic).
        """
        if p.kind not in self.limits.ids or p.domain_id not in self._positions_of(p.kind):
            return
        per_worker = self.latest.setdefault(p.key, {})
        old = per_worker.get(p.worker_id)
        if old is None or p.at_s >= old.at_s:
            per_worker[p.worker_id] = p
            if now_s is None:
                now_s = p.at_s if self.clock is None else self.clock()
            self.received[(p.key, p.worker_id)] = now_s

    def _positions_of(self, kind: DomainKind) -> dict[str, int]:
        if not hasattr(self, "_positions"):
            self._positions = {k: {d: j for j, d in enumerate(v)} for k, v in self.limits.ids.items()}
        return self._positions[kind]

    def combine(self, *, issued_at: Any, pdu_power_w: Mapping[str, float],
                now_s: float | None = None) -> list[DomainForecast]:
        """One forecast per domain from partials received no more than ``stale_after_s`` before ``now_s``.

        ``now_s`` ``None``: the combiner's clock, or without one the newest partial's arrival.

        ``pdu_power_w`` holds the fresh measured power of each PDU; a domain whose PDUs
        are all measured reports the measured sum and shifts its forecasts by the
        difference to its servers' sum (unmetered loads).
        """
        out: list[DomainForecast] = []
        got = self.received
        if now_s is None and self.clock is not None:
            now_s = self.clock()
        for key, per_worker in list(self.latest.items()):
            arrived = {w: got.get((key, w), p.at_s) for w, p in per_worker.items()}
            ref = max(arrived.values()) if now_s is None else now_s
            for w in [w for w, t in arrived.items() if ref - t > self.stale_after_s]:
                del per_worker[w]
                got.pop((key, w), None)
            parts = list(per_worker.values())
            if not parts:
                del self.latest[key]
                continue
            first = parts[0]
            kind, dom = first.kind, first.domain_id
            servers_w = sum(p.power_w for p in parts)
            fc = [sum(p.power_forecast_w[h] for p in parts) for h in range(len(first.horizons_s))]
            fc_hi = [sum(p.power_forecast_hi_w[h] for p in parts) for h in range(len(first.horizons_s))]
            pdus = self.limits.pdus_of[kind].get(dom, ())
            measured = [pdu_power_w[p] for p in pdus if p in pdu_power_w]
            power = servers_w
            if pdus and len(measured) == len(pdus):
                power = sum(measured)
                shift = power - servers_w
                fc = [max(f + shift, 0.0) for f in fc]
                fc_hi = [max(f + shift, 0.0) for f in fc_hi]
            inlets = [p.max_inlet_c for p in parts if p.max_inlet_c is not None]
            j = self._pos(kind, dom)
            out.append(DomainForecast(
                domain_kind=kind, domain_id=dom, issued_at=issued_at,
                num_servers=sum(p.num_servers for p in parts), power_w=max(power, 0.0),
                power_limit_w=self.limits.power_limit_w[kind][j],
                max_inlet_temp_c=max(inlets) if inlets else None,
                inlet_limit_c=self.limits.inlet_limit_c if kind == "zone" else None,
                horizons_s=list(first.horizons_s), power_forecast_w=fc,
                power_forecast_hi_w=[max(a, b) for a, b in zip(fc_hi, fc, strict=True)],
            ))
        return out
