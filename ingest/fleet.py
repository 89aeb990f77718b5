"""One collector process for a fleet of BMCs (Redfish) and PDUs (SNMP): ``tapas ingest fleet --config FILE``.

Instead of one process per device, one scheduler keeps every source on its own
interval (Redfish default 10 s: BMC inlet sensors update every 10-60 s; PDUs 1-2 s)
and hands due polls to a bounded thread pool:

* **start jitter**: each source's first poll is drawn uniformly within its interval,
  so 500 BMCs do not all fire in the same second;
* **bounded in-flight**: at most ``max_in_flight`` polls run at once; due polls wait
  their turn (their lateness is counted), nothing queues without bound;
* **one poll per source at a time**: a source is rescheduled only when its poll
  ends, so a slow BMC never piles up requests against itself;
* **per-source backoff**: consecutive failures push that source's next poll out
  (``interval × 2^k``, capped, jittered); success restores the interval;
* **isolation**: a source that hangs holds one worker until its device timeout; the
  others keep their schedule on the remaining workers.

Threads rather than asyncio because the sources' seams are synchronous (the DMTF
``redfish`` library on ``requests``; :class:`~ingest.sources.snmp.SnmpClient` runs
pysnmp on a private loop per device) and stay as they are; the thread pool only
waits on sockets. Messages go to the sink from the scheduler's thread, in the order
polls complete.

The sources come from a TOML file (see ``docs/ingest.md#fleet``)::

    [defaults]
    redfish_interval_s = 10
    snmp_interval_s = 2

    [[redfish]]
    server_id = "row01-rack01-srv01"
    url = "https://10.0.3.7"
    username = "tapas"
    password_env = "TAPAS_BMC_PASSWORD"   # the secret stays out of the file

    [[snmp]]
    pdu_id = "row01-rack01-pdu-a"
    host = "10.0.3.200"
    community = "public"
    server_ids = ["row01-rack01-srv01"]
"""

from __future__ import annotations

import heapq
import logging
import os
import threading
import time
import tomllib
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Histogram
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from contracts.errors import ConfigError, SourceError
from contracts.messages import Contract

log = logging.getLogger(__name__)


class PolledSource(Protocol):
    """What the scheduler polls: the existing sources' ``read``/``close``."""

    def read(self) -> Sequence[Contract]: ...

    def close(self) -> None: ...


# --------------------------------------------------------------------------- configuration


class FleetDefaults(BaseModel):
    """Intervals and limits every source inherits unless it names its own."""

    model_config = ConfigDict(extra="forbid")

    redfish_interval_s: float = Field(default=10.0, gt=0, description="Seconds between polls of one BMC.")
    snmp_interval_s: float = Field(default=2.0, gt=0, description="Seconds between polls of one PDU.")
    max_in_flight: int = Field(default=32, ge=1, le=1024, description="Polls running at once (thread pool size).")
    timeout_s: float = Field(default=5.0, gt=0, description="Timeout of one device request.")
    max_backoff_s: float = Field(default=300.0, gt=0, description="Cap of a failing source's backoff.")


class RedfishEntry(BaseModel):
    """One BMC: the arguments of ``tapas ingest redfish``."""

    model_config = ConfigDict(extra="forbid")

    server_id: str = Field(min_length=1, max_length=128)
    url: str = Field(min_length=1)
    username: str | None = None
    password_env: str | None = Field(default=None, description="Environment variable holding the BMC password.")
    chassis: str | None = None
    auth: Literal["session", "basic"] = "session"
    interval_s: float | None = Field(default=None, gt=0)


class SnmpEntry(BaseModel):
    """One PDU: the arguments of ``tapas ingest snmp`` (v2c community, or a v3 user)."""

    model_config = ConfigDict(extra="forbid")

    pdu_id: str = Field(min_length=1, max_length=128)
    host: str = Field(min_length=1)
    port: int = Field(default=161, ge=1, le=65535)
    community: str = "public"
    profile: str | None = None
    server_ids: list[str] = Field(default_factory=list)
    v3_user: str | None = None
    v3_auth_key_env: str | None = None
    v3_priv_key_env: str | None = None
    v3_auth_protocol: str = "sha"
    v3_priv_protocol: str = "aes"
    v3_context: str = ""
    interval_s: float | None = Field(default=None, gt=0)


