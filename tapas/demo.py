"""The one-command demo: every TAPAS process on embedded defaults, supervised, stopped cleanly.

``tapas demo`` starts the embedded broker in this process, then the simulator feed,
stream worker(s), controller and dashboard as child processes (each in its own
process group), a small synthetic VM allocator that asks for placements, and
prints one status line every few seconds from broker offsets. Ctrl-C (SIGINT) or
SIGTERM stops the children (TERM, then KILL after a grace period) and the broker,
leaving no process behind.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

from contracts.messages import PlacementRequest
from contracts.topics import topic_for
from foundation.broker import EmbeddedBroker
from foundation.kafka import SyncConsumer
from foundation.settings import Settings
from tapas.bootstrap import kafka_clients

log = logging.getLogger(__name__)

#: Topics whose message rates the status line reports.
STATUS_TOPICS = {
    "samples": "tapas.telemetry.gpu",
    "forecasts": "tapas.forecasts.server",
    "weights": "tapas.routing.weights",
    "commands": "tapas.control.commands",
    "hints": "tapas.placement.hints",
}


@dataclass
class Child:
    """A supervised child process."""

    name: str
    argv: list[str]
    proc: subprocess.Popen[bytes] | None = None
    log_file: IO[bytes] | None = None


@dataclass
class DemoPlan:
    """What the demo runs; built from settings and CLI options."""

    scenario: str = "normal"
    num_servers: int = 200
    speed: float = 1.0
    num_workers: int = 1
    with_dashboard: bool = True
    placement_every_s: float = 5.0
    log_dir: Path = Path("var/demo")
    extra_env: dict[str, str] = field(default_factory=dict)


def child_commands(plan: DemoPlan, settings: Settings) -> list[Child]:
    """The CLI invocations of every demo process (each one a documented `tapas` command)."""
    py = [sys.executable, "-m", "tapas.cli"]
    children = [
        Child("feed", py + ["ingest", "sim", "--servers", str(plan.num_servers), "--scenario", plan.scenario,
                            "--speed", str(plan.speed)]),
    ]
    children += [Child(f"worker-{i}", py + ["worker"]) for i in range(plan.num_workers)]
    children.append(Child("controller", py + ["controller"]))
    if plan.with_dashboard:
        children.append(Child("dashboard", py + ["dashboard"]))
    return children


def _end_offsets(consumer: SyncConsumer, topics: dict[str, str]) -> dict[str, int]:
    from kafka import TopicPartition

    totals: dict[str, int] = {}
    for label, topic in topics.items():
        parts = consumer.partitions_for_topic(topic) or set()
        tps = [TopicPartition(topic, p) for p in parts]
        ends = consumer.end_offsets(tps) if tps else {}
        totals[label] = int(sum(ends.values()))
    return totals


def _worker_lag(admin: Any, consumer: SyncConsumer, group: str, topic: str) -> int | None:
    from kafka import TopicPartition

    try:
        committed = admin.list_consumer_group_offsets(group)
    except Exception:  # noqa: BLE001 - the group may not exist yet
        return None
    parts = consumer.partitions_for_topic(topic) or set()
    tps = [TopicPartition(topic, p) for p in parts]
    ends = consumer.end_offsets(tps) if tps else {}
    lag = 0
    for tp in tps:
        meta = committed.get(tp)
        lag += ends.get(tp, 0) - (meta.offset if meta is not None and meta.offset >= 0 else 0)
    return lag


class Demo:
    """Supervises the demo processes; ``run()`` blocks until stopped."""

    def __init__(self, plan: DemoPlan, settings: Settings, *, print_fn: Callable[[str], None] = print) -> None:
        self.plan = plan
        self.settings = settings
        self.print = print_fn
        self.stop_event = threading.Event()
        self.children = child_commands(plan, settings)
        self.broker: EmbeddedBroker | None = None

    def _write_cluster_file(self) -> Path:
        """One cluster file for every child, so feed, worker, controller and dashboard agree on the topology."""
        from foundation.topology import DEFAULT_CLUSTER_FILE

        src = self.settings.cluster_file or DEFAULT_CLUSTER_FILE
        text = Path(src).read_text()
        path = self.plan.log_dir / "cluster.toml"
        lines = [ln for ln in text.splitlines() if not ln.strip().startswith("num_servers")]
        idx = lines.index("[cluster]") + 1
        lines.insert(idx, f"num_servers = {self.plan.num_servers}")
        path.write_text("\n".join(lines) + "\n")
        return path

    def _env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["TAPAS_KAFKA__BOOTSTRAP_SERVERS"] = self.settings.kafka.bootstrap_servers
        env["TAPAS_CLUSTER_FILE"] = str(self._write_cluster_file().resolve())
        env.update(self.plan.extra_env)
        return env

    def start(self) -> None:
        """Start the broker and every child, in dependency order."""
        self.plan.log_dir.mkdir(parents=True, exist_ok=True)
        b = self.settings.broker
        self.broker = EmbeddedBroker(b.host, b.port, start_timeout_s=b.start_timeout_s,
                                     log_path=self.plan.log_dir / "broker.log")
        self.broker.start()
        self.settings.kafka.bootstrap_servers = self.broker.bootstrap
        self.print(f"broker   {self.broker.bootstrap} (embedded Tansu, in memory)")
        env = self._env()
        for child in self.children:
            child.log_file = open(self.plan.log_dir / f"{child.name}.log", "wb")  # noqa: SIM115
            child.proc = subprocess.Popen(child.argv, stdout=child.log_file, stderr=subprocess.STDOUT,
                                          env=env, start_new_session=True)
            self.print(f"started  {child.name:<11} pid {child.proc.pid}  log {self.plan.log_dir / child.name}.log")
        if self.plan.with_dashboard:
            d = self.settings.dashboard
            self.print(f"dashboard http://{d.host}:{d.port}/")

    def stop(self, grace_s: float = 8.0) -> None:
        """TERM every child's process group, KILL what is left after ``grace_s``, stop the broker."""
        for child in reversed(self.children):
            if child.proc and child.proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(child.proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        for child in self.children:
            if child.proc is None:
                continue
            try:
                child.proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(child.proc.pid, signal.SIGKILL)
                child.proc.wait(5)
            # a group member that outlived its leader
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(child.proc.pid, signal.SIGKILL)
            if child.log_file:
                child.log_file.close()
        if self.broker:
            self.broker.stop()
        self.print("demo stopped; no child process left")

    def _allocator_loop(self) -> None:
        """A stand-in VM allocator: asks for a placement every few seconds, as a downstream scheduler would."""
        producer = kafka_clients(self.settings).producer("demo-allocator")
        topic = topic_for(PlacementRequest)
        i = 0
        try:
            while not self.stop_event.wait(self.plan.placement_every_s):
                i += 1
                req = PlacementRequest(request_id=f"demo-{uuid.uuid4().hex[:12]}", requested_at=datetime.now(UTC),
                                       vm_kind="iaas" if i % 2 else "saas", num_gpus=8 if i % 3 else 4,
                                       expected_lifetime_s=3600.0)
                producer.send(topic, key=req.request_id.encode(), value=req.to_bytes())
                producer.flush(5)
        finally:
            producer.close(5)

    def _status_line(self, consumer: SyncConsumer, admin: Any, prev: dict[str, int], dt: float) -> dict[str, int]:
        now = _end_offsets(consumer, STATUS_TOPICS)
        rates = {k: (now[k] - prev.get(k, 0)) / dt for k in now}
        lag = _worker_lag(admin, consumer, self.settings.worker.app_id, STATUS_TOPICS["samples"])
        dead = [c.name for c in self.children if c.proc and c.proc.poll() is not None]
        self.print(
            f"{datetime.now(UTC):%H:%M:%S} samples/s {rates['samples']:7.0f} | forecasts/s {rates['forecasts']:7.0f}"
            f" | weights {now['weights']:6d} | commands {now['commands']:5d} | hints {now['hints']:4d}"
            f" | lag {lag if lag is not None else '-'}" + (f" | EXITED: {','.join(dead)}" if dead else "")
        )
        return now

    def run(self, status_every_s: float = 5.0, until: Callable[[], bool] | None = None) -> None:
        """Start everything, print status until SIGINT/SIGTERM (or ``until()``), then stop everything."""
        prev_int = signal.signal(signal.SIGINT, lambda *_: self.stop_event.set())
        prev_term = signal.signal(signal.SIGTERM, lambda *_: self.stop_event.set())
        allocator: threading.Thread | None = None
        try:
            self.start()
            clients = kafka_clients(self.settings)
            consumer = clients.consumer("demo-status")
            admin = clients.admin("demo-status")
            allocator = threading.Thread(target=self._allocator_loop, name="demo-allocator", daemon=True)
            allocator.start()
            prev: dict[str, int] = {}
            last = time.monotonic()
            while not self.stop_event.wait(status_every_s):
                now = time.monotonic()
                prev = self._status_line(consumer, admin, prev, now - last)
                last = now
                if until is not None and until():
                    break
            consumer.close()
            admin.close()
        finally:
            self.stop_event.set()
            if allocator is not None:
                allocator.join(10)
            self.stop()
            signal.signal(signal.SIGINT, prev_int)
            signal.signal(signal.SIGTERM, prev_term)
