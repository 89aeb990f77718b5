"""deploy/: Kubernetes files against the Kubernetes schemas, CRDs against their schema, alerts through promtool,
the Grafana dashboard against a schema, and every metric they name against the metrics the code exports."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import typer.main
import yaml  # type: ignore[import-untyped]
from jsonschema import Draft202012Validator
from prometheus_client import CollectorRegistry

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "deploy" / "kubernetes"
GRAFANA = REPO / "deploy" / "grafana" / "tapas-overview.json"
KUBERNETES_VERSION = "1.30"
PROMTOOL = shutil.which("promtool")
#: Metrics from exporters TAPAS relies on but does not ship (named in docs/kubernetes.md).
EXTERNAL_METRICS = {"kafka_consumergroup_lag": "kafka-exporter (danielqsj/kafka_exporter)"}
#: TAPAS_* variables the manifests set that are read outside the settings object.
NON_SETTINGS_ENV = {"TAPAS_REDFISH_PASSWORD": "tapas ingest redfish --password envvar"}
#: Settings the manifests set ahead of the branch that adds them (the lead drops an entry at merge).
PENDING_SETTINGS: dict[str, str] = {}


def _docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def _manifest_files() -> list[Path]:
    return sorted(p for p in [*K8S.glob("*.yaml"), *(K8S / "examples").glob("*.yaml")] if p.name != "kustomization.yaml")


def _all_docs() -> list[tuple[Path, dict[str, Any]]]:
    return [(p, d) for p in _manifest_files() for d in _docs(p)]


# --- Prometheus Operator CRDs: the fields these files use, as the CRDs define them (monitoring.coreos.com/v1)
_META = {"type": "object", "required": ["name"], "properties": {
    "name": {"type": "string", "pattern": "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"},
    "labels": {"type": "object", "additionalProperties": {"type": "string"}}}, "additionalProperties": False}
_DURATION = {"type": "string", "pattern": "^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$"}
_SELECTOR = {"type": "object", "additionalProperties": False, "properties": {
    "matchLabels": {"type": "object", "additionalProperties": {"type": "string"}},
    "matchExpressions": {"type": "array", "items": {"type": "object", "required": ["key", "operator"],
                                                    "additionalProperties": False, "properties": {
        "key": {"type": "string"}, "operator": {"enum": ["In", "NotIn", "Exists", "DoesNotExist"]},
        "values": {"type": "array", "items": {"type": "string"}}}}}}}
CRD_SCHEMAS: dict[str, dict[str, Any]] = {
    "ServiceMonitor": {"type": "object", "required": ["apiVersion", "kind", "metadata", "spec"],
                       "additionalProperties": False, "properties": {
        "apiVersion": {"const": "monitoring.coreos.com/v1"}, "kind": {"const": "ServiceMonitor"}, "metadata": _META,
        "spec": {"type": "object", "required": ["selector", "endpoints"], "additionalProperties": False, "properties": {
            "selector": _SELECTOR, "jobLabel": {"type": "string"},
            "namespaceSelector": {"type": "object"},
            "endpoints": {"type": "array", "minItems": 1, "items": {
                "type": "object", "additionalProperties": False, "properties": {
                    "port": {"type": "string"}, "path": {"type": "string"}, "scheme": {"enum": ["http", "https"]},
                    "interval": _DURATION, "scrapeTimeout": _DURATION, "honorLabels": {"type": "boolean"},
                    "relabelings": {"type": "array", "items": {
                        "type": "object", "additionalProperties": False, "properties": {
                            "sourceLabels": {"type": "array", "items": {"type": "string",
                                                                         "pattern": "^[a-zA-Z_][a-zA-Z0-9_]*$"}},
                            "targetLabel": {"type": "string"}, "regex": {"type": "string"},
                            "replacement": {"type": "string"},
                            "action": {"enum": ["replace", "keep", "drop", "labelmap", "labeldrop", "labelkeep",
                                                "hashmod", "lowercase", "uppercase", "keepequal", "dropequal"]}}}}}}}}}}},
    "PrometheusRule": {"type": "object", "required": ["apiVersion", "kind", "metadata", "spec"],
                       "additionalProperties": False, "properties": {
        "apiVersion": {"const": "monitoring.coreos.com/v1"}, "kind": {"const": "PrometheusRule"}, "metadata": _META,
        "spec": {"type": "object", "additionalProperties": False, "properties": {
            "groups": {"type": "array", "items": {"type": "object", "required": ["name", "rules"],
                                                  "additionalProperties": False, "properties": {
                "name": {"type": "string", "minLength": 1}, "interval": _DURATION,
                "rules": {"type": "array", "items": {"type": "object", "required": ["expr"],
                                                     "additionalProperties": False, "properties": {
                    "alert": {"type": "string"}, "record": {"type": "string"}, "expr": {"type": "string"},
                    "for": _DURATION, "keep_firing_for": _DURATION,
                    "labels": {"type": "object", "additionalProperties": {"type": "string"}},
                    "annotations": {"type": "object", "additionalProperties": {"type": "string"}}}}}}}}}}}},
}


# --- metric names -------------------------------------------------------------------------------------------------

def exported_metric_names() -> set[str]:
    """Every sample name the code's registries expose (counters with their ``_total``)."""
    from controller.agent import DryRunGpuControl, NodeAgent
    from controller.agent_metrics import agent_registry
    from controller.metrics import ControllerMetrics
    from foundation.settings import ControllerSettings
    from ingest.producer import IngestMetrics
    from router.service import RouterMetrics, SidecarMetrics

    registries: list[CollectorRegistry] = [
        ControllerMetrics().registry, RouterMetrics().registry, SidecarMetrics().registry,
        IngestMetrics("nvml").registry,
        agent_registry(NodeAgent("n", DryRunGpuControl(num_gpus=1), ControllerSettings())),
    ]
    names: set[str] = set()
    for reg in registries:
        for fam in reg.collect():
            names.add(f"{fam.name}_total" if fam.type == "counter" else fam.name)
    return names


