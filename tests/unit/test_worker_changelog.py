"""The worker's commit hook: changed states go to the changelog, and a failed send keeps them changed."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from foundation.settings import load_settings
from streams.app import BEFORE_COMMIT_ATTR, WorkerApp, load_forecaster
from streams.processor import RawRecord, TopologyView
from streams.telemetry_factory import SyntheticTelemetry
from tapas.bootstrap import kafka_clients


def _worker(tmp_path: Path) -> WorkerApp:
    settings = load_settings(kafka={"bootstrap_servers": "127.0.0.1:9"},
                             worker={"app_id": "unit-changelog", "data_dir": str(tmp_path / "faust")})
    view = TopologyView.from_topology(None, inlet_limit_c=27.0)
    app = WorkerApp(settings, view=view, forecaster=load_forecaster(tmp_path / "reg"), store=None,
                    clients=kafka_clients(settings))
    fleet = SyntheticTelemetry(["s1", "s2", "s3"], start_at=datetime.now(UTC), seed=1)
    gpu, _, _ = fleet.step()
    app.processor.handle_gpu([RawRecord(g.server_id.encode(), g.to_bytes(), "gpu") for g in gpu])
    return app


def test_commit_hook_sends_every_changed_state_once_and_fills_the_table(tmp_path: Path) -> None:
    app = _worker(tmp_path)
    sent: list[tuple[str, list[tuple[bytes, bytes]]]] = []

    async def fake_send(topic: str, messages: list[tuple[bytes, bytes]]) -> list[Any]:
        sent.append((topic, list(messages)))
        done: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        done.set_result(None)
        return [done]

    app._send_batched = fake_send  # type: ignore[method-assign]
    assert getattr(app.app, BEFORE_COMMIT_ATTR) == app.flush_states_batched
    expected = {sid: app.processor.state_bytes(sid) for sid in app.processor.states.ids}
    assert asyncio.run(app.flush_states_batched()) is True
    assert [t for t, _ in sent] == ["unit-changelog-server-state-changelog"]
    assert {k.decode(): v for k, v in sent[0][1]} == expected
    assert {k.decode(): v for k, v in app.table.data.items()} == expected
    assert asyncio.run(app.flush_states_batched()) is True and len(sent) == 1  # nothing changed since


def test_revocation_writes_through_the_ordered_batched_path_then_forgets(tmp_path: Path) -> None:
    """A revocation's flush is queued behind earlier batches (one path), never as buffered per-key table sends."""
    app = _worker(tmp_path)
    sent: list[list[tuple[bytes, bytes]]] = []

    async def fake_send(topic: str, messages: list[tuple[bytes, bytes]]) -> list[Any]:
        sent.append(list(messages))
        done: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        done.set_result(None)
        return [done]

    def per_key_send(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("state sent through Faust's per-key changelog path")

    app._send_batched = fake_send  # type: ignore[method-assign]
    app.table.on_key_set = per_key_send  # type: ignore[method-assign]
    expected = {sid: app.processor.state_bytes(sid) for sid in app.processor.states.ids}
    asyncio.run(app._on_revoked(None, set()))
    assert len(sent) == 1 and {k.decode(): v for k, v in sent[0]} == expected
    assert app.processor.states.ids == [] and not app.processor.dirty


@pytest.mark.parametrize("fail_at", ["queue", "delivery"])
def test_failed_changelog_send_skips_the_commit_and_keeps_states_changed(tmp_path: Path, fail_at: str) -> None:
    app = _worker(tmp_path)
    changed = set(app.processor.dirty)
    assert changed

    async def failing_send(topic: str, messages: list[tuple[bytes, bytes]]) -> list[Any]:
        if fail_at == "queue":
            raise OSError("broker unreachable")
        lost: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        lost.set_exception(OSError("delivery timed out"))
        return [lost]

    app._send_batched = failing_send  # type: ignore[method-assign]
    assert asyncio.run(app.flush_states_batched()) is False
    assert app.processor.dirty == changed


def test_a_forecast_batch_the_producer_gives_up_on_is_counted_not_silent(tmp_path: Path) -> None:
    app = _worker(tmp_path)

    async def run() -> None:
        async def lost_send(topic: str, messages: list[tuple[bytes, bytes]]) -> list[Any]:
            lost: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
            lost.set_exception(OSError("delivery timed out"))
            return [lost]

        app._send_batched = lost_send  # type: ignore[method-assign]
        fleet = SyntheticTelemetry(["s9"], start_at=datetime.now(UTC), seed=2)
        gpu, _, _ = fleet.step()
        await app._send(app.processor.handle_gpu([RawRecord(g.server_id.encode(), g.to_bytes(), "gpu") for g in gpu]))
        await asyncio.sleep(0)  # done callbacks run on the next loop turn

    asyncio.run(run())
    assert app.num_forecast_batches_failed == 1
