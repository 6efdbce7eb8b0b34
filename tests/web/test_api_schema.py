"""schemathesis against the API's own OpenAPI schema, on the real app: no 5xx, and
every answer as the schema says (status codes, content types, bodies)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings

from config.settings import Settings
from tests.web.conftest import Served, serving


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    home = tmp_path_factory.mktemp("schema") / "var"
    with serving(Settings(home=home, answer_wait_seconds=1)) as served:
        yield served


@pytest.fixture(scope="module")
def token(running: Served) -> str:
    return running.token()


def test_api_keeps_to_its_schema(running: Served, token: str) -> None:
    schema = schemathesis.openapi.from_url(f"{running.base_url}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert {op.path for op in operations} >= {"/api/v1/files", "/api/v1/jobs/{job_id}",
                                               "/api/v1/outbox"}
    headers = {"Authorization": f"Bearer {token}"}
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(max_examples=25, deadline=None, database=None,
                  suppress_health_check=list(HealthCheck))
        def check(case: Any) -> None:
            case.call_and_validate(headers=headers)

        check()
