"""The two router services around the pure rules of :mod:`router.weights`.

* :func:`run_haproxy_router` (``tapas router haproxy --socket PATH --map FILE``): every
  ``router.tick_s`` it sets the weight of each mapped HAProxy server through the
  runtime API, changed ones only; every ``router.reconcile_s`` it reads the weights
  back (``show servers state``) and re-sets any that differ (a restarted HAProxy or a
  manual change). HAProxy errors are logged and counted; the loop keeps going.
* :func:`run_sidecar` (``tapas router sidecar --instance-id ID``): serves one
  instance's weight and headroom on its own pod's ``/metrics`` for an endpoint picker
  that scrapes each endpoint (llm-d, Gateway API Inference Extension), optionally
  followed by the model server's own metrics (``--upstream``), so one port carries both.

Label names are ``tapas_endpoint`` and ``tapas_instance``: Prometheus and the Prometheus
Operator overwrite ``instance``, ``endpoint``, ``pod``, ``namespace``, ``service`` and
``job`` with target labels (the scraped ones survive only as ``exported_*``).
"""

from __future__ import annotations

import logging
import threading
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest

from contracts import ConfigError, RoutingWeights, SourceError
from foundation.kafka import KafkaClients, Publisher
from foundation.settings import Settings
from router.feed import WeightsFeed
from router.haproxy import HaproxyRuntime
from router.http import RouterHttp
from router.weights import InstanceView, ServerRef, haproxy_weights, instance_view, is_fresh

log = logging.getLogger(__name__)

EP, INST = "tapas_endpoint", "tapas_instance"


class RouterMetrics:
    """Gauges and counters of ``tapas router haproxy`` (own registry)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = r = registry or CollectorRegistry()
        self.server_weight = Gauge("tapas_router_server_weight", "Weight last set on the HAProxy server (0-256).",
                                   ("backend", "server"), registry=r)
        self.weights_stale = Gauge("tapas_router_weights_stale",
                                   "1 while the endpoint's weights are stale (its servers run on equal weights).",
                                   (EP,), registry=r)
        self.weights_age = Gauge("tapas_router_weights_age_seconds", "Age of the endpoint's latest weights.",
                                 (EP,), registry=r)
        self.updates = Counter("tapas_router_weight_updates_total", "Server weights set through the runtime API.",
                               registry=r)
        self.errors = Counter("tapas_router_apply_errors_total", "Runtime API commands that failed.", registry=r)
        self.dead_lettered = Gauge("tapas_router_messages_dead_lettered", "Weights messages dead-lettered so far.",
                                   registry=r)
        self.lag = Gauge("tapas_consumer_lag_messages", "Records on the input topic not read yet.",
                         ("consumer", "topic"), registry=r)


class SidecarMetrics:
    """One instance's gauges, for a scraper of its pod (own registry)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = r = registry or CollectorRegistry()
        labels = (EP, INST)
        self.weight = Gauge("tapas_sidecar_routing_weight", "Share of the endpoint's requests TAPAS routes to this "
                            "instance (0-1; the equal share 1/n while stale).", labels, registry=r)
        self.thermal = Gauge("tapas_sidecar_thermal_headroom_celsius", "Slowdown temperature minus forecast-high "
                             "hottest-GPU temperature.", labels, registry=r)
        self.power = Gauge("tapas_sidecar_power_headroom_watts", "Row power budget minus forecast-high row power.",
                           labels, registry=r)
        self.capacity = Gauge("tapas_sidecar_capacity_tokens_per_second", "Tokens/s the instance serves within "
                              "its SLO.", labels, registry=r)
        self.draining = Gauge("tapas_sidecar_draining", "1 while TAPAS drains the instance (weight 0).", labels,
                              registry=r)
        self.stale = Gauge("tapas_sidecar_weights_stale", "1 while the weights are stale.", labels, registry=r)
        self.age = Gauge("tapas_sidecar_weights_age_seconds", "Age of the latest weights.", labels, registry=r)
        self.upstream_up = Gauge("tapas_sidecar_upstream_up", "1 when the last fetch of the model server's "
                                 "metrics (--upstream) succeeded.", registry=r)
        self.lag = Gauge("tapas_consumer_lag_messages", "Records on the input topic not read yet.",
                         ("consumer", "topic"), registry=r)

    def observe(self, view: InstanceView) -> None:
        lab = (view.endpoint_id, view.instance_id)
        self.weight.labels(*lab).set(view.weight)
        self.draining.labels(*lab).set(1.0 if view.draining else 0.0)
        self.stale.labels(*lab).set(1.0 if view.stale else 0.0)
        self.age.labels(*lab).set(view.age_s)
        for gauge, value in ((self.thermal, view.thermal_headroom_c), (self.power, view.power_headroom_w),
                             (self.capacity, view.capacity_tokens_per_s)):
            if value is None:
                try:
                    gauge.remove(*lab)
                except KeyError:
                    pass
            else:
                gauge.labels(*lab).set(value)


