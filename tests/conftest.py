"""Shared fixtures: one embedded broker per test session, unique topics, hygiene guards."""

from __future__ import annotations

import os
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DATA_DIR = Path(os.environ.get("TAPAS_DATA_DIR", REPO.parent / "shared" / "data")).resolve()
ARTIFACTS = REPO / "artifacts"


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The shared public datasets (../shared/data by default, TAPAS_DATA_DIR to override)."""
    if not DATA_DIR.exists():
        pytest.skip(f"shared data not found at {DATA_DIR}; set TAPAS_DATA_DIR")
    return DATA_DIR


@pytest.fixture(scope="session")
def artifacts_dir() -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    return ARTIFACTS


@pytest.fixture(scope="session")
def broker() -> Iterator[object]:
    """One real embedded Tansu broker for the whole test session, on a free loopback port."""
    from foundation.broker import EmbeddedBroker, free_port

    b = EmbeddedBroker(port=free_port())
    b.start()
    try:
        yield b
    finally:
        b.stop()


@pytest.fixture
def topic_factory(broker: object) -> Callable[..., str]:
    """Create a unique topic on the session broker: ``topic_factory(partitions=1) -> name``."""
    from kafka import KafkaAdminClient
    from kafka.admin import NewTopic

    def make(prefix: str = "t", partitions: int = 1) -> str:
        name = f"test.{prefix}.{uuid.uuid4().hex[:10]}"
        admin = KafkaAdminClient(bootstrap_servers=broker.bootstrap)  # type: ignore[attr-defined]
        try:
            admin.create_topics([NewTopic(name, num_partitions=partitions, replication_factor=1)])
        finally:
            admin.close()
        return name

    return make


@pytest.fixture(autouse=True)
def _hygiene() -> Iterator[None]:
    """Fail a test that leaves TAPAS_* variables or non-daemon threads behind."""
    env_before = {k for k in os.environ if k.startswith("TAPAS_")}
    threads_before = set(threading.enumerate())
    yield
    leaked_env = {k for k in os.environ if k.startswith("TAPAS_")} - env_before
    for k in leaked_env:
        del os.environ[k]
    assert not leaked_env, f"test leaked environment variables {sorted(leaked_env)}"
    leaked = [t for t in threading.enumerate() if t not in threads_before and t.is_alive() and not t.daemon]
    for t in leaked:
        t.join(timeout=5)
    still = [t.name for t in leaked if t.is_alive()]
    assert not still, f"test leaked threads {still}"


@pytest.fixture(scope="session")
def influxql_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """URL of a real InfluxQL server: ``TAPAS_INFLUXQL_URL`` (``.ci/run`` starts one) or an ``influxd`` started here."""
    from tests.influxd_env import URL_VARIABLE, influxd_binary, start_influxd, stop_influxd

    url = os.environ.get(URL_VARIABLE)
    if url:
        yield url
        return
    if influxd_binary() is None:
        pytest.skip(f"InfluxQL store tests skipped: set {URL_VARIABLE} to an InfluxDB server, or install "
                    "influxd (apt-get install influxdb) so the tests start one")
    proc, url = start_influxd(tmp_path_factory.mktemp("influxd"))
    try:
        yield url
    finally:
        stop_influxd(proc)
