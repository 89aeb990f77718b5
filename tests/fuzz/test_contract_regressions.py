"""Inputs the fuzz run found that decode() accepted but could not round-trip, or refused without a field.

Each case is a minimal reproduction kept as a fast regression test (runs in ``make test``).
"""

from __future__ import annotations

import json

import pytest

from contracts import ContractError, DomainForecast, GpuSample, PlacementHint, ServerForecast, decode
from tests.samples import example_messages


def _example(model: type) -> dict[str, object]:
    msg = next(m for m in example_messages() if isinstance(m, model))
    return json.loads(msg.to_bytes())


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity", "1e999", "1" + "0" * 400])
def test_non_finite_unbounded_float_is_refused_naming_the_field(literal: str) -> None:
    # PlacementCandidate.score has no range check; NaN/inf used to pass and then fail to
    # round-trip because pydantic serialises them as null.
    payload = json.dumps(_example(PlacementHint)).replace('"score": 0.4', f'"score": {literal}')
    assert literal in payload
    with pytest.raises(ContractError) as err:
        decode(PlacementHint, payload.encode())
    assert err.value.field == "candidates.0.score"


def test_non_finite_forecast_value_is_refused() -> None:
    payload = _example(ServerForecast)
    raw = json.dumps(payload).replace('"thermal_headroom_c": 15.0', '"thermal_headroom_c": NaN')
    with pytest.raises(ContractError) as err:
        decode(ServerForecast, raw)
    assert err.value.field == "thermal_headroom_c"


def test_misaligned_domain_forecast_names_a_field() -> None:
    payload = _example(DomainForecast)
    payload["horizons_s"] = []
    with pytest.raises(ContractError) as err:
        decode(DomainForecast, json.dumps(payload))
    assert err.value.field == "horizons_s"


@pytest.mark.parametrize("literal", ["1" + "0" * 400, "-1" + "0" * 400])
def test_int_too_large_for_a_float_in_a_ranged_reading_is_refused_naming_the_field(literal: str) -> None:
    # Building the unit-hint message converted the input with float() and raised OverflowError.
    payload = _example(GpuSample)
    payload["gpus"][0]["gpu_temp_c"] = 0.5  # type: ignore[index]
    raw = json.dumps(payload).replace('"gpu_temp_c": 0.5', f'"gpu_temp_c": {literal}', 1)
    with pytest.raises(ContractError) as err:
        decode(GpuSample, raw)
    assert err.value.field == "gpus.0.gpu_temp_c"
    assert "must be finite" in err.value.reason
