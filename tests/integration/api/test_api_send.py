"""Sending through the API: SMTP with STARTTLS and AUTH, then the copy in Sent."""

from __future__ import annotations

import base64
import email
import email.policy
import threading
import time
from collections.abc import Iterator
from email.message import EmailMessage

import httpx
import pytest
import redis
from api_support import ApiServer, SmtpServer, connect_with_smtp, count_in, now, sync
from nylas.models.errors import NylasApiError

from pipeline.limits import RateLimiter
from tests.support.mail import create_folder
from tests.support.services import MailUser, TlsFiles

pytestmark = pytest.mark.services

NOTE = b"just a note\n" * 10
BIG = bytes(range(256)) * (14 * 1024)  # 3.5 MiB: the SDK switches to multipart


@pytest.fixture
def smtp(tls_files: TlsFiles, mail_user: MailUser) -> Iterator[SmtpServer]:
    server = SmtpServer(
        str(tls_files.cert_file), str(tls_files.key_file), mail_user.name, mail_user.password
    )
    yield server
    server.close()


def parsed(raw: bytes) -> EmailMessage:
    message = email.message_from_bytes(raw, policy=email.policy.default)
    assert isinstance(message, EmailMessage)
    return message


def test_send_files_in_sent_and_threads_replies(
    api: ApiServer, mail_user: MailUser, smtp: SmtpServer
) -> None:
    create_folder(mail_user.server, mail_user.name, mail_user.password, "Sent")
    grant_id = connect_with_smtp(api, mail_user, smtp, mail_user.password)
    client = api.nylas()
    sent = client.messages.send(
        grant_id,
        {
            "to": [{"name": "Bob", "email": "bob@example.test"}],
            "bcc": [{"email": "hidden@example.test"}],
            "subject": "Hello from the API",
            "body": "<p>Hello <b>Bob</b></p>",
            "attachments": [
                {
                    "filename": "note.txt",
                    "content_type": "text/plain",
                    "content": base64.b64encode(NOTE).decode(),
                    "size": len(NOTE),
                }
            ],
        },
    ).data
    assert sent.id
    assert sent.subject == "Hello from the API"
    folders = {f.name: f.id for f in client.folders.list(grant_id).data}
    assert sent.folders == [folders["Sent"]]
    assert [a.filename for a in sent.attachments or []] == ["note.txt"]

    mail_from, rcpt, raw = smtp.messages[-1]
    assert mail_from == mail_user.email
    assert sorted(rcpt) == ["bob@example.test", "hidden@example.test"]
    on_the_wire = parsed(raw)
    assert "hidden@example.test" not in raw.decode("utf-8", "replace")  # Bcc stays off headers
    assert on_the_wire["From"] == mail_user.email
    parts = {p.get_filename(): p.get_payload(decode=True) for p in on_the_wire.iter_attachments()}
    assert parts == {"note.txt": NOTE}
    assert count_in(mail_user, "Sent") == 1

    # the sync recognizes the copy it did not fetch itself: still one message
    sync(api.settings, grant_id)
    same = client.messages.list(grant_id, query_params={"subject": "Hello from the API"}).data
    assert [m.id for m in same] == [sent.id]

    reply = client.messages.send(
        grant_id,
        {
            "to": [{"email": "bob@example.test"}],
            "subject": "Re: Hello from the API",
            "body": "and a reply",
            "is_plaintext": True,
            "reply_to_message_id": sent.id,
        },
    ).data
    _, _, raw_reply = smtp.messages[-1]
    assert parsed(raw_reply)["In-Reply-To"] == on_the_wire["Message-ID"]
    assert reply.thread_id == sent.thread_id
    assert ("message.created", reply.id) in api.outbox()


