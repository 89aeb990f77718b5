"""Browser-test setup: headless Debian Chromium for dash[testing], and a live pipeline feed.

Plain ``pytest`` works: the Chrome options below are always headless (DESIGN.md §9),
so ``--headless --webdriver Chrome`` is not needed. Tests skip, naming the package to
install, when Chromium or its driver is missing (``.ci/run`` installs both).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from foundation.broker import stop_process_group

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
REPO = Path(__file__).resolve().parents[2]
HAVE_BROWSER = Path(CHROMIUM).exists() and shutil.which("chromedriver") is not None


def pytest_setup_options() -> Any:
    """Chrome options that work with Debian's chromium + chromium-driver in a container."""
    from selenium.webdriver.chrome.options import Options

    options = Options()
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--no-first-run", "--window-size=1600,1760", "--force-device-scale-factor=1"):
        options.add_argument(arg)
    options.binary_location = CHROMIUM
    return options


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    skip = pytest.mark.skip(reason="needs Debian chromium and chromium-driver (apt-get install chromium "
                                   "chromium-driver; .ci/run does it)")
    for item in items:
        if "tests/browser/" in str(item.fspath).replace("\\", "/"):
            item.add_marker(pytest.mark.browser)
            if not HAVE_BROWSER:
                item.add_marker(skip)


@dataclass
class FeedControl:
    """What a test may change in the running feed."""

    hot_zone: str | None = None
    supply_rise_c: float = 0.0
    running: bool = True


class PipelinePublisher:
    """Publishes, once a second, what the stream worker and controller publish for a simulated cluster.

    Messages are built from ``foundation.topology.default_topology`` by
    :func:`bench.dashboard.synthetic_tick` and go through the real embedded broker on
    per-test topics; the dashboard's consumer reads them back like production.
    """

    def __init__(self, bootstrap: str, topics: Any, topology: Any, *, tick_s: float = 1.0, seed: int = 0) -> None:
        from kafka import KafkaProducer

        self.topics = topics
        self.topology = topology
        self.tick_s = tick_s
        self.control = FeedControl()
        self.rng = np.random.default_rng(seed)
        self.producer = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=5)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.ticks = 0
        self.last_published_at: datetime | None = None
        #: Per-server load (0-1), a mean-reverting random walk so traces look like real load.
        self.load = np.clip(0.6 + 0.15 * self.rng.normal(size=topology.num_servers), 0.1, 1.0)

    def next_load(self) -> np.ndarray:
        target = 0.6 + 0.2 * np.sin(np.arange(self.load.size) * 0.7)
        self.load = np.clip(self.load + 0.15 * (target - self.load) + 0.03 * self.rng.normal(size=self.load.size),
                            0.05, 1.0)
        return self.load

    def topic_of(self, message: Any) -> str:
        for topic, model in self.topics.models_by_topic().items():
            if isinstance(message, model):
                return str(topic)
        raise KeyError(type(message).__name__)

    def publish(self, messages: list[Any]) -> None:
        for m in messages:
            key = getattr(m, "server_id", None) or getattr(m, "domain_id", None) or "k"
            self.producer.send(self.topic_of(m), key=str(key).encode(), value=m.to_bytes())
        self.producer.flush(10)

    def tick(self) -> None:
        from bench.dashboard import synthetic_tick

        at = datetime.now(UTC)
        self.publish(synthetic_tick(self.topology, at, self.rng, hot_zone=self.control.hot_zone,
                                    supply_rise_c=self.control.supply_rise_c, load=self.next_load()))
        self.ticks += 1
        self.last_published_at = at

    def _run(self) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            if self.control.running:
                self.tick()
            self._stop.wait(max(0.0, self.tick_s - (time.monotonic() - started)))

    def start(self, backfill_s: int = 0) -> PipelinePublisher:
        """Publish ``backfill_s`` seconds of history at once (backdated ticks), then tick live."""
        from datetime import timedelta

        from bench.dashboard import synthetic_tick

        now = datetime.now(UTC)
        for k in range(backfill_s, 0, -1):
            at = now - timedelta(seconds=k)
            for m in synthetic_tick(self.topology, at, self.rng, with_samples=k <= 90, load=self.next_load()):
                key = getattr(m, "server_id", None) or getattr(m, "domain_id", None) or "k"
                self.producer.send(self.topic_of(m), key=str(key).encode(), value=m.to_bytes())
        self.tick()
        self._thread = threading.Thread(target=self._run, name="test-pipeline-publisher", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)
        self.producer.close(5)


