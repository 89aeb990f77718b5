"""The controller's gauges scraped by a real Prometheus (Debian ``prometheus``): their labels arrive unrenamed.

A control series labelled ``instance`` is scraped beside them and arrives as
``exported_instance``, the renaming the ``tapas_`` label names avoid.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from prometheus_client import CollectorRegistry, Gauge, start_http_server

from controller.core.snapshot import RoutingDecision
from controller.metrics import ENDPOINT_LABEL, INSTANCE_LABEL, ControllerMetrics
from foundation.broker import free_port

pytestmark = pytest.mark.integration

PROMETHEUS = shutil.which("prometheus")


@pytest.fixture
def scraped(tmp_path: Path) -> Iterator[tuple[str, int]]:
    """Prometheus scraping the controller's gauges and a control registry every second; yields (url, port)."""
    if PROMETHEUS is None:
        pytest.skip("prometheus not installed (apt-get install prometheus; .ci/run does it)")
    metrics = ControllerMetrics()
    n = 2
    metrics.observe_routing(RoutingDecision(
        endpoint_id="llama-70b", instance_ids=("inst-a", "inst-b"), instance_index=np.arange(n),
        weights=np.asarray([0.25, 0.75]), long_prompt_weights=np.asarray([0.5, 0.5]),
        draining=np.zeros(n, dtype=bool), thermal_headroom_c=np.asarray([3.0, 9.0]),
        power_headroom_w=np.full(n, 1500.0), capacity_tokens_per_s=np.full(n, 1000.0), reason="r"))
    port = free_port()
    server = metrics.serve(port, addr="127.0.0.1")
    control = CollectorRegistry()
    Gauge("control_weight", "a gauge with the old label names", ("endpoint", "instance"),
          registry=control).labels("llama-70b", "inst-a").set(1.0)
    control_port = free_port()
    control_server, _ = start_http_server(control_port, addr="127.0.0.1", registry=control)
    web = free_port()
    (tmp_path / "prometheus.yml").write_text(
        "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
        "scrape_configs:\n"
        f"  - job_name: tapas\n    static_configs: [{{targets: ['127.0.0.1:{port}', '127.0.0.1:{control_port}']}}]\n")
    log = (tmp_path / "prometheus.log").open("wb")
    proc = subprocess.Popen([PROMETHEUS, f"--config.file={tmp_path / 'prometheus.yml'}",
                             f"--storage.tsdb.path={tmp_path / 'data'}", f"--web.listen-address=127.0.0.1:{web}"],
                            stdout=log, stderr=subprocess.STDOUT)
    log.close()
    try:
        yield f"http://127.0.0.1:{web}", port
    finally:
        proc.terminate()
        proc.wait(15)
        server.shutdown()  # type: ignore[attr-defined]
        control_server.shutdown()


def _query(url: str, promql: str, timeout_s: float = 30.0) -> list[dict[str, Any]]:
    """Instant-query ``promql`` until it returns series (Prometheus starting, first scrape pending)."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            q = urllib.parse.urlencode({"query": promql})
            with urllib.request.urlopen(f"{url}/api/v1/query?{q}", timeout=5) as r:
                result: list[dict[str, Any]] = json.loads(r.read())["data"]["result"]
            if result:
                return result
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise AssertionError(f"no series for {promql} within {timeout_s} s")
        time.sleep(0.3)


def test_routing_gauges_keep_their_labels_through_a_real_scrape(scraped: tuple[str, int]) -> None:
    url, port = scraped
    series = _query(url, f'tapas_routing_weight{{{ENDPOINT_LABEL}="llama-70b",{INSTANCE_LABEL}="inst-b"}}')
    assert len(series) == 1
    labels = series[0]["metric"]
    assert float(series[0]["value"][1]) == 0.75
    assert labels["instance"] == f"127.0.0.1:{port}"  # Prometheus' own: the scrape target
    assert not [k for k in labels if k.startswith("exported_")], labels
    headroom = _query(url, f'tapas_endpoint_thermal_headroom_celsius{{{ENDPOINT_LABEL}="llama-70b"}}')
    assert float(headroom[0]["value"][1]) == 3.0
    # the control: a gauge labelled `instance` loses it to the scrape target's
    control = _query(url, "control_weight")[0]["metric"]
    assert control["exported_instance"] == "inst-a" and control["instance"] != "inst-a"
