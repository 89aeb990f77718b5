"""Helpers shared by the stream-worker tests: the worker as a child process and group-less consumers."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Any

from kafka import KafkaConsumer, TopicPartition

from foundation.broker import free_port, stop_process_group


class WorkerProcess:
    """``tapas worker`` as a child process with its own app id, web port and folders."""

    def __init__(self, bootstrap: str, workdir: Path, extra_env: dict[str, str] | None = None) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.env = dict(os.environ, TAPAS_KAFKA__BOOTSTRAP_SERVERS=bootstrap,
                        TAPAS_WORKER__APP_ID=f"test-worker-{uuid.uuid4().hex[:8]}",
                        TAPAS_WORKER__DATA_DIR=str(workdir / "faust"), TAPAS_STORE__PATH=str(workdir / "h.sqlite"),
                        TAPAS_REGISTRY_DIR=str(workdir / "registry"), **(extra_env or {}))
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(self) -> None:
        self.starts += 1
        log = open(self.workdir / f"worker-{self.starts}.log", "wb")  # noqa: SIM115 - closed with the process
        self.proc = subprocess.Popen([sys.executable, "-m", "tapas.cli", "worker", "--web-port", str(self.port),
                                      "--loglevel", "INFO"], env=self.env, cwd=self.workdir,
                                     stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()

    def state(self, timeout_s: float = 60.0) -> dict[str, Any]:
        """The worker's state page (waits until its web server answers)."""
        deadline = time.monotonic() + timeout_s
        while True:
            assert self.proc is not None and self.proc.poll() is None, self.log_tail()
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/tapas/state/", timeout=5) as r:
                    return json.loads(r.read())  # type: ignore[no-any-return]
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.3)

    def probe(self, path: str) -> tuple[int, dict[str, Any]]:
        """Status and JSON body of ``/healthz`` or ``/readyz`` (503 answers included)."""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=5) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read())

    def kill(self) -> None:
        assert self.proc is not None
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        stop_process_group(self.proc, 30.0)

    def log_tail(self) -> str:
        logs = sorted(self.workdir.glob("worker-*.log"))
        return logs[-1].read_text(errors="replace")[-3000:] if logs else ""


def end_consumer(bootstrap: str, topic: str) -> KafkaConsumer:
    """A group-less consumer positioned at the current end of ``topic``."""
    c = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    tps = [TopicPartition(topic, p) for p in sorted(c.partitions_for_topic(topic) or [])]
    c.assign(tps)
    c.seek_to_end()
    for tp in tps:
        c.position(tp)
    return c


def latest_by_key(bootstrap: str, topic: str, want: Any, timeout_s: float) -> dict[bytes, bytes]:
    """Newest value per key of ``topic`` from its beginning, polled until ``want(latest)`` holds or time runs out."""
    c = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    try:
        deadline = time.monotonic() + timeout_s
        tps: list[TopicPartition] = []
        while not tps and time.monotonic() < deadline:
            tps = [TopicPartition(topic, p) for p in sorted(c.partitions_for_topic(topic) or [])]
            if not tps:
                c.topics()  # refresh metadata: the topic may not exist yet
                time.sleep(0.3)
        c.assign(tps)
        c.seek_to_beginning()
        latest: dict[bytes, bytes] = {}
        while time.monotonic() < deadline and not want(latest):
            for msgs in c.poll(timeout_ms=300).values():
                latest.update((m.key, m.value) for m in msgs)
        return latest
    finally:
        c.close()


def collect(c: KafkaConsumer, want: Any, timeout_s: float) -> list[Any]:
    """Poll until ``want(messages)`` is true or the timeout passes; returns every message seen."""
    seen: list[Any] = []
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and not want(seen):
        for msgs in c.poll(timeout_ms=300).values():
            seen.extend(msgs)
    return seen
