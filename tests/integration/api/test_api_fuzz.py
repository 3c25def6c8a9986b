"""Fuzzing from the OpenAPI spec (schemathesis + hypothesis): no 5xx, no stack trace, no secret.

Every operation of ``/openapi.json`` is called with generated parameters and bodies against the
real server (real Postgres) and one real, synced grant. Operations that reach out to the network
with what they are given (connecting an account, verifying a webhook URL) are left out of the
generated bodies: generated hosts and URLs would make the run depend on DNS and the outside
world; their validation is covered by the endpoint tests.
"""

from __future__ import annotations

import pytest
import schemathesis
from api_support import API_KEY, ApiServer, append_many, connect_and_sync, now
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.support.mail import make_message
from tests.support.services import MailUser

pytestmark = pytest.mark.services

EXAMPLES_PER_OPERATION = 25
OUTBOUND = {
    ("POST", "/v3/connect/custom"),
    ("PATCH", "/v3/grants/{grant_id}"),
    ("POST", "/v3/webhooks"),
    ("PUT", "/v3/webhooks/{webhook_id}"),
    ("POST", "/v3/webhooks/send-test-event"),
}


def test_no_server_errors_or_leaks(api: ApiServer, mail_user: MailUser) -> None:
    t = now()
    append_many(mail_user, [(make_message(f"fuzz {i}", date=t), "", t) for i in range(3)])
    grant_id = connect_and_sync(api, mail_user)
    schema = schemathesis.openapi.from_url(f"{api.url}/openapi.json")
    secrets = (API_KEY, api.settings.encryption_key_list[0], mail_user.password)
    called: list[str] = []
    statuses: dict[int, int] = {}
    for result in schema.get_all_operations():
        operation = result.ok()
        if (operation.method.upper(), operation.path) in OUTBOUND:
            continue

        @given(case=operation.as_strategy(), real_grant=st.booleans())
        @settings(
            max_examples=EXAMPLES_PER_OPERATION,
            deadline=None,
            suppress_health_check=list(HealthCheck),
            database=None,
        )
        def call(case: schemathesis.Case, real_grant: bool) -> None:
            if real_grant and case.path_parameters and "grant_id" in case.path_parameters:
                case.path_parameters["grant_id"] = grant_id  # reach the deeper code too
            response = case.call(
                base_url=api.url, headers={"Authorization": f"Bearer {API_KEY}"}, timeout=30
            )
            where = f"{case.method} {case.formatted_path}"
            statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
            assert response.status_code < 500, (where, response.text[:500])
            assert "Traceback" not in response.text, where
            for secret in secrets:
                assert secret not in response.text, where
            content_type = (response.headers.get("content-type") or [""])[0]
            if content_type.startswith("application/json"):
                assert "request_id" in response.json(), where

        call()
        called.append(f"{operation.method.upper()} {operation.path}")
    assert len(called) >= 30  # the whole surface, not a stub
    assert sum(statuses.values()) >= 10 * len(called), statuses
    assert statuses.get(200, 0) >= 50, statuses  # deep paths ran, not only validation errors
