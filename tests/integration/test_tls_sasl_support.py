"""What TLS and SASL the embedded Tansu broker supports itself, pinned so a Tansu upgrade is noticed.

TLS (SECURITY.md, "Embedded broker"): Tansu 0.6's command line refuses ``--cert`` together
with ``--key``, and with ``--cert`` alone it keeps listening in plaintext (a TLS client's
handshake times out), which is why ``foundation.tls`` terminates TLS with stunnel.

Findings (SECURITY.md, "SASL"): Tansu 0.6 with ``--authentication`` offers only SCRAM
(``SaslHandshake`` lists ``SCRAM-SHA-512``) and closes the connection when a client asks
for PLAIN; its users live in the broker's storage, ``tansu user create`` cannot
authenticate against a broker that requires authentication, and the in-memory storage
the embedded broker uses does not survive the restart needed to turn authentication on.
So no client can ever log in to an embedded broker with authentication: SASL is
configured for production Kafka only (``KafkaSettings.sasl_*``), and this test fails
the day one of these facts changes, which is the cue to add an end-to-end SASL test.
"""

from __future__ import annotations

import socket
import struct
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from foundation.broker import free_port, stop_process_group, tansu_binary
from foundation.tls import wait_for_port

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def auth_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    port = free_port()
    url = f"tcp://127.0.0.1:{port}"
    log = tmp_path_factory.mktemp("sasl") / "tansu.log"
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            [str(tansu_binary()), "broker", "--listener-url", url, "--advertised-listener-url", url,
             "--storage-engine", "memory://tansu/", "--authentication"],
            stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )
    try:
        wait_for_port("127.0.0.1", port, 10.0, proc)
        yield url
    finally:
        stop_process_group(proc, 10.0)


def _sasl_handshake(url: str, mechanism: str) -> tuple[int, list[str]] | None:
    """Send SaslHandshake v1; returns (error_code, enabled mechanisms), or None if the broker hung up."""
    host, port = url.removeprefix("tcp://").split(":")
    client_id, mech = b"sasl-probe", mechanism.encode()
    body = struct.pack(">hhih", 17, 1, 1, len(client_id)) + client_id + struct.pack(">h", len(mech)) + mech
    with socket.create_connection((host, int(port)), timeout=5) as sock:
        sock.sendall(struct.pack(">i", len(body)) + body)
        head = sock.recv(4)
        if len(head) < 4:
            return None
        size = struct.unpack(">i", head)[0]
        data = b""
        while len(data) < size:
            chunk = sock.recv(size - len(data))
            if not chunk:
                return None
            data += chunk
    _correlation, error, count = struct.unpack(">ihi", data[:10])
    offset, names = 10, []
    for _ in range(count):
        (length,) = struct.unpack(">h", data[offset:offset + 2])
        names.append(data[offset + 2:offset + 2 + length].decode())
        offset += 2 + length
    return error, names


def test_authenticating_tansu_offers_scram_only_and_refuses_plain(auth_broker: str) -> None:
    scram = _sasl_handshake(auth_broker, "SCRAM-SHA-512")
    assert scram == (0, ["SCRAM-SHA-512"]), f"Tansu's SASL offer changed: {scram}; revisit SECURITY.md#sasl"
    assert _sasl_handshake(auth_broker, "PLAIN") is None, "Tansu now answers PLAIN: add a SASL/PLAIN end-to-end test"


def test_no_user_can_be_created_on_an_authenticating_embedded_broker(auth_broker: str, tmp_path: Path) -> None:
    done = subprocess.run(
        [str(tansu_binary()), "user", "create", "--broker", auth_broker, "--mechanism", "scram512", "alice", "pw"],
        capture_output=True, text=True, timeout=30, cwd=tmp_path,
    )
    assert done.returncode != 0, "tansu user create now works with --authentication: add a SCRAM end-to-end test"


def test_kafka_client_without_credentials_is_refused(auth_broker: str) -> None:
    from kafka import KafkaAdminClient
    from kafka.errors import KafkaTimeoutError

    with pytest.raises(KafkaTimeoutError):
        admin = KafkaAdminClient(bootstrap_servers=auth_broker.removeprefix("tcp://"), request_timeout_ms=2000,
                                 bootstrap_timeout_ms=3000)
        admin.close()


def test_tansu_refuses_cert_and_key_together(tmp_path: Path) -> None:
    from foundation.tls import write_test_pki

    pki = write_test_pki(tmp_path / "pki")
    url = f"tcp://127.0.0.1:{free_port()}"
    done = subprocess.run(
        [str(tansu_binary()), "broker", "--listener-url", url, "--advertised-listener-url", url,
         "--storage-engine", "memory://tansu/", "--cert", str(pki.server_cert), "--key", str(pki.server_key)],
        capture_output=True, text=True, timeout=15,
    )
    assert done.returncode != 0 and "cannot be used with" in done.stderr, (
        "Tansu now accepts --cert with --key: try native TLS and drop stunnel if the handshake works")
