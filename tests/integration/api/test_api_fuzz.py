"""Fuzzing from the OpenAPI spec (schemathesis + hypothesis): no 5xx, no stack trace, no secret.

Every operation of ``/openapi.json`` is called with generated parameters and bodies against the
real server (real Postgres) and one real, synced grant. Operations that reach out to the network
with what they are given (connecting an account, verifying a webhook URL) get every host in
their generated body replaced by a documentation address (192.0.2.1) the address guard refuses,
so no packet leaves the machine and no DNS is asked, while everything else stays generated.
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
# Operations that connect where their body says: a refused host is their 504 provider_error
OUTBOUND = {
    ("POST", "/v3/connect/custom"),
    ("PATCH", "/v3/grants/{grant_id}"),
}
REFUSED_HOST = "192.0.2.1"  # TEST-NET-1: refused by the address guard before any packet
HOST_FIELDS = ("imap_host", "smtp_host")
URL_FIELDS = ("webhook_url", "url")


def keep_on_this_machine(body: object) -> object:
    """A generated body with every host and URL replaced by one the guard refuses."""
    if isinstance(body, dict):
        body = dict(body)
        for key in URL_FIELDS:
            if key in body:
                body[key] = f"https://{REFUSED_HOST}/hook"
        settings = body.get("settings")
        if isinstance(settings, dict):
            settings = {**settings, **{k: REFUSED_HOST for k in HOST_FIELDS}}
            body["settings"] = settings
    return body


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
            case.body = keep_on_this_machine(case.body)
            response = case.call(
                base_url=api.url, headers={"Authorization": f"Bearer {API_KEY}"}, timeout=30
            )
            where = f"{case.method} {case.formatted_path}"
            statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
            refused_host = (
                (case.method.upper(), case.path) in OUTBOUND
                and response.status_code == 504
                and response.json()["error"]["type"] == "provider_error"
            )
            assert response.status_code < 500 or refused_host, (where, response.text[:500])
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
