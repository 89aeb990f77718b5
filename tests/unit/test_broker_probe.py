"""The broker readiness probe: quiet while nothing listens, a clear error at its deadline."""

from __future__ import annotations

import logging
import socket

import pytest

from contracts.errors import ConfigError
from foundation.broker import _accepts_tcp, free_port, wait_for_metadata


def test_accepts_tcp_sees_a_listener_and_not_a_free_port() -> None:
    with socket.socket() as srv:
        srv.bind(("127.0.0.1", 0))
        srv.listen()
        port = srv.getsockname()[1]
        assert _accepts_tcp(f"127.0.0.1:{port}")
        assert _accepts_tcp(f"127.0.0.1:{free_port()}, 127.0.0.1:{port}")
    assert not _accepts_tcp(f"127.0.0.1:{free_port()}")
    assert not _accepts_tcp("no-port-here")


def test_waiting_for_a_broker_that_is_not_up_logs_no_kafka_errors(caplog: pytest.LogCaptureFixture) -> None:
    """``make demo`` used to print kafka-python ECONNREFUSED ERROR lines while Tansu started."""
    caplog.set_level(logging.DEBUG)
    with pytest.raises(ConfigError, match="did not answer within 1 s: nothing accepts TCP"):
        wait_for_metadata(f"127.0.0.1:{free_port()}", 1.0)
    assert not [r for r in caplog.records if r.name.startswith("kafka") and r.levelno >= logging.WARNING]