class SimPipelineProcess:
    """``tests.browser.sim_pipeline`` as a child process: simulator → stream-worker core → controller → topics.

    A separate process, as in production, so the pipeline's CPU does not compete with the
    page's callbacks for this process's GIL. Events it publishes are read back from its
    JSON-lines log with the wall-clock time of publication.
    """

    def __init__(self, bootstrap: str, topics: Any, num_servers: int, *, trace_path: Path, workdir: Path,
                 scenario: str, hours: float, backfill_s: int, layout: dict[str, Any] | None = None) -> None:
        import dataclasses
        import json

        self.events_path = workdir / "sim-events.jsonl"
        self.ready_path = workdir / "sim-ready"
        self.args = [sys.executable, "-m", "tests.browser.sim_pipeline", "--bootstrap", bootstrap,
                     "--topics", json.dumps(dataclasses.asdict(topics)), "--servers", str(num_servers),
                     "--trace", str(trace_path), "--scenario", scenario, "--hours", str(hours),
                     "--backfill-s", str(backfill_s), "--registry", str(workdir / "registry"),
                     "--events", str(self.events_path), "--ready", str(self.ready_path),
                     "--layout", json.dumps(layout or {})]
        self.log_path = workdir / "sim-pipeline.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.last_published_at: datetime | None = None

    def start(self, timeout_s: float = 90.0) -> SimPipelineProcess:
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(self.args, stdout=log, stderr=subprocess.STDOUT, cwd=REPO,
                                         start_new_session=True)
        deadline = time.monotonic() + timeout_s
        while not self.ready_path.exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"sim pipeline did not start:\n{self.log_path.read_text()[-3000:]}")
            time.sleep(0.2)
        return self

    @property
    def events(self) -> list[tuple[float, Any]]:
        """(wall-clock seconds when published, ControlEvent) for every simulator event so far."""
        import json

        from contracts import ControlEvent

        if not self.events_path.exists():
            return []
        out = []
        for line in self.events_path.read_text().splitlines():
            if line.strip():
                rec = json.loads(line)
                out.append((float(rec["published_at_s"]), ControlEvent.model_validate(rec["event"])))
        return out

    def stop(self) -> None:
        stop_process_group(self.proc, 10.0)


@dataclass
class LiveDashboard:
    """A dashboard app wired to a live feed through the broker."""

    app: Any
    view: Any
    topology: Any
    publisher: Any
    consumer: Any


@pytest.fixture
def live_dashboard(broker: Any, topic_factory: Callable[..., str], data_dir: Path,
                   tmp_path: Path) -> Iterator[Callable[..., LiveDashboard]]:
    """Factory: ``live_dashboard(num_servers=40, stale_after_s=..., username=..., password=..., sim=...)``.

    ``sim={"scenario": ..., "hours": ..., "backfill_s": ...}`` feeds the page from the simulator through the
    stream worker's core; otherwise a synthetic publisher shaped like the pipeline's output is used.
    """
    from dashboard.app import create_app
    from dashboard.view import DashboardTopics, DashboardView, FloorLayout, ViewConsumer
    from foundation.settings import KafkaSettings
    from foundation.topology import load_topology
    from tapas.bootstrap import kafka_clients

    started: list[LiveDashboard] = []

    def make(num_servers: int = 40, *, stale_after_s: float = 10.0, refresh_s: float = 1.5,
             username: str | None = None, password: str | None = None, backfill_s: int = 0,
             sim: dict[str, Any] | None = None, layout: dict[str, Any] | None = None) -> LiveDashboard:
        tag = uuid.uuid4().hex[:6]
        topics = DashboardTopics(**{name: topic_factory(f"dash-{name}-{tag}", partitions=2)
                                    for name in DashboardTopics.__dataclass_fields__})
        topo = load_topology(None, num_servers=num_servers, **(layout or {}))
        view = DashboardView(layout=FloorLayout.from_topology(topo), stale_after_s=stale_after_s)
        consumer = ViewConsumer(view, clients=kafka_clients(KafkaSettings(bootstrap_servers=broker.bootstrap)),
                                topics=topics).start()
        publisher: Any
        if sim is not None:
            trace = data_dir / "azure-llm-inference-2023" / "AzureLLMInferenceTrace_code.csv"
            publisher = SimPipelineProcess(broker.bootstrap, topics, num_servers, trace_path=trace,
                                           workdir=tmp_path, layout=layout, **sim).start()
        else:
            publisher = PipelinePublisher(broker.bootstrap, topics, topo).start(backfill_s)
        app = create_app(view, refresh_s=refresh_s, username=username, password=password,
                         consuming=lambda: consumer.alive)
        live = LiveDashboard(app, view, topo, publisher, consumer)
        started.append(live)
        return live

    yield make
    for live in started:
        live.publisher.stop()
        live.consumer.stop()
