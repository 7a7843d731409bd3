"""Property-based run of the API's own OpenAPI schema (schemathesis): no generated request may get a 5xx."""

from __future__ import annotations

import schemathesis
from hypothesis import HealthCheck, given, settings

from serving_lakehouse import make_app

EXAMPLES_PER_OPERATION = 25  # bounded so the run stays within a few seconds


def test_no_generated_request_gets_a_5xx(built):
    root, inst = built
    schema = schemathesis.openapi.from_asgi("/openapi.json", make_app(root, inst))
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 8
    seen = {}
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(max_examples=EXAMPLES_PER_OPERATION, deadline=None, derandomize=True, database=None,
                  suppress_health_check=list(HealthCheck))
        def run(case):
            response = case.call()
            assert response.status_code < 500, (
                f"{case.method} {case.formatted_path} {case.query}: {response.status_code} {response.text[:300]}")
            if response.status_code >= 400:
                assert response.json()["error"]  # every refusal says what was wrong
            seen.setdefault(operation.path, set()).add(response.status_code)

        run()
    assert {"/v1/bars/{symbol}", "/v1/scores", "/v1/status"} <= set(seen)
    assert all(200 in seen[p] for p in ("/v1/bars/{symbol}", "/v1/indicators/{symbol}", "/v1/scores"))  # deep, not only refusals