def test_large_attachments_go_as_multipart(
    api: ApiServer, mail_user: MailUser, smtp: SmtpServer
) -> None:
    create_folder(mail_user.server, mail_user.name, mail_user.password, "Sent")
    grant_id = connect_with_smtp(api, mail_user, smtp, mail_user.password)
    client = api.nylas()
    sent = client.messages.send(
        grant_id,
        {
            "to": [{"email": "bob@example.test"}],
            "subject": "big one",
            "body": "see attached",
            "attachments": [
                {
                    "filename": "blob.bin",
                    "content_type": "application/octet-stream",
                    "content": BIG,  # type: ignore[typeddict-item]
                    "size": len(BIG),
                }
            ],
        },
    ).data
    assert sent.id
    _, _, raw = smtp.messages[-1]
    parts = {p.get_filename(): p.get_payload(decode=True) for p in parsed(raw).iter_attachments()}
    assert parts == {"blob.bin": BIG}
    data = client.attachments.download_bytes(
        grant_id, (sent.attachments or [])[0].id, {"message_id": sent.id}
    )
    assert data == BIG


def test_send_errors(api: ApiServer, mail_user: MailUser, smtp: SmtpServer) -> None:
    create_folder(mail_user.server, mail_user.name, mail_user.password, "Sent")
    grant_id = connect_with_smtp(api, mail_user, smtp, "wrong-smtp-password")
    client = api.nylas()
    with pytest.raises(NylasApiError) as refused:
        client.messages.send(grant_id, {"to": [{"email": "bob@example.test"}], "subject": "x"})
    assert refused.value.status_code == 401
    assert "SMTP" in refused.value.args[0]
    assert "wrong-smtp-password" not in refused.value.args[0]
    assert count_in(mail_user, "Sent") == 0
    path = f"/v3/grants/{grant_id}/messages/send"
    with api.http() as http:
        cases = {
            "no recipients": http.post(path, json={"subject": "x"}),
            "scheduled beyond 30 days": http.post(
                path,
                json={"to": [{"email": "a@b.c"}], "send_at": int(now().timestamp()) + 31 * 86400},
            ),
            "bad base64": http.post(
                path,
                json={
                    "to": [{"email": "a@b.c"}],
                    "attachments": [
                        {"filename": "x", "content_type": "text/plain", "content": "%%%"}
                    ],
                },
            ),
            "bad address": http.post(path, json={"to": [{"email": "not an address"}]}),
            "other sender": http.post(
                path, json={"to": [{"email": "a@b.c"}], "from": [{"email": "boss@example.test"}]}
            ),
            "malformed": http.post(
                path, content=b"{", headers={"Content-Type": "application/json"}
            ),
        }
        unknown_parent = http.post(
            path,
            json={
                "to": [{"email": "a@b.c"}],
                "reply_to_message_id": "00000000-0000-4000-8000-000000000000",
            },
        )
    for name, response in cases.items():
        assert response.status_code == 400, (name, response.text)
        assert response.json()["error"]["type"] == "invalid_request_error", name
    assert unknown_parent.status_code == 404
    assert smtp.messages == []


def test_smtp_login_takes_a_token_of_the_accounts_login_budget(
    api: ApiServer, mail_user: MailUser, smtp: SmtpServer
) -> None:
    """A send with no login token left waits in the outbox for one (no 429), and goes as soon
    as the budget allows."""
    create_folder(mail_user.server, mail_user.name, mail_user.password, "Sent")
    grant_id = connect_with_smtp(api, mail_user, smtp, mail_user.password)
    limiter = RateLimiter(redis.Redis.from_url(api.settings.require_redis_url(), socket_timeout=5))
    limiter.set_limits("generic", {"account_logins_per_min": 1})
    # take what other processes of this account left of the budget
    assert any(limiter.try_login("generic", "127.0.0.1", grant_id) > 0 for _ in range(10))
    body = {"to": [{"email": "bob@example.test"}], "subject": "later", "body": "hi"}
    answers: list[httpx.Response] = []

    def send() -> None:
        with api.http() as http:
            answers.append(http.post(f"/v3/grants/{grant_id}/messages/send", json=body))

    sender = threading.Thread(target=send)
    sender.start()
    time.sleep(3)  # time to be refused or sent, which it must not be
    assert answers == []  # waiting for a token, not refused
    assert smtp.messages == []
    limiter.set_limits("generic", {"account_logins_per_min": 6000})
    sender.join(timeout=30)
    assert answers and answers[0].status_code == 200, answers
    assert len(smtp.messages) == 1


