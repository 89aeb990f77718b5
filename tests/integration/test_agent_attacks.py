"""Issue 22, item 1 and item 6 against the real embedded broker and a real ``run_agent``.

An attacker with produce rights on the command topic writes raw commands; the agent
runs in a thread with a recording GPU backend (no NVML here). Before the fix each
forged command below changed the GPUs; after it, each is refused with a reason in
``command_status`` and nothing is set. The caps-outlive-the-agent half: stop lifts every
cap; an agent started while the broker is down applies the safe cap at once, keeps
running and lifts it when the broker answers.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from contracts import CommandStatus, ReconfigCommand, ReconfigParams, decode
from controller.agent import DryRunGpuControl, GpuSetting, NodeAgent, run_agent
from controller.signing import public_key_text, sign_command
from foundation.settings import Settings
from tapas.bootstrap import kafka_clients

pytestmark = pytest.mark.integration

KEY = Ed25519PrivateKey.generate()


def command(cid: str, *, freq: float | None = None, power: float | None = None, issued_at: datetime | None = None,
            ttl_s: float = 300.0, mode: str = "enforce", trigger: str = "", instance: str | None = None,
            server: str = "s1", key: Ed25519PrivateKey | None = None) -> ReconfigCommand:
    at = issued_at or datetime.now(UTC)
    c = ReconfigCommand(command_id=cid, issued_at=at, expires_at=at + timedelta(seconds=ttl_s), server_id=server,
                        action="set_frequency_cap" if freq is not None else "set_power_limit",
                        params=ReconfigParams(frequency_cap_mhz=freq, power_limit_w=power), reason="attack",
                        mode=mode, trigger=trigger, instance_id=instance)  # type: ignore[arg-type]
    return sign_command(c, key) if key is not None else c


class AgentRig:
    """A real agent in a thread, an attacker's producer and a reader of the status topic."""

    def __init__(self, bootstrap: str, topic_factory: Callable[..., str], state_dir: Path, **controller: object
                 ) -> None:
        self.commands, self.status, self.events = topic_factory("cmd"), topic_factory("status"), topic_factory("ev")
        self.settings = Settings(kafka={"bootstrap_servers": bootstrap}, controller={"agent_health_port": 0,
            "agent_reconcile_s": 1.0, "command_public_keys": [public_key_text(KEY.public_key())],
            "agent_state_dir": str(state_dir), **controller})
        self.gpus = DryRunGpuControl(num_gpus=4, default_limit_w=400.0)
        self.stop, self.ready = threading.Event(), threading.Event()
        self.agent: NodeAgent | None = None
        self.thread = threading.Thread(target=run_agent, args=(self.settings, "s1", self.gpus), kwargs=dict(
            clients=kafka_clients(self.settings), stop=self.stop, commands_topic=self.commands, status_topic=self.status, events_topic=self.events,
            on_ready=self._on_ready))
        self.producer = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=0)
        self.reader = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
        self.reader.assign([TopicPartition(self.status, 0)])
        self.reader.seek_to_beginning()  # a fresh topic: nothing published there is missed
        self.reports: dict[str, list[CommandStatus]] = {}

    def _on_ready(self, a: NodeAgent) -> None:
        self.agent = a
        self.ready.set()

    def __enter__(self) -> AgentRig:
        self.thread.start()
        assert self.ready.wait(20), "agent did not connect"
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(20)
        self.producer.close(timeout=5)
        self.reader.close()

    def send(self, cmd: ReconfigCommand) -> None:
        self.producer.send(self.commands, key=cmd.server_id.encode(), value=cmd.to_bytes()).get(timeout=10)

    def read(self) -> None:
        for recs in self.reader.poll(300).values():
            for r in recs:
                st = decode(CommandStatus, r.value)
                self.reports.setdefault(st.command_id, []).append(st)

    def wait_reports(self, ids: list[str], timeout_s: float = 20) -> dict[str, CommandStatus]:
        deadline = time.monotonic() + timeout_s
        while not all(i in self.reports for i in ids) and time.monotonic() < deadline:
            self.read()
        missing = [i for i in ids if i not in self.reports]
        assert not missing, f"no status for {missing}"
        return {i: self.reports[i][0] for i in ids}


def test_forged_commands_are_refused_with_a_reason(broker: object, topic_factory: Callable[..., str],
                                                   tmp_path: Path) -> None:
    """Reproduction 1a: anyone who can produce to the command topic could cap GPUs."""
    with AgentRig(broker.bootstrap, topic_factory, tmp_path) as rig:  # type: ignore[attr-defined]
        genuine = command("cmd-genuine1", freq=1300.0, key=KEY)
        attacks = [command("cmd-unsigned", freq=900.0),  # no signature at all
                   command("cmd-otherkey", freq=900.0, key=Ed25519PrivateKey.generate()),  # attacker's own key
                   genuine.model_copy(update={"command_id": "cmd-altered0", "params": ReconfigParams(
                       frequency_cap_mhz=900.0)})]  # a captured genuine signature on altered content
        for c in attacks:
            rig.send(c)
        got = rig.wait_reports([c.command_id for c in attacks])
        assert all(s.status == "refused" for s in got.values()), got
        assert "unsigned" in got["cmd-unsigned"].detail and "bad signature" in got["cmd-otherkey"].detail
        assert rig.gpus.calls == 0
        rig.send(genuine)
        assert rig.wait_reports(["cmd-genuine1"])["cmd-genuine1"].status == "dry_run"
        assert rig.gpus.applied[0].frequency_cap_mhz == 1300.0
        rig.send(genuine)  # a replay of the genuine command changes nothing
        deadline = time.monotonic() + 10
        while len(rig.reports["cmd-genuine1"]) < 2 and time.monotonic() < deadline:
            rig.read()
        assert [s.status for s in rig.reports["cmd-genuine1"]] == ["dry_run", "duplicate"]