class FleetConfig(BaseModel):
    """The whole source list of one fleet collector."""

    model_config = ConfigDict(extra="forbid")

    defaults: FleetDefaults = Field(default_factory=FleetDefaults)
    redfish: list[RedfishEntry] = Field(default_factory=list)
    snmp: list[SnmpEntry] = Field(default_factory=list)


def load_fleet_config(path: Path) -> FleetConfig:
    """Read and validate a fleet TOML file.

    Raises:
        ConfigError: naming the file and the offending entry and field (``redfish[3].url: Field required``),
            for unreadable TOML, unknown keys, duplicate ids or an empty source list.
    """
    try:
        raw = tomllib.loads(path.read_text())
    except OSError as exc:
        raise ConfigError(f"fleet config {path}: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"fleet config {path}: not valid TOML ({exc})") from None
    try:
        cfg = FleetConfig.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = "".join(f"[{p}]" if isinstance(p, int) else (f".{p}" if i else str(p))
                        for i, p in enumerate(first["loc"]))
        more = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
        raise ConfigError(f"fleet config {path}: {where}: {first['msg']}{more}") from None
    for kind, ids in (("redfish server_id", [r.server_id for r in cfg.redfish]),
                      ("snmp pdu_id", [s.pdu_id for s in cfg.snmp])):
        dup = sorted({i for i in ids if ids.count(i) > 1})
        if dup:
            raise ConfigError(f"fleet config {path}: duplicate {kind} {dup[0]!r}; each device is listed once")
    if not cfg.redfish and not cfg.snmp:
        raise ConfigError(f"fleet config {path}: no [[redfish]] or [[snmp]] entries")
    return cfg


def _secret(env: str | None, what: str) -> str | None:
    if env is None:
        return None
    value = os.environ.get(env)
    if value is None:
        raise ConfigError(f"fleet config: {what} names ${env}, which is not set")
    return value


@dataclass
class SourceSpec:
    """A source to schedule: its name, kind, interval and a factory that builds it on first poll.

    Building lazily means a BMC that refuses the first connection fails only its own
    polls (and backs off), not the collector's start.
    """

    name: str
    kind: str
    interval_s: float
    build: Callable[[], PolledSource]


def fleet_specs(cfg: FleetConfig) -> list[SourceSpec]:
    """The schedulable sources of ``cfg`` (Redfish through the DMTF library, SNMP through pysnmp)."""
    from ingest.sources.redfish import RedfishLibraryClient, RedfishSource
    from ingest.sources.snmp import SnmpClient, SnmpSource, SnmpTarget

    d = cfg.defaults
    specs: list[SourceSpec] = []
    for r in cfg.redfish:
        password = _secret(r.password_env, f"redfish {r.server_id} password_env")

        def build_redfish(r: RedfishEntry = r, password: str | None = password) -> PolledSource:
            client = RedfishLibraryClient(r.url, username=r.username, password=password, timeout_s=d.timeout_s,
                                          auth=r.auth)
            return RedfishSource(client, server_id=r.server_id, chassis_id=r.chassis)

        specs.append(SourceSpec(f"redfish:{r.server_id}", "redfish", r.interval_s or d.redfish_interval_s,
                                build_redfish))
    for s in cfg.snmp:
        target = SnmpTarget(host=s.host, port=s.port, community=s.community, timeout_s=d.timeout_s,
                            v3_user=s.v3_user, v3_auth_key=_secret(s.v3_auth_key_env, f"snmp {s.pdu_id} auth key"),
                            v3_priv_key=_secret(s.v3_priv_key_env, f"snmp {s.pdu_id} privacy key"),
                            v3_auth_protocol=s.v3_auth_protocol, v3_priv_protocol=s.v3_priv_protocol,
                            v3_context=s.v3_context)

        def build_snmp(s: SnmpEntry = s, target: SnmpTarget = target) -> PolledSource:
            return SnmpSource(SnmpClient(target), pdu_id=s.pdu_id, profile=s.profile, server_ids=s.server_ids)

        specs.append(SourceSpec(f"snmp:{s.pdu_id}", "snmp", s.interval_s or d.snmp_interval_s, build_snmp))
    return specs


# --------------------------------------------------------------------------- scheduling


class FleetMetrics:
    """Per-source Prometheus counters of a fleet collector (label ``source`` = ``kind:id``)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self.polls = Counter("tapas_collector_polls_total", "Device polls that returned a reading.",
                             ["source"], registry=self.registry)
        self.errors = Counter("tapas_collector_poll_errors_total", "Device polls that failed (SourceError or "
                              "an unexpected exception).", ["source"], registry=self.registry)
        self.lateness = Histogram("tapas_collector_poll_lateness_seconds", "How long after its due time a poll "
                                  "started (waiting for a free worker).", registry=self.registry,
                                  buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0))


@dataclass
class SourceState:
    """What the scheduler knows about one source."""

    spec: SourceSpec
    source: PolledSource | None = None
    num_polls: int = 0
    num_errors: int = 0
    consecutive_errors: int = 0
    max_lateness_s: float = 0.0
    last_error: str | None = None
    busy_s: float = 0.0
    """Wall seconds its polls took (building the source included)."""


@dataclass
class FleetStats:
    """Totals of one run (also what ``tapas bench collectors`` prints)."""

    num_polls: int = 0
    num_errors: int = 0
    num_late: int = 0
    max_lateness_s: float = 0.0
    lateness_s: list[float] = field(default_factory=list)


Sink = Callable[[Sequence[Contract]], None]


class FleetPoller:
    """Polls many sources on their own intervals through a bounded thread pool (see the module docstring).

    Args:
        specs: the sources (:func:`fleet_specs`, or any factories in tests).
        sink: called with each poll's messages, on the scheduler's thread.
        max_in_flight: polls running at once.
        max_backoff_s: cap of a failing source's wait.
        rng: draws the start jitter and the backoff jitter.
        metrics: per-source counters (a fresh registry if omitted).
        late_tolerance_frac: a poll starting later than this fraction of its interval counts as late.
        clock: monotonic seconds.
    """

    def __init__(self, specs: Sequence[SourceSpec], sink: Sink, *, max_in_flight: int = 32,
                 max_backoff_s: float = 300.0, rng: np.random.Generator, metrics: FleetMetrics | None = None,
                 late_tolerance_frac: float = 0.1, clock: Callable[[], float] = time.monotonic,
                 keep_lateness: bool = False) -> None:
        if not specs:
            raise ConfigError("fleet: no sources to poll")
        self.states = [SourceState(s) for s in specs]
        self.sink = sink
        self.max_in_flight = max_in_flight
        self.max_backoff_s = max_backoff_s
        self.rng = rng
        self.metrics = metrics or FleetMetrics()
        self.late_tolerance_frac = late_tolerance_frac
        self.clock = clock
        self.keep_lateness = keep_lateness
        self.stats = FleetStats()
        self._stop = threading.Event()

    def stop(self) -> None:
        """Ask :meth:`run` to return after the polls in flight finish."""
        self._stop.set()

    def _poll(self, st: SourceState) -> Sequence[Contract]:
        t0 = time.perf_counter()
        try:
            if st.source is None:
                st.source = st.spec.build()
            return st.source.read()
        finally:
            st.busy_s += time.perf_counter() - t0

    def _backoff_s(self, st: SourceState) -> float:
        base = st.spec.interval_s * 2.0 ** min(st.consecutive_errors, 30)
        return float(min(base, max(self.max_backoff_s, st.spec.interval_s)) * self.rng.uniform(0.9, 1.1))

    def run(self, *, duration_s: float | None = None, once: bool = False) -> FleetStats:
        """Poll until :meth:`stop`, ``duration_s`` or (``once``) one poll of every source; returns the totals.

        With ``once`` every source is polled a single time at once (no jitter) and a failure is
        reported, not retried.
        """
        start = self.clock()
        end = None if duration_s is None else start + duration_s
        due: list[tuple[float, int]] = []
        for i, st in enumerate(self.states):
            first = start if once else start + float(self.rng.uniform(0.0, st.spec.interval_s))
            heapq.heappush(due, (first, i))
        running: dict[Future[Sequence[Contract]], tuple[int, float]] = {}
        pool = ThreadPoolExecutor(max_workers=self.max_in_flight, thread_name_prefix="fleet-poll")
        try:
            while True:
                now = self.clock()
                stopping = self._stop.is_set() or (end is not None and now >= end)
                while not stopping and due and due[0][0] <= now and len(running) < self.max_in_flight:
                    at, i = heapq.heappop(due)
                    self._record_start(self.states[i], now - at)
                    running[pool.submit(self._poll, self.states[i])] = (i, at)
                if stopping and not running:
                    break
                if once and not due and not running:
                    break
                wait_s = 0.5
                if due and not stopping:
                    wait_s = min(wait_s, max(due[0][0] - now, 0.0))
                if end is not None:
                    wait_s = min(wait_s, max(end - now, 0.0))
                if running:
                    done, _ = wait(list(running), timeout=wait_s if len(running) < self.max_in_flight or stopping
                                   else 0.5, return_when=FIRST_COMPLETED)
                    for fut in done:
                        i, at = running.pop(fut)
                        next_at = self._finish(self.states[i], fut, at)
                        if not once:
                            heapq.heappush(due, (next_at, i))
                elif wait_s > 0:
                    self._stop.wait(wait_s)
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
        return self.stats

    def _record_start(self, st: SourceState, late_s: float) -> None:
        late_s = max(late_s, 0.0)
        self.metrics.lateness.observe(late_s)
        st.max_lateness_s = max(st.max_lateness_s, late_s)
        self.stats.max_lateness_s = max(self.stats.max_lateness_s, late_s)
        if late_s > self.late_tolerance_frac * st.spec.interval_s:
            self.stats.num_late += 1
        if self.keep_lateness:
            self.stats.lateness_s.append(late_s)

    def _finish(self, st: SourceState, fut: Future[Sequence[Contract]], due_at: float) -> float:
        """Count the poll, hand its messages to the sink, and say when the source is due next."""
        now = self.clock()
        try:
            messages = fut.result()
        except Exception as exc:  # noqa: BLE001 - one device's failure, whatever it is, must not stop the fleet
            st.num_errors += 1
            st.consecutive_errors += 1
            self.stats.num_errors += 1
            self.metrics.errors.labels(st.spec.name).inc()
            detail = str(exc) if isinstance(exc, SourceError) else f"{exc.__class__.__name__}: {exc}"
            if st.consecutive_errors == 1 or st.last_error != detail:
                log.warning("event=fleet_poll_failed source=%s consecutive=%d error=%s", st.spec.name,
                            st.consecutive_errors, detail)
            st.last_error = detail
            return now + self._backoff_s(st)
        st.num_polls += 1
        st.consecutive_errors = 0
        self.stats.num_polls += 1
        self.metrics.polls.labels(st.spec.name).inc()
        self.sink(messages)
        next_at = due_at + st.spec.interval_s
        return next_at if next_at > now else now

    def close(self) -> None:
        """Close every source that was built."""
        for st in self.states:
            if st.source is not None:
                try:
                    st.source.close()
                except Exception as exc:  # noqa: BLE001 - closing one device must not skip the others
                    log.warning("event=fleet_close_failed source=%s error=%r", st.spec.name, exc)
                st.source = None

    def failures(self) -> dict[str, str]:
        """Sources whose last poll failed, with the error."""
        return {st.spec.name: st.last_error or "" for st in self.states if st.consecutive_errors}


def describe(specs: Sequence[SourceSpec]) -> dict[str, Any]:
    """Counts and polls per second by kind (for the start log line)."""
    out: dict[str, Any] = {}
    for kind in sorted({s.kind for s in specs}):
        group = [s for s in specs if s.kind == kind]
        out[kind] = {"sources": len(group), "polls_per_s": round(sum(1.0 / s.interval_s for s in group), 2)}
    return out
