"""The placement API over real HTTP: hints equal the Kafka path's, headroom per level, the scheduler-extender
verbs in their documented JSON, bounded bodies and clear 4xx errors, stale forecasts refused."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

from contracts import PlacementHint, PlacementRequest
from controller.api import openapi_document
from tests.controller_world import T0
from tests.placement_api_world import call, fed_controller, serving

ROOT = Path(__file__).resolve().parents[2]


def _pod(gpus: int, **annotations: str) -> dict[str, object]:
    """A vLLM pod asking for ``gpus`` GPUs at 250 W each (every server but the hot one has room for that)."""
    annotations = {"tapas-power-w-per-gpu": "250", **annotations}
    return {"metadata": {"name": "vllm-0", "namespace": "inference", "annotations": annotations},
            "spec": {"containers": [{"name": "vllm", "image": "vllm/vllm-openai",
                                     "resources": {"limits": {"nvidia.com/gpu": str(gpus), "cpu": "8"}}}]}}


def test_placement_over_http_answers_what_the_controller_answers() -> None:
    ctl = fed_controller(24)
    with serving(ctl) as srv:
        status, body = call(srv.port, "POST", "/v1/placement", {"request_id": "r1", "vm_kind": "iaas", "num_gpus": 8})
    assert status == 200
    hint = PlacementHint.model_validate(body)
    direct = ctl.place(PlacementRequest(request_id="r1", requested_at=T0, vm_kind="iaas", num_gpus=8),
                       now=T0 + timedelta(seconds=1)).message
    assert isinstance(direct, PlacementHint)
    assert hint.feasible and [c.server_id for c in hint.candidates] == [c.server_id for c in direct.candidates]
    assert all(c.server_id in ctl.topology.by_id for c in hint.candidates)


def test_headroom_per_level_and_bad_level_refused() -> None:
    ctl = fed_controller(24, hot=("row00-rack00-srv00",))
    with serving(ctl) as srv:
        status, everything = call(srv.port, "GET", "/v1/headroom")
        _, rows = call(srv.port, "GET", "/v1/headroom?level=row")
        bad, err = call(srv.port, "GET", "/v1/headroom?level=rack")
    assert status == 200 and len(everything["servers"]) == 24 and everything["stale"] is False
    by_id = {s["server_id"]: s for s in everything["servers"]}
    assert by_id["row00-rack00-srv00"]["thermal_headroom_c"] == 0.0
    assert by_id["row00-rack00-srv01"]["thermal_headroom_c"] == 87.0 - 64.0
    assert by_id["row00-rack00-srv01"]["node_name"] == "node-row00-rack00-srv01"
    assert rows["servers"] == [] and [r["domain_id"] for r in rows["rows"]] == list(ctl.topology.row_ids)
    assert rows["rows"][0]["headroom_w"] == rows["rows"][0]["limit_w"] - rows["rows"][0]["forecast_hi_w"]
    assert bad == 400 and err["field"] == "level"


def test_extender_filter_drops_the_hot_node_and_passes_unknown_ones() -> None:
    hot = "row00-rack00-srv00"
    ctl = fed_controller(24, hot=(hot,))
    names = [f"node-{s}" for s in ctl.topology.server_ids[:6]] + ["cpu-node-1"]
    with serving(ctl) as srv:
        status, by_names = call(srv.port, "POST", "/v1/extender/filter", {"Pod": _pod(8), "NodeNames": names})
        _, by_nodes = call(srv.port, "POST", "/v1/extender/filter", {
            "Pod": _pod(8), "Nodes": {"items": [{"metadata": {"name": n, "labels": {"a": "b"}}} for n in names]}})
        _, no_gpu = call(srv.port, "POST", "/v1/extender/filter", {"Pod": _pod(0), "NodeNames": names})
    assert status == 200 and by_names["Error"] == ""
    assert list(by_names["FailedNodes"]) == [f"node-{hot}"]
    assert by_names["NodeNames"] == [n for n in names if n != f"node-{hot}"]
    assert [n["metadata"]["name"] for n in by_nodes["Nodes"]["items"]] == by_names["NodeNames"]
    assert by_nodes["Nodes"]["items"][0]["metadata"]["labels"] == {"a": "b"}  # node objects come back whole
    assert no_gpu["NodeNames"] == names and no_gpu["FailedNodes"] == {}


def test_extender_prioritize_scores_0_to_10_with_infeasible_and_unknown_at_0() -> None:
    hot = "row00-rack00-srv00"
    ctl = fed_controller(24, hot=(hot,))
    names = [f"node-{s}" for s in ctl.topology.server_ids] + ["cpu-node-1"]
    with serving(ctl) as srv:
        status, prio = call(srv.port, "POST", "/v1/extender/prioritize",
                            {"Pod": _pod(8, **{"tapas-vm-kind": "iaas"}), "NodeNames": names})
        bad, err = call(srv.port, "POST", "/v1/extender/prioritize",
                        {"Pod": _pod(8, **{"tapas-vm-kind": "vm"}), "NodeNames": names})
    assert status == 200 and [p["Host"] for p in prio] == names
    scores = {p["Host"]: p["Score"] for p in prio}
    assert scores[f"node-{hot}"] == 0 and scores["cpu-node-1"] == 0
    assert all(1 <= scores[n] <= 10 for n in names[1:-1]) and max(scores.values()) == 10
    assert bad == 400 and "tapas-vm-kind" in err["field"]


def test_stale_forecasts_refuse_placement_and_set_the_extender_error() -> None:
    ctl = fed_controller(8)
    with serving(ctl, now=T0 + timedelta(seconds=60)) as srv:
        _, hint = call(srv.port, "POST", "/v1/placement", {"vm_kind": "saas", "num_gpus": 1})
        _, filt = call(srv.port, "POST", "/v1/extender/filter", {"Pod": _pod(1), "NodeNames": ["x"]})
        prio_status, _ = call(srv.port, "POST", "/v1/extender/prioritize", {"Pod": _pod(1), "NodeNames": ["x"]})
        _, head = call(srv.port, "GET", "/v1/headroom?level=zone")
    assert hint["feasible"] is False and "stale" in hint["reason"]
    assert "stale" in filt["Error"] and prio_status == 503
    assert head["stale"] is True and head["forecast_age_s"] == 60.0


def test_client_errors_are_clear_4xx() -> None:
    ctl = fed_controller(8)
    with serving(ctl, max_body_bytes=2048) as srv:
        assert call(srv.port, "POST", "/v1/placement", raw=b"{not json")[0] == 400
        status, err = call(srv.port, "POST", "/v1/placement", {"vm_kind": "iaas", "num_gpus": 0})
        assert status == 400 and err["field"] == "num_gpus"
        status, err = call(srv.port, "POST", "/v1/placement", {"vm_kind": "iaas", "num_gpus": 1, "gpus": 2})
        assert status == 400 and err["field"] == "gpus"
        status, err = call(srv.port, "POST", "/v1/placement", raw=b" " * 4096)
        assert status == 413 and "TAPAS_API__MAX_BODY_BYTES" in err["error"]
        assert call(srv.port, "GET", "/v1/placement")[0] == 405
        assert call(srv.port, "GET", "/v2/nothing")[0] == 404
        status, err = call(srv.port, "POST", "/v1/extender/filter",
                           {"Pod": _pod(1) | {"spec": {"containers": [
                               {"resources": {"limits": {"nvidia.com/gpu": "half"}}}]}}, "NodeNames": []})
        assert status == 400 and "containers[0]" in err["field"]
        status, doc = call(srv.port, "GET", "/openapi.json")
        assert status == 200 and doc["openapi"].startswith("3.1")


def test_committed_openapi_document_is_current() -> None:
    committed = json.loads((ROOT / "docs" / "placement-api.json").read_text())
    assert committed == openapi_document(), "regenerate: python -m controller.api > docs/placement-api.json"
