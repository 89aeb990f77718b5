"""Fuzz every contract in ``contracts.ALL_MESSAGES`` with bad and borderline inputs.

The property (see :func:`tests.fuzz.mutations.check_decode`): ``decode`` never raises
anything but ``ContractError``; a refusal names the edited field; an accepted message
round-trips byte for byte. The unmarked tests are the fast slice run by ``make test``
(about 1,000 inputs, derandomised so CI is stable); ``-m fuzz`` runs the full
randomised budget (over 10,000 inputs with the parser fuzz).
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from contracts import (
    ALL_MESSAGES,
    Contract,
    ContractError,
    GpuSample,
    InletSample,
    PduPowerSample,
    decode,
    validate_obj,
)
from tests.fuzz.mutations import TALLY, UNIT_MISTAKES, Mutant, check_decode, mutants, numeric_leaves, set_at
from tests.fuzz.schema_strategy import documents
from tests.samples import example_messages

EXAMPLES: dict[type[Contract], Contract] = {type(m): m for m in example_messages()}

FAST_MUTANTS, FAST_DOCS = 50, 20
FULL_MUTANTS, FULL_DOCS = 600, 200


def _settings(n: int, *, fast: bool) -> settings:
    return settings(max_examples=n, deadline=None, database=None, derandomize=fast,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                           HealthCheck.filter_too_much])


def _fuzz_mutants(model: type[Contract], n: int, *, fast: bool) -> None:
    doc = json.loads(EXAMPLES[model].to_bytes())
    before = TALLY.generated

    @_settings(n, fast=fast)
    @given(mutants(doc))
    def run(m: Mutant) -> None:
        check_decode(model, m)

    run()
    assert TALLY.generated - before >= n // 2, "hypothesis ran far fewer inputs than asked"


def _fuzz_documents(model: type[Contract], n: int, *, fast: bool) -> None:
    before = TALLY.generated

    @_settings(n, fast=fast)
    @given(documents(model))
    def run(doc: dict[str, Any]) -> None:
        check_decode(model, Mutant(json.dumps(doc).encode(), "schema", None))

    run()
    assert TALLY.generated - before >= n // 2


def test_every_contract_has_an_example_to_mutate() -> None:
    assert set(EXAMPLES) == set(ALL_MESSAGES), "add the new message to tests/samples.py so the fuzz covers it"


@pytest.mark.parametrize("model", ALL_MESSAGES, ids=lambda m: m.message_name)
def test_contract_mutants_fast(model: type[Contract]) -> None:
    _fuzz_mutants(model, FAST_MUTANTS, fast=True)


@pytest.mark.parametrize("model", ALL_MESSAGES, ids=lambda m: m.message_name)
def test_contract_schema_documents_fast(model: type[Contract]) -> None:
    _fuzz_documents(model, FAST_DOCS, fast=True)


@pytest.mark.fuzz
@pytest.mark.parametrize("model", ALL_MESSAGES, ids=lambda m: m.message_name)
def test_contract_mutants_full(model: type[Contract]) -> None:
    _fuzz_mutants(model, FULL_MUTANTS, fast=False)


@pytest.mark.fuzz
@pytest.mark.parametrize("model", ALL_MESSAGES, ids=lambda m: m.message_name)
def test_contract_schema_documents_full(model: type[Contract]) -> None:
    _fuzz_documents(model, FULL_DOCS, fast=False)


TELEMETRY = (GpuSample, InletSample, PduPowerSample)


@pytest.mark.parametrize("model", TELEMETRY, ids=lambda m: m.message_name)
def test_telemetry_in_kelvin_or_milliwatts_is_refused_naming_the_field(model: type[Contract]) -> None:
    """Collectors' classic unit mistakes never pass as good telemetry (°F can be plausible, so not here)."""
    doc = json.loads(EXAMPLES[model].to_bytes())
    cases = 0
    for path, value in numeric_leaves(doc):
        name = str(path[-1])
        for suffix, mistake in (("_c", "kelvin"), ("_w", "milliwatt")):
            if not name.endswith(suffix) or name.endswith("_rise_c"):
                continue
            fn = dict(UNIT_MISTAKES[suffix])[mistake]
            with pytest.raises(ContractError) as err:
                decode(model, json.dumps(set_at(doc, path, fn(float(value)))))
            assert err.value.field == ".".join(map(str, path)), (mistake, err.value)
            cases += 1
    assert cases, f"{model.__name__} example has no temperature or power field to test"


@pytest.mark.parametrize("model", ALL_MESSAGES, ids=lambda m: m.message_name)
def test_newer_major_version_is_refused_and_newer_minor_accepted(model: type[Contract]) -> None:
    doc = json.loads(EXAMPLES[model].to_bytes())
    with pytest.raises(ContractError) as err:
        decode(model, json.dumps({**doc, "schema_version": "2.0"}))
    assert err.value.field == "schema_version"
    newer_minor = decode(model, json.dumps({**doc, "schema_version": "1.9", "zz_future_field": [1, 2]}))
    assert newer_minor.schema_version == "1.9"


def _agree(model: type[Contract], raw: bytes) -> None:
    """``validate_obj`` (already-parsed objects, e.g. CSV rows) decides exactly like ``decode`` (wire bytes)."""
    try:
        obj = json.loads(raw)
    except (ValueError, RecursionError):
        return  # not JSON Python can parse: only decode() sees such input

    def outcome(fn: Any, arg: Any) -> tuple[str, Any]:
        try:
            return "ok", fn(model, arg)
        except ContractError as err:
            return "refused", err.field

    assert outcome(decode, raw) == outcome(validate_obj, obj), raw[:200]


@pytest.mark.parametrize("budget,fast", [(10, True), pytest.param(150, False, marks=pytest.mark.fuzz)],
                         ids=["fast", "full"])
@pytest.mark.parametrize("model", ALL_MESSAGES, ids=lambda m: m.message_name)
def test_validate_obj_agrees_with_decode(model: type[Contract], budget: int, fast: bool) -> None:
    doc = json.loads(EXAMPLES[model].to_bytes())

    @_settings(budget, fast=fast)
    @given(st.one_of(documents(model).map(lambda d: json.dumps(d).encode()), mutants(doc).map(lambda m: m.raw)))
    def run(raw: bytes) -> None:
        _agree(model, raw)

    run()
