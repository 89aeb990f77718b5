"""Controller → commands topic → node agent, switched from advisory to enforce at run time through the mode topic."""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import fields
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from kafka import KafkaConsumer, TopicPartition

from contracts import CommandStatus, ControlEvent, decode
from controller.agent import DryRunGpuControl, NodeAgent, run_agent
from controller.service import ControllerTopics, publish_mode
from controller.signing import generate_key_pair
from foundation.broker import free_port
from foundation.settings import Settings
from tapas.bootstrap import kafka_clients
from tests.integration.test_controller_service import Harness

pytestmark = pytest.mark.integration


def test_advisory_commands_are_shown_then_enforced_after_mode_switch(broker: object, topic_factory: Callable[..., str],
                                                                     tmp_path: Path) -> None:
    bootstrap = broker.bootstrap  # type: ignore[attr-defined]
    topics = ControllerTopics(**{f.name: topic_factory(f.name) for f in fields(ControllerTopics)})
    private, public = generate_key_pair()
    h = Harness(bootstrap, topics, command_signing_key=private)  # the controller signs what it publishes
    settings = Settings(kafka={"bootstrap_servers": bootstrap},
                        controller={"agent_reconcile_s": 1.0, "agent_health_port": 0, "command_public_keys": [public],
                                    "agent_state_dir": str(tmp_path)})
    hot_server = h.topology.server_ids[0]
    gpus = DryRunGpuControl(num_gpus=8, default_limit_w=400.0)
    stop, ready = threading.Event(), threading.Event()
    agent_box: dict[str, NodeAgent] = {}

    def on_ready(a: NodeAgent) -> None:
        agent_box["a"] = a
        ready.set()

    agent_thread = threading.Thread(target=run_agent, args=(settings, hot_server, gpus), kwargs=dict(
        clients=kafka_clients(settings), stop=stop, commands_topic=topics.commands, status_topic=topics.status,
        events_topic=topics.events,
        on_ready=on_ready))
    status = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    status.assign([TopicPartition(topics.status, 0), TopicPartition(topics.events, 0)])
    reports: list[CommandStatus] = []
    events: list[ControlEvent] = []

    def pump(seconds: float) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            h.feed()
            for tp, recs in status.poll(300).items():
                for r in recs:
                    if tp.topic == topics.status:
                        reports.append(decode(CommandStatus, r.value))
                    else:
                        events.append(decode(ControlEvent, r.value))

    h.start()
    agent_thread.start()
    try:
        assert ready.wait(20)
        # advisory: the agent sees the command and reports it, nothing is set on the GPUs
        deadline = time.monotonic() + 20
        while not any("advisory" in r.detail for r in reports) and time.monotonic() < deadline:
            pump(0.5)
        assert any(r.status == "dry_run" and "advisory" in r.detail for r in reports)
        assert gpus.calls == 0 and agent_box["a"].num_applied == 0
        # operator switches to enforce through the mode topic
        publish_mode(kafka_clients(settings), "enforce", changed_by="test", topic=topics.mode)
        deadline = time.monotonic() + 20
        while agent_box["a"].num_applied == 0 and time.monotonic() < deadline:
            pump(0.5)
        assert any(e.event_kind == "mode_changed" for e in events)
        assert agent_box["a"].num_applied >= 1
        assert gpus.applied[0].frequency_cap_mhz is not None and gpus.applied[0].frequency_cap_mhz < 1410
        assert all(r.server_id == hot_server for r in reports)
        assert not any(r.status == "refused" for r in reports), [r.detail for r in reports if r.status == "refused"]
    finally:
        stop.set()
        agent_thread.join(20)
        status.close()
        h.close()


def _probe(url: str) -> tuple[int, dict[str, Any]]:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_agent_healthz_and_readyz_report_broker_staleness_and_safe_mode(broker: object,
                                                                       topic_factory: Callable[..., str]) -> None:
    bootstrap = broker.bootstrap  # type: ignore[attr-defined]
    port = free_port()
    lost_after_s = 20.0
    settings = Settings(kafka={"bootstrap_servers": bootstrap},
                        controller={"agent_health_port": port, "agent_broker_lost_after_s": lost_after_s})
    skew = [timedelta(0)]
    stop, ready = threading.Event(), threading.Event()
    box: dict[str, NodeAgent] = {}

    def on_ready(a: NodeAgent) -> None:
        box["a"] = a
        ready.set()

    # health_every_s=600: the broker check does not run during the test, so only the clock ages it
    thread = threading.Thread(target=run_agent, args=(settings, "node-7", DryRunGpuControl(num_gpus=2)), kwargs=dict(
        clients=kafka_clients(settings), stop=stop, commands_topic=topic_factory("cmd"), status_topic=topic_factory("st"),
        events_topic=topic_factory("ev"), on_ready=on_ready, health_every_s=600.0,
        clock=lambda: datetime.now(UTC) + skew[0]))
    thread.start()
    base = f"http://127.0.0.1:{port}"
    try:
        assert ready.wait(20)
        assert _probe(f"{base}/healthz") == (200, {"service": "agent", "alive": True})
        status, body = _probe(f"{base}/readyz")
        assert status == 200 and body["server_id"] == "node-7" and not body["safe_mode"], body
        skew[0] = timedelta(seconds=lost_after_s + 1)  # the broker has not answered for longer than allowed
        status, body = _probe(f"{base}/readyz")
        assert status == 503 and body["stale"] and body["age_s"] > lost_after_s, body
        skew[0] = timedelta(0)
        box["a"].broker_lost(datetime.now(UTC))
        status, body = _probe(f"{base}/readyz")
        assert status == 503 and body["safe_mode"] and body["reason"].startswith("safe mode"), body
    finally:
        stop.set()
        thread.join(20)
