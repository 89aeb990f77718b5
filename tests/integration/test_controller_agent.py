"""Controller → commands topic → node agent, switched from advisory to enforce at run time through the mode topic."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import fields
from pathlib import Path

import pytest
from kafka import KafkaConsumer, TopicPartition

from contracts import CommandStatus, ControlEvent, decode
from controller.agent import DryRunGpuControl, NodeAgent, run_agent
from controller.service import ControllerTopics, publish_mode
from controller.signing import generate_key_pair
from foundation.settings import Settings
from tests.integration.test_controller_service import Harness

pytestmark = pytest.mark.integration


def test_advisory_commands_are_shown_then_enforced_after_mode_switch(broker: object, topic_factory: Callable[..., str],
                                                                     tmp_path: Path) -> None:
    bootstrap = broker.bootstrap  # type: ignore[attr-defined]
    topics = ControllerTopics(**{f.name: topic_factory(f.name) for f in fields(ControllerTopics)})
    private, public = generate_key_pair()
    h = Harness(bootstrap, topics, command_signing_key=private)  # the controller signs what it publishes
    settings = Settings(kafka={"bootstrap_servers": bootstrap},
                        controller={"agent_reconcile_s": 1.0, "command_public_keys": [public],
                                    "agent_state_dir": str(tmp_path)})
    hot_server = h.topology.server_ids[0]
    gpus = DryRunGpuControl(num_gpus=8, default_limit_w=400.0)
    stop, ready = threading.Event(), threading.Event()
    agent_box: dict[str, NodeAgent] = {}

    def on_ready(a: NodeAgent) -> None:
        agent_box["a"] = a
        ready.set()

    agent_thread = threading.Thread(target=run_agent, args=(settings, hot_server, gpus), kwargs=dict(
        stop=stop, commands_topic=topics.commands, status_topic=topics.status, events_topic=topics.events,
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
        publish_mode(settings, "enforce", changed_by="test", topic=topics.mode)
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
