"""Health probes: the pure readiness rule, the stdlib probe server, and the dashboard's routes (auth on and off)."""

from __future__ import annotations

import base64
import json
import urllib.error
import urllib.request
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pytest

from bench.dashboard import synthetic_tick
from dashboard.app import create_app
from dashboard.view import DashboardView
from foundation.health import HealthServer, probe_response, readiness
from foundation.topology import default_topology

T0 = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


class Clock:
    """A settable clock (the services take ``now`` from it)."""

    def __init__(self, at: datetime) -> None:
        self.at = at

    def __call__(self) -> datetime:
        return self.at


def _get(url: str) -> tuple[int, dict[str, Any]]:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_readiness_rule_never_ready_without_input_or_consumer() -> None:
    fresh = readiness("x", consuming=True, last_input_at=T0, now=T0 + timedelta(seconds=10), stale_after_s=10)
    assert fresh.ready and not fresh.stale and fresh.age_s == 10.0
    late = readiness("x", consuming=True, last_input_at=T0, now=T0 + timedelta(seconds=10.5), stale_after_s=10)
    assert not late.ready and late.stale and "10.5 s old" in late.reason
    assert readiness("x", consuming=True, last_input_at=None, now=T0, stale_after_s=10).reason == \
        "no input received yet"
    stopped = readiness("x", consuming=False, last_input_at=T0, now=T0, stale_after_s=10)
    assert not stopped.ready and not stopped.stale and stopped.reason == "not consuming"


def test_probe_response_paths_and_a_failing_probe() -> None:
    def broken() -> Any:
        raise RuntimeError("state lock poisoned")

    assert probe_response("/healthz", "agent", broken) == (200, {"service": "agent", "alive": True})
    status, body = probe_response("/readyz?verbose=1", "agent", broken)  # type: ignore[misc]
    assert status == 503 and "state lock poisoned" in body["reason"]
    assert probe_response("/metrics", "agent", broken) is None


def test_health_server_answers_over_http_and_follows_the_clock() -> None:
    clock = Clock(T0)
    server = HealthServer("controller", lambda: readiness("controller", consuming=True, last_input_at=T0,
                                                          now=clock(), stale_after_s=5)).start()
    try:
        base = f"http://127.0.0.1:{server.port}"
        assert _get(f"{base}/healthz") == (200, {"service": "controller", "alive": True})
        status, body = _get(f"{base}/readyz")
        assert status == 200 and body["ready"] and body["age_s"] == 0.0
        clock.at = T0 + timedelta(seconds=6)
        status, body = _get(f"{base}/readyz")
        assert status == 503 and body["stale"] and body["age_s"] == 6.0 and body["stale_after_s"] == 5
        assert _get(f"{base}/nothing")[0] == 404
    finally:
        server.close()


def _feed(view: DashboardView, at: datetime) -> None:
    """One tick of forecasts (what marks the dashboard's stream fresh)."""
    topo = default_topology(4)
    for m in synthetic_tick(topo, at, np.random.default_rng(0), hot_zone=topo.zones[0].zone_id,
                            supply_rise_c=0.0):
        view.apply(m, received_at=at)


@pytest.mark.parametrize("auth", [False, True], ids=["auth-off", "auth-on"])
def test_dashboard_probes_are_real_routes_open_without_credentials(auth: bool) -> None:
    clock = Clock(T0)
    consuming = [True]
    view = DashboardView(stale_after_s=10.0, clock=clock)
    app = create_app(view, username="ops" if auth else None, password="pw" if auth else None,
                     consuming=lambda: consuming[0])
    client = app.server.test_client()
    if auth:
        assert client.get("/").status_code == 401  # the page itself still needs credentials
    alive = client.get("/healthz")
    assert alive.status_code == 200 and alive.is_json and alive.get_json() == {"service": "dashboard", "alive": True}
    waiting = client.get("/readyz")
    assert waiting.status_code == 503 and waiting.get_json()["reason"] == "no input received yet"
    _feed(view, T0)
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.get_json()["age_s"] == 0.0
    clock.at = T0 + timedelta(seconds=11)
    stale = client.get("/readyz")
    assert stale.status_code == 503 and stale.get_json()["stale"] and stale.get_json()["age_s"] == 11.0
    clock.at = T0 + timedelta(seconds=1)
    consuming[0] = False
    assert client.get("/readyz").get_json()["reason"] == "not consuming"
    if auth:
        good = base64.b64encode(b"ops:pw").decode()
        assert client.get("/", headers={"Authorization": f"Basic {good}"}).status_code == 200
