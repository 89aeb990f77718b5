"""`tapas controller` as a process: starts on the embedded broker, switches mode via `tapas controller mode`,
exposes its Prometheus gauges and exits cleanly on SIGTERM."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest
from kafka import KafkaConsumer, TopicPartition

from contracts import ControlEvent, decode
from foundation.broker import free_port

pytestmark = pytest.mark.integration


def test_controller_process_mode_switch_metrics_and_sigterm(broker: object) -> None:
    bootstrap = broker.bootstrap  # type: ignore[attr-defined]
    metrics_port, health_port = free_port(), free_port()
    env = {**os.environ, "TAPAS_KAFKA__BOOTSTRAP_SERVERS": bootstrap,
           "TAPAS_CONTROLLER__METRICS_PORT": str(metrics_port), "TAPAS_CONTROLLER__HEALTH_PORT": str(health_port)}
    events = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    parts = [TopicPartition("tapas.events", p) for p in sorted(events.partitions_for_topic("tapas.events") or {0})]
    events.assign(parts)
    events.seek_to_end()
    for tp in parts:
        events.position(tp)
    proc = subprocess.Popen([sys.executable, "-m", "tapas.cli", "controller", "--servers", "16", "--mode", "advisory"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        body = ""
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and "tapas_controller_enforce 0.0" not in body:
            try:
                body = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=2).read().decode()
            except OSError:
                time.sleep(0.3)
        assert "tapas_controller_enforce 0.0" in body
        with urllib.request.urlopen(f"http://127.0.0.1:{health_port}/healthz", timeout=2) as alive:
            assert alive.status == 200 and json.loads(alive.read()) == {"service": "controller", "alive": True}
        try:  # no forecasts flow in this test: not ready, and the body says why
            urllib.request.urlopen(f"http://127.0.0.1:{health_port}/readyz", timeout=2)
            raise AssertionError("/readyz answered 200 without any forecast")
        except urllib.error.HTTPError as exc:
            assert exc.code == 503 and json.loads(exc.read())["reason"] == "no input received yet"
        switched = subprocess.run([sys.executable, "-m", "tapas.cli", "controller", "mode", "enforce", "--by", "ci"],
                                  env=env, capture_output=True, text=True, timeout=60)
        assert switched.returncode == 0, switched.stderr
        seen: list[ControlEvent] = []
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not any(e.event_kind == "mode_changed" for e in seen):
            for recs in events.poll(300).values():
                seen += [decode(ControlEvent, r.value) for r in recs]
        changed = [e for e in seen if e.event_kind == "mode_changed"]
        assert changed and "by ci" in changed[0].detail
        body = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=2).read().decode()
        assert "tapas_controller_enforce 1.0" in body
        os.kill(proc.pid, signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
        assert proc.returncode == 0, out.decode()[-2000:]
        assert b"controller stopped" in out
    finally:
        events.close()
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