def test_send_answers_the_threading_headers_when_asked(
    api: ApiServer, mail_user: MailUser, smtp: SmtpServer
) -> None:
    """Nylas' send takes fields=include_basic_headers / include_headers, as reads do."""
    create_folder(mail_user.server, mail_user.name, mail_user.password, "Sent")
    grant_id = connect_with_smtp(api, mail_user, smtp, mail_user.password)
    first = (
        api.nylas()
        .messages.send(
            grant_id, {"to": [{"email": "bob@example.test"}], "subject": "One", "body": "one"}
        )
        .data
    )
    with api.http() as http:
        reply = http.post(
            f"/v3/grants/{grant_id}/messages/send",
            params={"fields": "include_basic_headers"},
            json={
                "to": [{"email": "bob@example.test"}],
                "subject": "Re: One",
                "body": "two",
                "reply_to_message_id": first.id,
            },
        )
        everything = http.post(
            f"/v3/grants/{grant_id}/messages/send",
            params={"fields": "include_headers"},
            json={"to": [{"email": "bob@example.test"}], "subject": "Three", "body": "three"},
        )
    assert reply.status_code == 200, reply.text
    first_id = parsed(smtp.messages[0][2])["Message-ID"]
    reply_wire = parsed(smtp.messages[1][2])
    headers = [(h["name"], h["value"]) for h in reply.json()["data"]["headers"]]
    assert headers == [
        ("Message-ID", reply_wire["Message-ID"]),
        ("In-Reply-To", first_id),
        ("References", first_id),
    ]
    assert everything.status_code == 200, everything.text
    names = {h["name"].lower() for h in everything.json()["data"]["headers"]}
    assert {"message-id", "from", "to", "subject", "date"} <= names


def test_send_keeps_the_metadata_on_the_sent_message(
    api: ApiServer, mail_user: MailUser, smtp: SmtpServer
) -> None:
    """messages/send with ``metadata`` (Nylas, dev-guide/metadata): the answer, the stored Sent
    copy and its ``message.created`` carry it, and ``metadata_pair`` finds the message; bad
    metadata is a 400 and nothing is sent."""
    create_folder(mail_user.server, mail_user.name, mail_user.password, "Sent")
    grant_id = connect_with_smtp(api, mail_user, smtp, mail_user.password)
    client = api.nylas()
    pairs = {"key1": "campaign-7", "crm_id": "42"}
    sent = client.messages.send(
        grant_id,
        {
            "to": [{"email": "bob@example.test"}],
            "subject": "tagged",
            "body": "with metadata",
            "metadata": pairs,  # type: ignore[typeddict-unknown-key]
        },
    ).data
    assert sent.id
    assert sent.metadata == pairs
    assert client.messages.find(grant_id, sent.id).data.metadata == pairs
    found = client.messages.list(grant_id, {"metadata_pair": "key1:campaign-7"}).data
    assert [m.id for m in found] == [sent.id]
    created = [o for t, o in api.outbox_objects() if t == "message.created" and o["id"] == sent.id]
    assert created and created[-1]["metadata"] == pairs

    sent_before = len(smtp.messages)
    with pytest.raises(NylasApiError) as refused:
        client.messages.send(
            grant_id,
            {
                "to": [{"email": "bob@example.test"}],
                "subject": "bad",
                "metadata": {"key1": {"nested": True}},  # type: ignore[typeddict-unknown-key]
            },
        )
    assert refused.value.status_code == 400
    assert len(smtp.messages) == sent_before
