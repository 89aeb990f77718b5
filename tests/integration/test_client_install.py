"""tapas-client builds into a wheel and installs into a clean venv (deps from PyPI) where Dash, Faust and
statsmodels are absent; its weights watcher reads the embedded broker from there. Slow: builds and installs."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from kafka import KafkaProducer

from contracts import InstanceWeight, RoutingWeights

pytestmark = [pytest.mark.integration, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]


def _run(cmd: list[str], **kw: object) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}  # nothing of this tree
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env, **kw)  # type: ignore[call-overload]
    if proc.returncode != 0 and "pip" in cmd and "Could not find a version" in proc.stderr:
        pytest.skip(f"PyPI not reachable: {proc.stderr.strip()[-300:]}")
    return proc  # type: ignore[no-any-return]


def test_client_installs_without_the_platform(tmp_path: Path, broker: object,
                                              topic_factory: Callable[..., str]) -> None:
    wheels = tmp_path / "wheels"
    built = _run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", str(REPO / "clients" / "python"),
                  "-w", str(wheels)])
    assert built.returncode == 0, built.stderr[-2000:]
    wheel = next(wheels.glob("tapas_client-*.whl"))
    venv = tmp_path / "venv"
    assert _run([sys.executable, "-m", "venv", str(venv)]).returncode == 0
    py = venv / "bin" / "python"
    installed = _run([str(py), "-m", "pip", "install", "-q", str(wheel)])
    assert installed.returncode == 0, installed.stderr[-2000:]
    topic = topic_factory("weights", partitions=2)
    now = datetime.now(UTC)
    msg = RoutingWeights(endpoint_id="llama-70b", issued_at=now, valid_until=now + timedelta(seconds=30),
                         weights=[InstanceWeight(instance_id="a", weight=0.25), InstanceWeight(instance_id="b", weight=0.75)])
    producer = KafkaProducer(bootstrap_servers=broker.bootstrap, acks=1)  # type: ignore[attr-defined]
    producer.send(topic, key=b"llama-70b", value=msg.to_bytes()).get(timeout=10)
    producer.send(topic, key=b"llama-70b", value=b'{"kind": "routing_weights"}').get(timeout=10)
    producer.close()
    script = textwrap.dedent(f"""
        import importlib.util, sys
        for heavy in ("dash", "faust", "statsmodels", "aiokafka", "foundation", "controller"):
            assert importlib.util.find_spec(heavy) is None, heavy + " is installed"
        try:
            import dash
        except ImportError:
            print("import dash: ImportError")
        from tapas_client import watch_weights, TOPICS
        errors = []
        with watch_weights({broker.bootstrap!r}, topic={topic!r}, from_beginning=True,  # type: ignore[attr-defined]
                           on_error=lambda exc, rec: errors.append(exc.field)) as w:
            got = []
            for _ in range(40):
                got += w.poll(500)
                if got and errors:
                    break
        m = got[0]
        print(type(m).__name__, m.endpoint_id, [x.weight for x in m.weights], "errors", len(errors), len(TOPICS))
    """)
    proc = _run([str(py), "-c", script], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "import dash: ImportError" in proc.stdout
    assert "RoutingWeights llama-70b [0.25, 0.75]" in proc.stdout, proc.stdout
    assert "errors 1" in proc.stdout, proc.stdout  # the malformed record went to on_error, not into the loop
