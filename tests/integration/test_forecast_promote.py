"""Train → promote → a running worker switches version, through the real embedded broker.

The worker is ``tapas worker`` as a child process (the STREAMS worker); training and
promotion go through the ``tapas train --promote`` command line, as a data scientist
would run them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import pytest

from forecasting.announce import ModelFollower, announce, announcement_from_record
from forecasting.registry import promote, save_version
from forecasting.state import ForecasterParams
from foundation.broker import free_port, stop_process_group
from foundation.settings import KafkaSettings
from tapas.bootstrap import kafka_clients

pytestmark = pytest.mark.integration


def _env(bootstrap: str, workdir: Path) -> dict[str, str]:
    return dict(os.environ, TAPAS_KAFKA__BOOTSTRAP_SERVERS=bootstrap, TAPAS_REGISTRY_DIR=str(workdir / "registry"),
                TAPAS_WORKER__APP_ID=f"fc-worker-{uuid.uuid4().hex[:8]}",
                TAPAS_WORKER__DATA_DIR=str(workdir / "faust"), TAPAS_STORE__PATH=str(workdir / "h.sqlite"))


def _worker_version(port: int, proc: subprocess.Popen[bytes], log: Path, timeout_s: float) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        assert proc.poll() is None, log.read_text(errors="replace")[-3000:]
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/tapas/state/", timeout=5) as r:
                return json.loads(r.read())["model_version"]
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.3)


def test_train_promote_and_running_worker_switches(broker: Any, tmp_path: Path) -> None:
    env = _env(broker.bootstrap, tmp_path)
    history = tmp_path / "history.parquet"
    from forecasting.history import simulated_history

    simulated_history(2, 0.5, seed=11).to_parquet(history)
    port = free_port()
    log = tmp_path / "worker.log"
    with open(log, "wb") as fh:
        proc = subprocess.Popen([sys.executable, "-m", "tapas.cli", "worker", "--web-port", str(port)], env=env,
                                cwd=tmp_path, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        assert _worker_version(port, proc, log, 90.0) == "physics-default"
        version = f"it-{uuid.uuid4().hex[:8]}"
        done = subprocess.run([sys.executable, "-m", "tapas.cli", "train", "--history", str(history),
                               "--version", version, "--promote", "--no-evaluate"], env=env, cwd=tmp_path, capture_output=True,
                              text=True, timeout=120)
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
        assert f"announced {version}" in done.stdout
        deadline = time.monotonic() + 30
        seen = None
        while time.monotonic() < deadline:
            seen = _worker_version(port, proc, log, 10.0)
            if seen == version:
                break
            time.sleep(0.5)
        assert seen == version, log.read_text(errors="replace")[-3000:]
    finally:
        stop_process_group(proc, 30.0)


def test_follower_loads_verified_announcements_and_refuses_tampered_ones(broker: Any, tmp_path: Path,
                                                                        topic_factory: Any) -> None:
    topic = topic_factory("models")
    kw = kafka_clients(KafkaSettings(bootstrap_servers=broker.bootstrap))
    registry = tmp_path / "registry"
    save_version(registry, ForecasterParams(version="good-1", tau_thermal_s=28.0), {})
    announce(kw, announcement_from_record(promote(registry, "good-1")), topic=topic)
    mv = save_version(registry, ForecasterParams(version="bad-2"), {})
    record = promote(registry, "bad-2")
    mv.path.write_text(mv.path.read_text().replace('"b_c": 5.0', '"b_c": -40.0'))  # tampered after promotion
    announce(kw, announcement_from_record(record), topic=topic)
    follower = ModelFollower(kw, registry, topic=topic)
    try:
        got = None
        deadline = time.monotonic() + 10
        while got is None and time.monotonic() < deadline:
            got = follower.poll(0.5)
        assert got is not None and got.version == "good-1" and got.params.tau_thermal_s == 28.0
        assert follower.poll(1.0) is None  # the tampered one was refused, nothing newer
    finally:
        follower.close()
