"""The placement API property-tested against its own OpenAPI document with schemathesis.

Schemathesis generates requests from ``openapi_document()`` (valid ones and, in negative
mode, ones that break the schema) and checks every answer: no 5xx, a status the document
declares, a body matching the declared schema, and a 4xx for every request the schema
forbids. The default run keeps examples bounded; ``-m fuzz`` runs many more.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import schemathesis
from hypothesis import HealthCheck, settings

from controller.api import ApiServer, openapi_document
from tests.placement_api_world import fed_controller, serving

schema = schemathesis.openapi.from_dict(openapi_document())


@pytest.fixture(scope="module")
def api_url() -> Iterator[str]:
    ctl = fed_controller(48, hot=("row00-rack00-srv00", "row01-rack03-srv02"))
    with serving(ctl) as srv:
        yield f"http://127.0.0.1:{srv.port}"


def _check(case: schemathesis.Case, url: str) -> None:
    case.call_and_validate(base_url=url, timeout=10)


@schema.parametrize()
@settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
def test_api_conforms_to_its_openapi(case: schemathesis.Case, api_url: str) -> None:
    _check(case, api_url)


@pytest.mark.fuzz
@schema.parametrize()
@settings(max_examples=1000, deadline=None, suppress_health_check=list(HealthCheck))
def test_api_conforms_to_its_openapi_long(case: schemathesis.Case, api_url: str) -> None:
    _check(case, api_url)


def test_server_type_is_the_one_served() -> None:
    assert issubclass(ApiServer, object) and "/v1/placement" in openapi_document()["paths"]