def test_the_gate_holds_on_the_agents_clock_even_without_signatures(broker: object,
                                                                    topic_factory: Callable[..., str],
                                                                    tmp_path: Path) -> None:
    """Reproductions 1b-1e with signature checks explicitly off (defence in depth: the gate alone)."""
    with AgentRig(broker.bootstrap, topic_factory, tmp_path,  # type: ignore[attr-defined]
                  agent_accept_unsigned=True, agent_max_commands_per_gpu_per_min=6) as rig:
        far = command("cmd-decade01", power=100.0, issued_at=datetime.now(UTC) + timedelta(days=3650))
        rig.send(far)
        assert rig.wait_reports([far.command_id])[far.command_id].status == "refused"
        assert rig.gpus.calls == 0
        flood = [command(f"cmd-flood{i:03d}", freq=1000.0 + i, instance=f"inst-{i}") for i in range(20)]
        for c in flood:
            rig.send(c)
        got = rig.wait_reports([c.command_id for c in flood])
        assert sum(s.status == "dry_run" for s in got.values()) == 6, [s.status for s in got.values()]
        # the budget is used up: an "emergency" that raises the cap back is not exempt
        raise_ = command("cmd-emraise1", freq=2500.0, trigger="emergency")
        rig.send(raise_)
        st = rig.wait_reports([raise_.command_id])[raise_.command_id]
        assert st.status == "refused" and "rate limit" in st.detail
        assert rig.gpus.applied[0].frequency_cap_mhz == 1000.0


def test_an_agent_capped_at_advisory_applies_no_forged_enforce(broker: object, topic_factory: Callable[..., str],
                                                               tmp_path: Path) -> None:
    """Reproduction 1f: a forged mode="enforce" was applied while operators believed the system advisory."""
    with AgentRig(broker.bootstrap, topic_factory, tmp_path, agent_max_mode="advisory") as rig:  # type: ignore[attr-defined]
        c = command("cmd-enforce1", freq=900.0, key=KEY)
        rig.send(c)
        st = rig.wait_reports([c.command_id])[c.command_id]
        assert st.status == "dry_run" and "capped at advisory" in st.detail
        assert rig.gpus.calls == 0


def test_stopping_the_agent_lifts_its_caps(broker: object, topic_factory: Callable[..., str], tmp_path: Path) -> None:
    """Reproduction 6a: nothing reverted clocks or power limits when the agent stopped."""
    rig = AgentRig(broker.bootstrap, topic_factory, tmp_path)  # type: ignore[attr-defined]
    with rig:
        c = command("cmd-stopcap1", freq=1100.0, key=KEY)
        rig.send(c)
        assert rig.wait_reports([c.command_id])[c.command_id].status == "dry_run"
        assert rig.gpus.applied[0] == GpuSetting(1100.0, None)
    assert not rig.thread.is_alive()
    assert set(rig.gpus.applied.values()) == {GpuSetting()}  # every GPU it set is back to its default


@pytest.mark.parametrize("down_s", [0.0, pytest.param(40.0, marks=pytest.mark.fault)], ids=["fast", "past-30s"])
def test_an_agent_started_while_the_broker_is_down_applies_the_safe_cap_then_lifts_it(tmp_path: Path,
                                                                                      down_s: float) -> None:
    """Reproduction 6c: it exited after 30 s instead of applying the documented safe cap.

    The fast slice checks the safe cap and its lifting; the ``fault`` one also keeps the
    broker away past the old 30 s exit.
    """
    from foundation.broker import EmbeddedBroker, free_port

    port = free_port()
    settings = Settings(kafka={"bootstrap_servers": f"127.0.0.1:{port}"},
                        controller={"agent_health_port": 0, "agent_state_dir": str(tmp_path), "agent_safe_power_frac": 0.75})
    gpus = DryRunGpuControl(num_gpus=2, default_limit_w=400.0)
    stop, ready = threading.Event(), threading.Event()
    topic = f"test.agent-down.{port}"
    t = threading.Thread(target=run_agent, args=(settings, "s1", gpus), kwargs=dict(
        clients=kafka_clients(settings), stop=stop, commands_topic=topic, status_topic=topic + ".status", events_topic=topic + ".events",
        on_ready=lambda _a: ready.set()))
    t.start()
    try:
        deadline = time.monotonic() + 20
        while gpus.applied.get(0) != GpuSetting(None, 300.0) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert gpus.applied == {0: GpuSetting(None, 300.0), 1: GpuSetting(None, 300.0)}  # 0.75 x 400 W
        stop.wait(down_s)
        assert t.is_alive() and not ready.is_set()  # still running and still safe (the old code exited after 30 s)
        assert gpus.applied == {0: GpuSetting(None, 300.0), 1: GpuSetting(None, 300.0)}
        with EmbeddedBroker(port=port):
            assert ready.wait(60), "agent did not connect once the broker answered"
            deadline = time.monotonic() + 10
            while set(gpus.applied.values()) != {GpuSetting()} and time.monotonic() < deadline:
                time.sleep(0.2)
            assert set(gpus.applied.values()) == {GpuSetting()}  # broker answers: safe cap lifted
            stop.set()
            t.join(20)
    finally:
        stop.set()
        t.join(20)