@dataclass
class HaproxyRouter:
    """State of the HAProxy adapter; :meth:`apply` is one tick."""

    runtime: HaproxyRuntime
    mapping: dict[str, ServerRef]
    stale_after_s: float
    started_at: datetime
    metrics: RouterMetrics = field(default_factory=RouterMetrics)
    applied: dict[ServerRef, int] = field(default_factory=dict)
    last_error: str | None = None
    num_ticks: int = 0
    num_updates: int = 0

    def apply(self, latest: dict[str, RoutingWeights], now: datetime, *, reconcile: bool) -> int:
        """Set the servers whose weight should change; returns how many were set."""
        self.num_ticks += 1
        want = haproxy_weights(latest, self.mapping, now=now, stale_after_s=self.stale_after_s,
                               started_at=self.started_at)
        for ep, msg in latest.items():
            self.metrics.weights_stale.labels(ep).set(0.0 if is_fresh(msg, now, self.stale_after_s) else 1.0)
            self.metrics.weights_age.labels(ep).set(max(0.0, (now - msg.issued_at).total_seconds()))
        error = None
        if reconcile:
            try:
                current = self.runtime.weights()
                self.applied = {ref: current[ref] for ref in want if ref in current}
            except SourceError as exc:
                error = str(exc)
        num_set = 0
        for ref, weight in sorted(want.items()):
            if self.applied.get(ref) == weight:
                continue
            try:
                self.runtime.set_weight(ref, weight)
            except SourceError as exc:
                self.metrics.errors.inc()
                error = str(exc)
                log.warning("event=router_set_weight_failed server=%s error=%s", ref, exc)
                continue
            self.applied[ref] = weight
            self.metrics.server_weight.labels(ref.backend, ref.server).set(weight)
            self.metrics.updates.inc()
            self.num_updates += 1
            num_set += 1
        self.last_error = error
        return num_set


def _serve(settings: Settings, port: int, text: Callable[[], bytes],
           readiness: Callable[[], tuple[bool, dict[str, Any]]]) -> RouterHttp | None:
    if not port:
        return None
    return RouterHttp(settings.router.metrics_addr, port, metrics_text=text, readiness=readiness).start()


def run_haproxy_router(settings: Settings, runtime: HaproxyRuntime, mapping: dict[str, ServerRef], *,
                       clients: KafkaClients, producer: Publisher, stop: threading.Event, topic: str | None = None, deadletter_topic: str | None = None,
                       clock: Callable[[], datetime] | None = None,
                       on_ready: Callable[[HaproxyRouter], None] | None = None) -> HaproxyRouter:
    """Keep HAProxy's server weights on the latest ``tapas.routing.weights`` until ``stop`` is set."""
    rs = settings.router
    now_fn = clock or (lambda: datetime.now(UTC))
    router = HaproxyRouter(runtime, mapping, rs.stale_after_s, started_at=now_fn())
    feed = WeightsFeed(settings, clients=clients, producer=producer, consumer_name="router-haproxy", topic=topic, deadletter_topic=deadletter_topic)
    feed.open()

    def readiness() -> tuple[bool, dict[str, Any]]:
        now = now_fn()
        stale = sorted(ep for ep, m in feed.latest.items() if not is_fresh(m, now, rs.stale_after_s))
        ok = router.num_ticks > 0 and router.last_error is None and not stale
        return ok, {"endpoints": len(feed.latest), "stale_endpoints": stale, "haproxy_error": router.last_error}

    http = _serve(settings, rs.metrics_port, lambda: generate_latest(router.metrics.registry), readiness)
    log.info("event=router_started kind=haproxy socket=%s servers=%d topic=%s", runtime.address, len(mapping),
             feed.topic)
    try:
        if on_ready is not None:
            on_ready(router)
        next_tick = time.monotonic()
        next_reconcile = next_tick
        while not stop.is_set():
            wait_ms = max(0, int((next_tick - time.monotonic()) * 1000))
            feed.poll(min(wait_ms, 200), now_fn())
            mono = time.monotonic()
            if mono >= next_tick:
                reconcile = mono >= next_reconcile
                if reconcile:
                    next_reconcile = mono + rs.reconcile_s
                    lag = feed.lag()
                    if lag is not None:
                        router.metrics.lag.labels("router-haproxy", feed.topic).set(lag)
                router.apply(feed.latest, now_fn(), reconcile=reconcile)
                router.metrics.dead_lettered.set(feed.num_dead_lettered)
                next_tick = max(next_tick + rs.tick_s, time.monotonic())
    finally:
        feed.close()
        if http is not None:
            http.stop()
    return router


