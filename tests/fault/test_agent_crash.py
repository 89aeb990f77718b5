"""Fault: the node agent is SIGKILLed with caps applied, then restarted (issue 22, "Caps outlive the agent").

A real ``tapas`` agent process (``tests.agent_proc``: ``run_agent`` with a GPU backend
that records every write to a file) against the real embedded broker. Before the fix
the restarted agent never touched the GPUs its previous life had capped: a cap whose
command expired while the agent was dead stayed on the GPU for good. After it the
restarted agent reconciles against its fsync'd state file: still-valid caps re-applied,
expired ones reset; SIGTERM then lifts every cap.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from kafka import KafkaProducer

from contracts import ReconfigCommand, ReconfigParams
from controller.signing import public_key_text, sign_command
from tests.agent_proc import gpu_state
from tests.integration.test_agent_attacks import KEY

pytestmark = [pytest.mark.integration, pytest.mark.fault]


def start_agent(tmp: Path, name: str, bootstrap: str, topics: dict[str, str]) -> tuple[subprocess.Popen[bytes], Path]:
    ready = tmp / f"{name}.ready"
    cfg = {"settings": {"kafka": {"bootstrap_servers": bootstrap},
                        "controller": {"agent_reconcile_s": 1.0, "agent_health_port": 0, "agent_state_dir": str(tmp / "state"),
                                       "command_public_keys": [public_key_text(KEY.public_key())]}},
           "server_id": "s1", "record": str(tmp / "gpus.jsonl"), "ready_file": str(ready), **topics}
    (tmp / f"{name}.json").write_text(json.dumps(cfg))
    proc = subprocess.Popen([sys.executable, "-m", "tests.agent_proc", str(tmp / f"{name}.json")],
                            env={**os.environ, "PYTHONPATH": os.getcwd()}, stderr=open(tmp / f"{name}.log", "wb"))
    deadline = time.monotonic() + 40
    while not ready.exists() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.2)
    assert ready.exists(), (tmp / f"{name}.log").read_text()[-3000:]
    return proc, ready


def wait_for(pred: Callable[[], bool], timeout_s: float = 20) -> bool:
    deadline = time.monotonic() + timeout_s
    while not pred() and time.monotonic() < deadline:
        time.sleep(0.2)
    return pred()


def test_caps_are_reconciled_after_an_agent_crash(broker: object, topic_factory: Callable[..., str],
                                                  tmp_path: Path) -> None:
    bootstrap = broker.bootstrap  # type: ignore[attr-defined]
    topics = {"commands": topic_factory("cmd"), "status": topic_factory("st"), "events": topic_factory("ev")}
    record = tmp_path / "gpus.jsonl"
    first, _ = start_agent(tmp_path, "first", bootstrap, topics)
    second = None
    try:
        now = datetime.now(UTC)
        long_cap = ReconfigCommand(command_id="cmd-longcap1", issued_at=now, expires_at=now + timedelta(seconds=300),
                                   server_id="s1", gpu_indices=[0], action="set_frequency_cap",
                                   params=ReconfigParams(frequency_cap_mhz=1100.0), reason="fault", mode="enforce")
        short_cap = ReconfigCommand(command_id="cmd-shortcp1", issued_at=now, expires_at=now + timedelta(seconds=6),
                                    server_id="s1", gpu_indices=[1], action="set_power_limit",
                                    params=ReconfigParams(power_limit_w=200.0), reason="fault", mode="enforce")
        producer = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=0)
        for c in (long_cap, short_cap):
            producer.send(topics["commands"], key=b"s1", value=sign_command(c, KEY).to_bytes()).get(timeout=10)
        producer.close(timeout=5)
        assert wait_for(lambda: gpu_state(record) == {0: (1100.0, None), 1: (None, 200.0)}), gpu_state(record)
        first.send_signal(signal.SIGKILL)  # no clean-up of any kind
        first.wait(10)
        assert gpu_state(record) == {0: (1100.0, None), 1: (None, 200.0)}  # the caps outlive the dead agent
        time.sleep(max(0.0, (short_cap.expires_at - datetime.now(UTC)).total_seconds() + 1))  # expires meanwhile
        mark = len(record.read_text().splitlines())
        second, _ = start_agent(tmp_path, "second", bootstrap, topics)
        writes_by_second = [json.loads(x) for x in record.read_text().splitlines()[mark:]]
        assert {w["gpu"] for w in writes_by_second} == {0, 1}, writes_by_second  # only GPUs it had capped
        assert gpu_state(record) == {0: (1100.0, None), 1: (None, None)}  # valid cap kept, expired cap reset
        second.send_signal(signal.SIGTERM)
        assert second.wait(30) == 0
        assert gpu_state(record) == {0: (None, None), 1: (None, None)}  # SIGTERM lifts every cap
        state = json.loads((tmp_path / "state" / "s1.json").read_text())
        assert state["active"] == []
    finally:
        for p in (first, second):
            if p is not None and p.poll() is None:
                p.kill()
                p.wait(10)
