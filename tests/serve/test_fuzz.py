"""The server fuzzed from its own OpenAPI schema (schemathesis): whatever the body, never a server error."""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error


@pytest.fixture(scope="module")
def api_schema(runs, tmp_path_factory):
    from tunesmith import api

    app = api.serve_app([runs / "clf", runs / "chat"], store=tmp_path_factory.mktemp("fuzz") / "s.sqlite",
                        max_tokens=8)  # fmt: skip
    return schemathesis.openapi.from_asgi("/openapi.json", app)


def test_no_request_makes_a_server_error(api_schema):
    """Every operation, with bodies drawn from its schema (valid and not); schemathesis' pytest plugin is not
    used: its fixture loader does not run under this pytest."""
    operations = [result.ok() for result in api_schema.get_all_operations()]
    assert len(operations) >= 9
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        def check(case):
            case.call_and_validate(checks=[not_a_server_error])

        check()
