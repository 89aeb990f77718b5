"""The per-endpoint sidecar serves what the sample llm-d / GIE EndpointPickerConfig scrapes (embedded broker)."""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml
from kafka import KafkaProducer
from prometheus_client.parser import text_string_to_metric_families

from contracts import InstanceWeight, RoutingWeights
from foundation.settings import Settings
from router.http import RouterHttp
from router.service import Sidecar, run_sidecar
from tapas.bootstrap import collector_producer, kafka_clients

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
SAMPLE = REPO / "docs" / "llm-d" / "endpoint-picker-config.yaml"
VLLM_TEXT = (b"# HELP vllm:num_requests_waiting Number of requests waiting to be processed.\n"
             b"# TYPE vllm:num_requests_waiting gauge\n"
             b'vllm:num_requests_waiting{model_name="llama-70b"} 3.0\n')


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


def _samples(text: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out.setdefault(s.name, []).append((dict(s.labels), s.value))
    return out


def _plugins(kind: str) -> list[dict[str, Any]]:
    cfg = yaml.safe_load(SAMPLE.read_text())
    return [p for p in cfg["plugins"] if p["type"] == kind]


def test_sample_config_is_wired_consistently() -> None:
    cfg = yaml.safe_load(SAMPLE.read_text())
    assert cfg["kind"] == "EndpointPickerConfig" and "dataLayer" in cfg["featureGates"]
    names = {p.get("name", p["type"]) for p in cfg["plugins"]}
    refs = [r["pluginRef"] for prof in cfg["schedulingProfiles"] for r in prof["plugins"]]
    refs += [s["pluginRef"] for s in cfg["data"]["sources"]]
    refs += [e["pluginRef"] for s in cfg["data"]["sources"] for e in s["extractors"]]
    assert set(refs) <= names, f"references to undefined plugins: {set(refs) - names}"
    extracted = {p["parameters"]["metricName"] for p in _plugins("prometheus-metric")}
    assert {p["parameters"]["metricName"] for p in _plugins("metric-scorer")} <= extracted


def test_sidecar_output_carries_every_metric_the_sample_config_names(
        broker: object, topic_factory: Callable[..., str]) -> None:
    bootstrap = broker.bootstrap  # type: ignore[attr-defined]
    topic, dlq = topic_factory("weights", partitions=2), topic_factory("dlq")

    class Vllm(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            self.send_response(200)
            self.send_header("Content-Length", str(len(VLLM_TEXT)))
            self.end_headers()
            self.wfile.write(VLLM_TEXT)

        def log_message(self, *args: object) -> None:
            return

    vllm = ThreadingHTTPServer(("127.0.0.1", 0), Vllm)
    vllm_thread = threading.Thread(target=vllm.serve_forever, daemon=True)
    vllm_thread.start()
    settings = Settings(kafka={"bootstrap_servers": bootstrap},
                        router={"tick_s": 0.2, "stale_after_s": 30.0, "metrics_addr": "127.0.0.1"})
    stop, ready = threading.Event(), threading.Event()
    box: dict[str, Any] = {}

    def on_ready(car: Sidecar, http: RouterHttp) -> None:
        box.update(car=car, url=f"http://127.0.0.1:{http.port}")
        ready.set()

    t = threading.Thread(target=run_sidecar, args=(settings, "inst-1"), kwargs=dict(clients=kafka_clients(settings), producer=collector_producer(settings, source="router-test"),
        stop=stop, port=0, upstream=f"http://127.0.0.1:{vllm.server_address[1]}/metrics", topic=topic,
        deadletter_topic=dlq, on_ready=on_ready))
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks=1)
    t.start()
    try:
        assert ready.wait(20)
        url = box["url"]
        assert _get(f"{url}/healthz")[0] == 200
        code, body = _get(f"{url}/readyz")
        assert code == 503 and json.loads(body)["stale"] is None  # no weights yet: not ready, says why
        now = datetime.now(UTC)
        for ep, inst in (("other-ep", "inst-9"), ("llama-70b", "inst-1")):  # only its own instance counts
            msg = RoutingWeights(endpoint_id=ep, issued_at=now, valid_until=now + timedelta(seconds=2.5),
                                 weights=[InstanceWeight(instance_id="inst-0", weight=0.7, thermal_headroom_c=4.0),
                                          InstanceWeight(instance_id=inst, weight=0.3, thermal_headroom_c=11.5,
                                                         power_headroom_w=850.0, capacity_tokens_per_s=1200.0)])
            producer.send(topic, key=ep.encode(), value=msg.to_bytes()).get(timeout=10)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            samples = _samples(_get(f"{url}/metrics")[1])
            if "tapas_sidecar_routing_weight" in samples and "vllm:num_requests_waiting" in samples:
                break
            time.sleep(0.1)
        labels = {"tapas_endpoint": "llama-70b", "tapas_instance": "inst-1"}
        assert samples["tapas_sidecar_routing_weight"] == [(labels, 0.3)]
        assert samples["tapas_sidecar_thermal_headroom_celsius"] == [(labels, 11.5)]
        assert samples["tapas_sidecar_power_headroom_watts"] == [(labels, 850.0)]
        assert samples["tapas_sidecar_weights_stale"] == [(labels, 0.0)]
        assert samples["tapas_sidecar_upstream_up"] == [({}, 1.0)]
        # every metric (and label filter) the sample EndpointPickerConfig extracts is in the scraped text
        for plugin in _plugins("prometheus-metric"):
            name = plugin["parameters"]["metricName"]
            want = plugin["parameters"].get("labels", {})
            assert name in samples, f"sample config extracts {name}, the sidecar does not serve it"
            assert any(want.items() <= lab.items() for lab, _v in samples[name]), (name, want, samples[name])
        assert not {"instance", "endpoint", "pod", "namespace", "job"} & {
            k for series in samples.values() for lab, _v in series for k in lab}
        assert _get(f"{url}/readyz")[0] == 200
        # past valid_until: the equal share 1/n, no drain, and not ready
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            samples = _samples(_get(f"{url}/metrics")[1])
            if samples["tapas_sidecar_weights_stale"] == [(labels, 1.0)]:
                break
            time.sleep(0.1)
        assert samples["tapas_sidecar_routing_weight"] == [(labels, 0.5)]
        assert samples["tapas_sidecar_draining"] == [(labels, 0.0)]
        code, body = _get(f"{url}/readyz")
        assert code == 503 and json.loads(body)["stale"] is True
    finally:
        stop.set()
        t.join(20)
        producer.close()
        vllm.shutdown()
        vllm.server_close()
        vllm_thread.join(5)
    assert not t.is_alive()
