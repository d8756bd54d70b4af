"""Fuzz m2pt-serve through its own OpenAPI description with schemathesis.

Every generated request must get a documented status code and a response matching the
documented schema, never a 5xx, and schema-invalid requests must be refused. The one check
left out is "schema-valid requests are accepted": JSON Schema cannot say that a tensor's
``data`` holds ``prod(shape)`` values of its ``datatype``, so most schema-valid tensors are
rightly refused with 400.
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, settings

schemathesis = pytest.importorskip("schemathesis", reason="fuzzing needs schemathesis")

from schemathesis.specs.openapi.checks import positive_data_acceptance  # noqa: E402

from m2pt_deploy.serving.openapi import openapi_document  # noqa: E402

schema = schemathesis.openapi.from_dict(openapi_document(["vit"]))


@schema.parametrize()
@settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck))
def test_every_operation_honours_the_contract(case, server):
    case.call_and_validate(base_url=server.url, timeout=20,
                           excluded_checks=[positive_data_acceptance])


def test_the_served_description_is_the_one_fuzzed(server):
    import json

    from tests.serving.conftest import http

    status, _, body = http("GET", f"{server.url}/openapi.json")
    assert status == 200
    assert json.loads(body) == openapi_document(["vit"])
