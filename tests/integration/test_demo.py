"""`tapas demo` brings the pipeline up, publishes forecasts/weights/hints-or-commands, and stops cleanly on SIGINT."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from kafka import KafkaConsumer, TopicPartition

from foundation.broker import free_port

pytestmark = [pytest.mark.integration, pytest.mark.demo]


def _published(bootstrap: str, topic: str) -> int:
    consumer = KafkaConsumer(bootstrap_servers=bootstrap)
    try:
        parts = consumer.partitions_for_topic(topic) or set()
        ends = consumer.end_offsets([TopicPartition(topic, p) for p in parts])
        return int(sum(ends.values()))
    finally:
        consumer.close()


def test_demo_publishes_and_stops_cleanly(tmp_path: Path) -> None:
    port, dash_port = free_port(), free_port()
    env = dict(os.environ, TAPAS_DASHBOARD__PORT=str(dash_port), TAPAS_STORE__PATH=str(tmp_path / "h.sqlite"),
               TAPAS_REGISTRY_DIR=str(tmp_path / "registry"), TAPAS_WORKER__DATA_DIR=str(tmp_path / "faust"))
    proc = subprocess.Popen(
        [sys.executable, "-m", "tapas.cli", "demo", "--servers", "40", "--speed", "4", "--broker-port", str(port),
         "--log-dir", str(tmp_path / "logs")],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True,
    )
    bootstrap = f"127.0.0.1:{port}"
    counts: dict[str, int] = {}
    try:
        t0 = time.monotonic()
        while time.monotonic() - t0 < 90:
            time.sleep(3)
            if proc.poll() is not None:
                break
            try:
                counts = {t: _published(bootstrap, t) for t in (
                    "tapas.forecasts.server", "tapas.routing.weights", "tapas.placement.hints",
                    "tapas.control.commands")}
            except Exception:  # noqa: BLE001 - broker not up yet
                continue
            if counts["tapas.forecasts.server"] and counts["tapas.routing.weights"] and (
                    counts["tapas.placement.hints"] or counts["tapas.control.commands"]):
                break
        elapsed = time.monotonic() - t0
        descendants = psutil.Process(proc.pid).children(recursive=True) if proc.poll() is None else []
        os.kill(proc.pid, signal.SIGINT)
        out = proc.communicate(timeout=60)[0].decode(errors="replace")
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    print(f"demo published within {elapsed:.0f} s: {counts}")
    assert counts.get("tapas.forecasts.server"), out[-3000:]
    assert counts.get("tapas.routing.weights"), out[-3000:]
    assert counts.get("tapas.placement.hints") or counts.get("tapas.control.commands"), out[-3000:]
    assert elapsed < 90
    time.sleep(1)
    left = [p.pid for p in descendants if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    assert not left, f"demo left processes running: {left}"
    assert proc.returncode == 0, out[-3000:]