_PROMQL_WORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or", "unless",
                 "offset"}


def metric_names_in(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (label matchers, groupings, ranges and functions removed).

    >>> sorted(metric_names_in('sum by (action) (rate(tapas_x_total{a="b"}[5m])) > on(job) up'))
    ['tapas_x_total', 'up']
    """
    e = re.sub(r'"(?:[^"\\]|\\.)*"', "", expr)
    e = re.sub(r"\{[^}]*\}", "", e)
    e = re.sub(r"\[[^\]]*\]", "", e)
    e = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", e)
    e = re.sub(r"\$\w+", "", e)
    tokens = [m.group() for m in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", e)
              if not e[m.end():].lstrip().startswith("(")]  # a function call, not a metric
    return {t for t in tokens if t not in _PROMQL_WORDS}


def _check_metrics(where: str, expr: str, known: set[str]) -> None:
    names = metric_names_in(expr)
    assert names, f"{where}: no metric in {expr!r}"
    unknown = names - known - set(EXTERNAL_METRICS)
    assert not unknown, f"{where}: {sorted(unknown)} in {expr!r} is exported by no TAPAS code"


def test_metric_name_extraction_doctest() -> None:
    import doctest

    runner = doctest.DocTestRunner()
    for test in doctest.DocTestFinder().find(metric_names_in, globs={"metric_names_in": metric_names_in}):
        runner.run(test)
    assert runner.summarize(verbose=False).attempted == 1 and runner.failures == 0


# --- Kubernetes ---------------------------------------------------------------------------------------------------

def test_kustomization_lists_every_manifest() -> None:
    kust = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    listed = set(kust["resources"])
    present = {p.name for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml"}
    assert listed == present, f"not listed: {present - listed}; missing files: {listed - present}"


@pytest.mark.parametrize("path", _manifest_files(), ids=lambda p: str(p.relative_to(K8S)))
def test_manifest_validates_against_its_schema(path: Path) -> None:
    for doc in _docs(path):
        where = f"{path.name}: {doc.get('kind')} {doc.get('metadata', {}).get('name')}"
        if doc["apiVersion"].startswith("monitoring.coreos.com/"):
            errors = list(Draft202012Validator(CRD_SCHEMAS[doc["kind"]]).iter_errors(doc))
            assert not errors, f"{where}: " + "; ".join(f"{'/'.join(map(str, e.path))}: {e.message}" for e in errors)
            continue
        try:
            kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{where}: {exc.message} at {'/'.join(map(str, exc.path))}")


def test_a_broken_manifest_is_refused() -> None:
    """The validator is strict: a misspelt field and a wrong type both fail (so the test above can fail)."""
    doc = next(d for p, d in _all_docs() if d["kind"] == "Deployment" and p.name == "controller.yaml")
    doc["spec"]["template"]["spec"]["containers"][0]["livenesProbe"] = doc["spec"]["template"]["spec"][
        "containers"][0].pop("livenessProbe")
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
    doc = next(d for p, d in _all_docs() if d["kind"] == "ServiceMonitor")
    doc["spec"]["endpoints"][0]["interval"] = "15 seconds"
    assert list(Draft202012Validator(CRD_SCHEMAS["ServiceMonitor"]).iter_errors(doc))


def _workloads() -> dict[tuple[str, str], dict[str, Any]]:
    return {(d["kind"], d["metadata"]["name"]): d for p, d in _all_docs()
            if d["kind"] in ("Deployment", "StatefulSet", "DaemonSet", "Job") and p.parent == K8S}


def _containers(doc: dict[str, Any]) -> list[dict[str, Any]]:
    return list(doc["spec"]["template"]["spec"]["containers"])


def test_the_required_workloads_exist_with_their_shape() -> None:
    w = _workloads()
    for key in [("Deployment", "tapas-controller"), ("StatefulSet", "tapas-worker"), ("Deployment", "tapas-dashboard"),
                ("DaemonSet", "tapas-agent"), ("DaemonSet", "tapas-nvml-collector"),
                ("Deployment", "tapas-facility-collectors")]:
        assert key in w, f"missing {key}"
    worker = w[("StatefulSet", "tapas-worker")]
    claims = {c["metadata"]["name"] for c in worker["spec"]["volumeClaimTemplates"]}
    c = _containers(worker)[0]
    data_dir = next(e["value"] for e in c["env"] if e["name"] == "TAPAS_WORKER__DATA_DIR")
    assert any(m["name"] in claims and m["mountPath"] == data_dir for m in c["volumeMounts"]), \
        "the worker's data directory is not on its volume claim"
    for key in [("DaemonSet", "tapas-agent"), ("DaemonSet", "tapas-nvml-collector")]:
        c = _containers(w[key])[0]
        node = next(e for e in c["env"] if e["name"] == "NODE_NAME")
        assert node["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName"
        assert c["args"][c["args"].index("--server-id") + 1] == "$(NODE_NAME)", f"{key}: server id is not the node"


#: Services whose containers serve /healthz and /readyz (collectors and jobs do not).
PROBED = {"tapas-controller", "tapas-worker", "tapas-dashboard", "tapas-agent"}


def test_services_are_probed_on_healthz_and_readyz() -> None:
    examples = [d for p, d in _all_docs() if p.parent.name == "examples" and d["kind"] == "Deployment"]
    docs = [d for (kind, name), d in _workloads().items() if name in PROBED] + examples
    checked = 0
    for doc in docs:
        for c in _containers(doc):
            if c["image"] != "tapas":
                continue
            ports = {p["name"] for p in c.get("ports", [])}
            assert c["livenessProbe"]["httpGet"]["path"] == "/healthz", c["name"]
            assert c["readinessProbe"]["httpGet"]["path"] == "/readyz", c["name"]
            for probe in ("livenessProbe", "readinessProbe"):
                assert c[probe]["httpGet"]["port"] in ports, f"{c['name']}: {probe} port is not a container port"
            checked += 1
    assert checked >= len(PROBED) + 2


def test_every_container_runs_a_real_tapas_command_with_real_options() -> None:
    from tapas.cli import app

    root = typer.main.get_command(app)
    checked = 0
    for path, doc in _all_docs():
        if doc["kind"] not in ("Deployment", "StatefulSet", "DaemonSet", "Job"):
            continue
        for c in _containers(doc):
            if c["image"] != "tapas":
                continue
            cmd: Any = root
            words: list[str] = []
            for word in c["args"]:
                sub = getattr(cmd, "commands", {}).get(word)
                if sub is None:
                    break
                cmd, words = sub, [*words, word]
            assert words and (not hasattr(cmd, "commands") or cmd.invoke_without_command), \
                f"{path.name}/{c['name']}: {c['args']} is not a tapas command"
            options = {o for p in cmd.params for o in getattr(p, "opts", [])}
            for word in c["args"][len(words):]:
                if word.startswith("--"):
                    assert word in options, f"{path.name}/{c['name']}: `tapas {' '.join(words)}` has no {word}"
            checked += 1
    assert checked >= 8


def _setting_names() -> set[str]:
    from pydantic import BaseModel

    from foundation.settings import Settings

    names: set[str] = set()

    def walk(model: type[BaseModel], prefix: str) -> None:
        for name, field in model.model_fields.items():
            ann = field.annotation
            if isinstance(ann, type) and issubclass(ann, BaseModel):
                walk(ann, f"{prefix}{name.upper()}__")
            else:
                names.add(f"{prefix}{name.upper()}")

    walk(Settings, "TAPAS_")
    return names


def test_every_tapas_variable_is_a_setting() -> None:
    known = _setting_names() | set(NON_SETTINGS_ENV) | set(PENDING_SETTINGS)
    for path, doc in _all_docs():
        keys = list(doc.get("data", {})) if doc["kind"] == "ConfigMap" else []
        if doc["kind"] in ("Deployment", "StatefulSet", "DaemonSet", "Job"):
            keys += [e["name"] for c in _containers(doc) for e in c.get("env", [])]
        unknown = [k for k in keys if k.startswith("TAPAS_") and k not in known]
        assert not unknown, f"{path.name}: {unknown} are not TAPAS settings"
    assert not set(PENDING_SETTINGS) & _setting_names(), "a pending setting exists now: drop it from PENDING_SETTINGS"


def test_service_monitor_selects_services_with_a_metrics_port() -> None:
    docs = [d for _p, d in _all_docs()]
    sm = next(d for d in docs if d["kind"] == "ServiceMonitor")
    wanted = set(sm["spec"]["selector"]["matchExpressions"][0]["values"])
    services = {d["metadata"]["labels"]["app.kubernetes.io/name"]: d for d in docs if d["kind"] == "Service"}
    assert wanted <= set(services), f"ServiceMonitor selects services that do not exist: {wanted - set(services)}"
    for name in wanted:
        ports = {p["name"] for p in services[name]["spec"]["ports"]}
        assert sm["spec"]["endpoints"][0]["port"] in ports, name


def test_dockerfile_copies_every_package() -> None:
    import tomllib

    include = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]["include"]
    copied = set(re.findall(r"^COPY (\w+) \1$", (REPO / "Dockerfile").read_text(), flags=re.M))
    assert {p.rstrip("*") for p in include} <= copied, f"Dockerfile does not copy {set(include) - copied}"


# --- alert rules --------------------------------------------------------------------------------------------------

def _rule_groups() -> dict[str, Any]:
    doc = next(d for _p, d in _all_docs() if d["kind"] == "PrometheusRule")
    return {"groups": doc["spec"]["groups"]}


def test_alerts_cover_the_required_conditions_and_name_exported_metrics() -> None:
    known = exported_metric_names()
    rules = {r["alert"]: r for g in _rule_groups()["groups"] for r in g["rules"]}
    for alert in ("TapasForecastsStale", "TapasThermalHeadroomLow", "TapasPowerHeadroomLow", "TapasAgentSafeCap",
                  "TapasCommandsRefused", "TapasConsumerLag"):
        assert alert in rules, alert
    for name, rule in rules.items():
        _check_metrics(f"alert {name}", rule["expr"], known)


def _promtool(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    if PROMTOOL is None:
        pytest.skip("promtool not installed (Debian: apt-get install prometheus; .ci/run installs it)")
    return subprocess.run([PROMTOOL, *args], capture_output=True, text=True, timeout=60, cwd=cwd)


def test_promtool_checks_and_unit_tests_the_rules(tmp_path: Path) -> None:
    (tmp_path / "tapas-rules.yaml").write_text(yaml.safe_dump(_rule_groups(), sort_keys=False))
    shutil.copy(K8S / "tests" / "prometheusrule_test.yaml", tmp_path)
    check = _promtool("check", "rules", "tapas-rules.yaml", cwd=tmp_path)
    assert check.returncode == 0, check.stdout + check.stderr
    assert f"SUCCESS: {sum(len(g['rules']) for g in _rule_groups()['groups'])} rules found" in check.stdout
    test = _promtool("test", "rules", "prometheusrule_test.yaml", cwd=tmp_path)
    assert test.returncode == 0, test.stdout + test.stderr
    # the unit test can fail: without its 'for' the stale alert fires at 2m, where the test expects none
    groups = _rule_groups()
    for rule in groups["groups"][0]["rules"]:
        if rule.get("alert") == "TapasForecastsStale":
            rule["for"] = "0s"
    (tmp_path / "tapas-rules.yaml").write_text(yaml.safe_dump(groups, sort_keys=False))
    broken = _promtool("test", "rules", "prometheusrule_test.yaml", cwd=tmp_path)
    assert broken.returncode != 0 and "TapasForecastsStale" in broken.stdout + broken.stderr


# --- Grafana ------------------------------------------------------------------------------------------------------

_DS = {"type": "object", "required": ["type", "uid"], "properties": {"type": {"const": "prometheus"},
                                                                     "uid": {"const": "${datasource}"}}}
GRAFANA_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "required": ["title", "uid", "schemaVersion", "panels", "templating", "time"],
    "properties": {
        "title": {"type": "string", "minLength": 1},
        "uid": {"type": "string", "pattern": "^[a-zA-Z0-9_-]{1,40}$"},
        "schemaVersion": {"type": "integer", "minimum": 36},
        "time": {"type": "object", "required": ["from", "to"]},
        "refresh": {"type": "string"},
        "tags": {"type": "array", "items": {"type": "string"}},
        "templating": {"type": "object", "required": ["list"], "properties": {"list": {"type": "array", "items": {
            "type": "object", "required": ["name", "type"]}}}},
        "panels": {"type": "array", "minItems": 1, "items": {"$ref": "#/$defs/panel"}},
    },
    "$defs": {
        "gridPos": {"type": "object", "required": ["h", "w", "x", "y"], "additionalProperties": False, "properties": {
            "h": {"type": "integer", "minimum": 1}, "w": {"type": "integer", "minimum": 1, "maximum": 24},
            "x": {"type": "integer", "minimum": 0, "maximum": 23}, "y": {"type": "integer", "minimum": 0}}},
        "panel": {"type": "object", "required": ["id", "type", "title", "gridPos"], "properties": {
            "id": {"type": "integer", "minimum": 1},
            "type": {"enum": ["row", "timeseries", "stat", "gauge", "table", "bargauge", "text", "heatmap"]},
            "title": {"type": "string", "minLength": 1},
            "gridPos": {"$ref": "#/$defs/gridPos"},
            "datasource": _DS,
            "targets": {"type": "array", "items": {"type": "object", "required": ["refId", "expr"], "properties": {
                "refId": {"type": "string", "pattern": "^[A-Z]$"}, "expr": {"type": "string", "minLength": 1},
                "legendFormat": {"type": "string"}, "datasource": _DS}}},
            "fieldConfig": {"type": "object", "required": ["defaults"], "properties": {
                "defaults": {"type": "object", "properties": {"unit": {"type": "string"}}}}},
        }, "if": {"properties": {"type": {"not": {"const": "row"}}}},
            "then": {"required": ["datasource", "targets"], "properties": {"targets": {"minItems": 1}}}},
    },
}


def _dashboard() -> dict[str, Any]:
    return json.loads(GRAFANA.read_text())  # type: ignore[no-any-return]


def test_grafana_dashboard_matches_the_schema_and_its_layout_is_sound() -> None:
    dash = _dashboard()
    errors = list(Draft202012Validator(GRAFANA_SCHEMA).iter_errors(dash))
    assert not errors, "; ".join(f"{'/'.join(map(str, e.path))}: {e.message}" for e in errors[:10])
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids)), "panel ids repeat"
    cells: dict[tuple[int, int], str] = {}
    for p in dash["panels"]:
        g = p["gridPos"]
        assert g["x"] + g["w"] <= 24, f"{p['title']}: wider than the grid"
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                assert (x, y) not in cells, f"{p['title']} overlaps {cells[(x, y)]}"
                cells[(x, y)] = p["title"]
    assert {v["name"] for v in dash["templating"]["list"]} >= {"datasource"}


def test_grafana_panels_query_metrics_the_code_exports() -> None:
    known = exported_metric_names()
    queried = set()
    for p in _dashboard()["panels"]:
        for t in p.get("targets", []):
            _check_metrics(f"panel {p['title']!r}", t["expr"], known)
            queried |= metric_names_in(t["expr"])
    for name in ("tapas_endpoint_thermal_headroom_celsius", "tapas_routing_weight", "tapas_agent_safe_cap_active",
                 "tapas_controller_commands_refused_total", "tapas_consumer_lag_messages"):
        assert name in queried, f"the dashboard shows no {name}"


def test_metric_check_catches_a_misspelt_metric() -> None:
    with pytest.raises(AssertionError, match="tapas_endpoint_thermal_headroom_celcius"):
        _check_metrics("panel", "min(tapas_endpoint_thermal_headroom_celcius)", exported_metric_names())
