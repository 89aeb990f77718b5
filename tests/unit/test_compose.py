"""docker-compose.yml validates against the Compose Specification schema; every service command exists."""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import yaml  # type: ignore[import-untyped]
from jsonschema import Draft201909Validator
from typer.testing import CliRunner

REPO = Path(__file__).resolve().parents[2]
CACHE = REPO / "var" / "cache"


def _compose_schema() -> dict[str, object]:
    """The Compose Specification JSON schema, as shipped in the docker-compose 1.29.2 wheel on PyPI."""
    target = CACHE / "compose_spec.json"
    if not target.exists():
        CACHE.mkdir(parents=True, exist_ok=True)
        proc = subprocess.run(
            [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "-d", str(CACHE), "docker-compose==1.29.2"],
            capture_output=True, text=True, timeout=120,
        )
        wheels = list(CACHE.glob("docker_compose-1.29.2-*.whl"))
        if not wheels:
            pytest.skip(f"could not fetch the Compose schema from PyPI: {proc.stderr.strip()[-300:]}")
        with zipfile.ZipFile(wheels[0]) as zf:
            target.write_bytes(zf.read("compose/config/compose_spec.json"))
    return json.loads(target.read_text())  # type: ignore[no-any-return]


def _compose() -> dict[str, object]:
    return yaml.safe_load((REPO / "docker-compose.yml").read_text())  # type: ignore[no-any-return]


def test_compose_file_matches_the_compose_specification() -> None:
    validator = Draft201909Validator(_compose_schema())
    errors = sorted(validator.iter_errors(_compose()), key=lambda e: list(e.path))
    assert not errors, "\n".join(f"{'/'.join(map(str, e.path))}: {e.message}" for e in errors[:10])


def test_compose_has_the_required_services_with_healthchecks() -> None:
    services = _compose()["services"]
    assert isinstance(services, dict)
    for name in ("kafka", "influxdb", "worker", "controller", "dashboard", "feed"):
        assert name in services, name
    for name in ("kafka", "influxdb", "controller", "dashboard"):
        assert "healthcheck" in services[name], f"{name} has no healthcheck"
    assert services["feed"].get("profiles") == ["sim"]
    assert "container_name" not in services["worker"], "a fixed container name would prevent --scale worker=N"


def test_every_tapas_service_command_exists_in_the_cli() -> None:
    import typer.main

    from tapas.cli import app

    root = typer.main.get_command(app)
    runner = CliRunner()
    services = _compose()["services"]
    assert isinstance(services, dict)
    checked = 0
    for name, svc in services.items():
        if not (str(svc.get("image", "")).startswith("tapas") and "command" in svc):
            continue
        cmd, path = root, []
        for word in svc["command"]:
            sub = getattr(cmd, "commands", {}).get(word)
            if sub is None:
                break
            cmd, path = sub, [*path, word]
        assert path and (not hasattr(cmd, "commands") or cmd.invoke_without_command), f"service {name}: {svc['command']} is not a tapas command"
        options = {o for p in cmd.params for o in getattr(p, "opts", [])}
        for word in svc["command"][len(path):]:
            if word.startswith("--"):
                assert word in options, f"service {name}: `tapas {' '.join(path)}` has no option {word}"
        result = runner.invoke(app, [*path, "--help"])
        assert result.exit_code == 0, f"service {name}: `tapas {' '.join(path)} --help` failed: {result.output}"
        checked += 1
    assert checked >= 5


def test_tapas_services_health_checks_call_the_healthz_their_settings_serve() -> None:
    """The check's port is the one the service's settings bind (a renamed default would break compose)."""
    from foundation.settings import Settings

    services = _compose()["services"]
    assert isinstance(services, dict)
    controller_env = services["controller"]["environment"]
    settings = Settings(controller={"metrics_host": controller_env["TAPAS_CONTROLLER__METRICS_HOST"],
                                    "health_host": controller_env["TAPAS_CONTROLLER__HEALTH_HOST"]})
    assert settings.controller.metrics_host == "0.0.0.0", "the gauges must be scrapeable from other containers"  # noqa: S104
    want = {"worker": settings.worker.web_port, "controller": settings.controller.health_port,
            "dashboard": settings.dashboard.port}
    for name, port in want.items():
        test = services[name]["healthcheck"]["test"]
        assert test[-1] == f"http://127.0.0.1:{port}/healthz", f"{name}: {test}"
    published = {p.rsplit(":", 1)[-1] for p in services["controller"]["ports"]}
    assert {str(settings.controller.metrics_port), str(settings.controller.health_port)} <= published
