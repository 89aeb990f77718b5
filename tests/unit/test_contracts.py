"""Contracts: validation names the field; versions; units; schema export does not drift."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from contracts import ALL_MESSAGES, ContractError, GpuSample, InletSample, decode
from contracts.schemas import schema_documents
from tests.samples import example_messages

REPO = Path(__file__).resolve().parents[2]


def test_every_message_has_an_example_and_round_trips() -> None:
    examples = example_messages()
    assert {type(m) for m in examples} == set(ALL_MESSAGES)
    for msg in examples:
        assert decode(type(msg), msg.to_bytes()) == msg


def _gpu_payload(**over: object) -> dict[str, object]:
    base: dict[str, object] = {
        "server_id": "r1-k1-s1",
        "sampled_at": "2026-11-25T10:00:00Z",
        "gpus": [{"gpu_index": 0, "gpu_temp_c": 61.0, "power_usage_w": 350.0}],
    }
    base.update(over)
    return base


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        (_gpu_payload(schema_version="2.0"), "schema_version"),
        (_gpu_payload(schema_version="one"), "schema_version"),
        (_gpu_payload(sampled_at="2026-11-25T10:00:00"), "sampled_at"),
        (_gpu_payload(server_id=""), "server_id"),
        (_gpu_payload(gpus=[]), "gpus"),
        (_gpu_payload(gpus=[{"gpu_index": 0, "gpu_temp_c": 334.15, "power_usage_w": 300}]), "gpus.0.gpu_temp_c"),
        (_gpu_payload(gpus=[{"gpu_index": 0, "gpu_temp_c": 60, "power_usage_w": 350000}]), "gpus.0.power_usage_w"),
        (_gpu_payload(gpus=[{"gpu_index": 0, "gpu_temp_c": 60, "power_usage_w": 300, "gpu_util_pct": 140}]),
         "gpus.0.gpu_util_pct"),
        (_gpu_payload(gpus=[{"gpu_index": 0, "gpu_temp_c": "hot", "power_usage_w": 300}]), "gpus.0.gpu_temp_c"),
    ],
)
def test_rejection_names_the_field(payload: dict[str, object], field: str) -> None:
    with pytest.raises(ContractError) as err:
        decode(GpuSample, json.dumps(payload).encode())
    assert err.value.field == field, str(err.value)


def test_nan_is_rejected_not_passed() -> None:
    raw = b'{"server_id":"s","sampled_at":"2026-11-25T10:00:00Z","inlet_temp_c":NaN}'
    with pytest.raises(ContractError) as err:
        decode(InletSample, raw)
    assert "inlet_temp_c" in str(err.value)


def test_truncated_json_is_a_contract_error() -> None:
    with pytest.raises(ContractError):
        decode(GpuSample, json.dumps(_gpu_payload()).encode()[:40])


def test_newer_minor_version_with_unknown_fields_is_accepted() -> None:
    msg = decode(GpuSample, json.dumps(_gpu_payload(schema_version="1.7", new_field=3)).encode())
    assert msg.schema_version == "1.7"


def test_flagged_reading_is_carried_as_null() -> None:
    msg = GpuSample(server_id="s", sampled_at=datetime.now(UTC),
                    gpus=[{"gpu_index": 0, "gpu_temp_c": None, "power_usage_w": 100.0,  # type: ignore[list-item]
                           "invalid_fields": ["gpu_temp_c"]}])
    assert msg.gpus[0].invalid_fields == ["gpu_temp_c"]
    assert msg.hottest_gpu_temp_c is None


def test_committed_schemas_match_code() -> None:
    committed_dir = REPO / "docs" / "contracts"
    docs = schema_documents()
    committed = {p.name: p.read_text() for p in committed_dir.glob("*.json")}
    assert set(committed) == set(docs), "run `tapas contracts export docs/contracts`"
    for name, text in docs.items():
        assert committed[name] == text, f"docs/contracts/{name} drifted: run `tapas contracts export docs/contracts`"