@dataclass
class Sidecar:
    """State of one instance's sidecar."""

    instance_id: str
    endpoint_id: str | None
    metrics: SidecarMetrics = field(default_factory=SidecarMetrics)
    view: InstanceView | None = None
    upstream_text: bytes = b""


def fetch_upstream(url: str, timeout_s: float) -> bytes:
    """The model server's own Prometheus text (``--upstream``), for serving beside TAPAS's gauges."""
    if not url.startswith(("http://", "https://")):
        raise ConfigError(f"--upstream {url!r}: expected an http:// or https:// URL")
    with urllib.request.urlopen(url, timeout=timeout_s) as resp:  # noqa: S310 - scheme checked above
        body: bytes = resp.read(8_000_000)
    return body


def run_sidecar(settings: Settings, instance_id: str, *, clients: KafkaClients, producer: Publisher,
                stop: threading.Event, endpoint_id: str | None = None,
                port: int | None = None, upstream: str | None = None, topic: str | None = None,
                deadletter_topic: str | None = None, clock: Callable[[], datetime] | None = None,
                on_ready: Callable[[Sidecar, RouterHttp], None] | None = None) -> Sidecar:
    """Serve ``instance_id``'s weight and headroom on ``/metrics`` until ``stop`` is set.

    Until weights naming the instance arrive, only ``tapas_sidecar_upstream_up`` and the
    lag are exported (a scorer then sees the metric as missing, not as zero).
    """
    rs = settings.router
    now_fn = clock or (lambda: datetime.now(UTC))
    car = Sidecar(instance_id, endpoint_id)

    def accept(msg: RoutingWeights) -> bool:
        return (endpoint_id is None or msg.endpoint_id == endpoint_id) and any(
            w.instance_id == instance_id for w in msg.weights)

    feed = WeightsFeed(settings, clients=clients, producer=producer, consumer_name=f"sidecar-{instance_id}", topic=topic,
                       deadletter_topic=deadletter_topic, accept=accept, max_endpoints=16)
    feed.open()

    def text() -> bytes:
        return generate_latest(car.metrics.registry) + car.upstream_text

    def readiness() -> tuple[bool, dict[str, Any]]:
        v = car.view
        ok = v is not None and not v.stale
        return ok, {"instance": instance_id, "endpoint": v.endpoint_id if v else None,
                    "stale": None if v is None else v.stale, "weights_age_s": None if v is None else round(v.age_s, 3)}

    http = RouterHttp(rs.metrics_addr, rs.sidecar_port if port is None else port, metrics_text=text,
                      readiness=readiness).start()
    log.info("event=sidecar_started instance=%s port=%d upstream=%s", instance_id, http.port, upstream)
    try:
        if on_ready is not None:
            on_ready(car, http)
        next_tick = time.monotonic()
        next_lag = next_tick
        while not stop.is_set():
            wait_ms = max(0, int((next_tick - time.monotonic()) * 1000))
            feed.poll(min(wait_ms, 200), now_fn())
            mono = time.monotonic()
            if mono < next_tick:
                continue
            next_tick = max(next_tick + rs.tick_s, time.monotonic())
            now = now_fn()
            views = [v for m in feed.latest.values()
                     if (v := instance_view(m, instance_id, now=now, stale_after_s=rs.stale_after_s)) is not None]
            if views:  # the newest message naming the instance wins (an instance serves one endpoint)
                car.view = min(views, key=lambda v: v.age_s)
                car.metrics.observe(car.view)
            if mono >= next_lag:
                next_lag = mono + rs.reconcile_s
                lag = feed.lag()
                if lag is not None:
                    car.metrics.lag.labels(feed.consumer_name, feed.topic).set(lag)
            if upstream:
                try:
                    car.upstream_text = fetch_upstream(upstream, rs.upstream_timeout_s)
                    car.metrics.upstream_up.set(1.0)
                except OSError as exc:
                    car.upstream_text = b""
                    car.metrics.upstream_up.set(0.0)
                    log.warning("event=sidecar_upstream_failed url=%s error=%s", upstream, exc)
    finally:
        feed.close()
        http.stop()
    return car
