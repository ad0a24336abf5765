"""Property-based tests from the OpenAPI schema, against a real server.

``trackgate api`` runs as a subprocess (uvicorn on a free port, a real
Redis); schemathesis generates requests for every operation from
/openapi.json and checks each answer: no server error, status codes,
content types, headers and bodies as the schema documents them, invalid
input refused, and authentication not ignored.

The live feed (an endless event stream) and diagnostics (which sleep to
sample kernel counters) are left out; their own tests cover them.
"""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings

from tests.api.conftest import COMMANDS

#: Examples per operation: enough to hit every parameter's edges without
#: making the suite slow on a shared two-core machine.
EXAMPLES = 40


@pytest.fixture(scope="session")
def api_schema(api_server: str) -> schemathesis.BaseSchema:
    return schemathesis.openapi.from_url(f"{api_server}/openapi.json")


#: Operations left to their own tests (see the module doc).
SKIPPED = ("GET /v1/devices/{imei}/events", "GET /v1/diagnostics")


def test_every_answer_matches_the_schema(api_schema: schemathesis.BaseSchema) -> None:
    labels = []
    for result in api_schema.get_all_operations():
        operation = result.ok()
        if operation.label in SKIPPED:
            continue
        labels.append(operation.label)

        @given(case=operation.as_strategy())
        @settings(
            max_examples=EXAMPLES,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        def check(case: schemathesis.Case) -> None:
            case.call_and_validate(headers=dict(COMMANDS))

        try:
            check()
        except Exception as exc:
            exc.add_note(f"operation: {operation.label}")
            raise

    assert "POST /v1/devices/{imei}/commands" in labels
    assert len(labels) >= 8
