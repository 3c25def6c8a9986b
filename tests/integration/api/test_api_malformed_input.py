"""Malformed input is a 4xx in the v3 error envelope, never a 500 (issue 10).

Seen: CR/LF in a send's subject, names or header values gave 500 (nothing was injected), and so
did deeply nested JSON.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from api_support import ApiServer, SmtpServer, connect_body, connect_with_smtp, sync

from tests.support.services import MailUser, TlsFiles

pytestmark = pytest.mark.services

DEPTH = 100_000  # far beyond Python's recursion limit


@pytest.fixture
def smtp(tls_files: TlsFiles, mail_user: MailUser) -> Iterator[SmtpServer]:
    server = SmtpServer(
        str(tls_files.cert_file), str(tls_files.key_file), mail_user.name, mail_user.password
    )
    yield server
    server.close()


def assert_4xx(response: object, where: str) -> None:
    import httpx

    assert isinstance(response, httpx.Response)
    assert 400 <= response.status_code < 500, (where, response.status_code, response.text[:300])
    body = response.json()
    assert "request_id" in body, where
    assert "error" in body, where
    assert "Traceback" not in response.text


@pytest.mark.parametrize(
    "change",
    [
        {"subject": "hello\r\nBcc: victim@example.test"},
        {"subject": "line\nbreak"},
        {"subject": "cr\ronly"},
        {"to": [{"name": "Eve\r\nBcc: victim@example.test", "email": "to@example.test"}]},
        {"cc": [{"name": "x\ny", "email": "cc@example.test"}]},
        {"reply_to": [{"name": "a\rb", "email": "r@example.test"}]},
        {"from": [{"name": "me\r\nX-Evil: 1", "email": "FROM"}]},
        {"custom_headers": [{"name": "X-Thing", "value": "v\r\nBcc: victim@example.test"}]},
        {"attachments": [{"filename": "a\r\nb.txt", "content_type": "text/plain", "content": ""}]},
        {"attachments": [{"filename": "a.txt", "content_type": "text/\r\nplain", "content": ""}]},
        {"attachments": [{"filename": "a.txt", "content": "", "content_id": "x\r\ny"}]},
    ],
)
def test_line_breaks_in_header_fields_are_a_400(
    api: ApiServer, mail_user: MailUser, smtp: SmtpServer, change: dict[str, object]
) -> None:
    grant_id = connect_with_smtp(api, mail_user, smtp, mail_user.password)
    body: dict[str, object] = {
        "to": [{"email": "to@example.test"}],
        "subject": "fine",
        "body": "text",
        **change,
    }
    if "from" in change:
        body["from"] = [{"name": "me\r\nX-Evil: 1", "email": mail_user.email}]
    with api.http() as http:
        r = http.post(f"/v3/grants/{grant_id}/messages/send", json=body)
    assert_4xx(r, str(change))
    assert r.json()["error"]["type"] == "invalid_request_error"
    assert smtp.messages == []  # nothing was sent


def _nested(kind: str) -> str:
    if kind == "list":
        return "[" * DEPTH + "]" * DEPTH
    return '{"a":' * DEPTH + "1" + "}" * DEPTH


@pytest.mark.parametrize("kind", ["list", "object"])
def test_deeply_nested_json_is_a_400_everywhere(
    api: ApiServer, mail_user: MailUser, kind: str
) -> None:
    with api.http() as http:
        r = http.post("/v3/connect/custom", json=connect_body(mail_user))
        assert r.status_code == 201, r.text
        grant_id = r.json()["data"]["id"]
        sync(api.settings, grant_id)
        message_id = http.get(f"/v3/grants/{grant_id}/messages").json()["data"]
        some = message_id[0]["id"] if message_id else "m"
        payload = _nested(kind)
        headers = {"content-type": "application/json"}
        for method, path in [
            ("POST", "/v3/connect/custom"),
            ("POST", "/v3/connect/token"),
            ("PATCH", f"/v3/grants/{grant_id}"),
            ("POST", f"/v3/grants/{grant_id}/messages/send"),
            ("PUT", f"/v3/grants/{grant_id}/messages/{some}"),
            ("POST", f"/v3/grants/{grant_id}/folders"),
            ("POST", "/v3/webhooks"),
            ("POST", "/v3/applications/redirect-uris"),
        ]:
            r = http.request(method, path, content=payload, headers=headers)
            assert_4xx(r, f"{method} {path}")
        # nested inside an otherwise valid body, in a free-form field
        body = connect_body(mail_user)
        r = http.post(
            f"/v3/grants/{grant_id}/messages/send",
            content=(
                '{"to":[{"email":"a@example.test"}],"metadata":' + _nested(kind) + "}"
            ).encode(),
            headers=headers,
        )
        assert_4xx(r, "metadata")
        del body
