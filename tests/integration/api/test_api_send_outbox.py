"""Sending as Nylas v3 users expect (issue 12 item 4), driven with the official SDK where it has
the call: Idempotency-Key, scheduled sends and /messages/schedules, bcc on the Sent copy only,
reply_to_message_id by Message-ID, send_raw_mime, use_draft, and the real id of a copy the
provider files itself. The API runs in this process and its sends are drained on threads by
the workers' own code (tests/e2e/test_send_outbox.py runs the Celery worker as a process)."""

from __future__ import annotations

import contextlib
import email
import email.policy
import imaplib
import json
import threading
import time
from collections.abc import Iterator
from email.message import EmailMessage

import pytest
from api_support import ApiServer, SmtpServer, connect_with_smtp, count_in, now
from nylas.models.errors import NylasApiError
from sqlalchemy import select, update

from pipeline.db import session_scope
from pipeline.models import Grant
from pipeline.outbound.outbox import send_outbox
from pipeline.webhooks import payloads
from tests.support.mail import create_folder, imap_login
from tests.support.services import MailUser, TlsFiles
from tests.support.waiting import wait_for

pytestmark = pytest.mark.services

DUE_TIMEOUT_S = 30
REFUSED = "nobody@example.test"  # the SMTP server refuses this recipient (550)


@pytest.fixture
def smtp(tls_files: TlsFiles, mail_user: MailUser) -> Iterator[SmtpServer]:
    server = SmtpServer(
        str(tls_files.cert_file),
        str(tls_files.key_file),
        mail_user.name,
        mail_user.password,
        refused=frozenset({REFUSED}),
    )
    yield server
    server.close()


def connect(api: ApiServer, user: MailUser, smtp: SmtpServer) -> str:
    """A grant with SMTP and a Sent folder, synced once."""
    return connect_with_smtp(api, user, smtp, folders=("Sent",))


def parsed(raw: bytes) -> EmailMessage:
    message = email.message_from_bytes(raw, policy=email.policy.default)
    assert isinstance(message, EmailMessage)
    return message


def sent_copies(user: MailUser, folder: str = "Sent") -> list[EmailMessage]:
    """The messages in a folder (Sent by default), as the server has them."""
    conn = imap_login(user.server, user.name, user.password)
    try:
        conn.select(f'"{folder}"', readonly=True)
        # One FETCH of every message: a worker may expunge from the folder meanwhile (a sent
        # draft leaves Drafts), and a UID found by a SEARCH could be gone by its own FETCH.
        _, fetched = conn.uid("FETCH", "1:*", "(BODY.PEEK[])")
        return [parsed(item[1]) for item in fetched if isinstance(item, tuple)]
    finally:
        conn.logout()


def test_the_same_idempotency_key_sends_once_and_answers_the_same(
    api: ApiServer, mail_user: MailUser, smtp: SmtpServer
) -> None:
    grant_id = connect(api, mail_user, smtp)
    client = api.nylas()
    body = {"to": [{"email": "bob@example.test"}], "subject": "Once", "body": "only once"}
    key = {"headers": {"Idempotency-Key": "order-1042-confirmation"}}
    first = client.messages.send(grant_id, dict(body), overrides=key)  # type: ignore[arg-type]
    again = client.messages.send(grant_id, dict(body), overrides=key)  # type: ignore[arg-type]
    assert len(smtp.messages) == 1
    assert first.data.id and again.data.id == first.data.id
    assert again.headers.get("idempotent-response") == "true"
    assert "idempotent-response" not in {k.lower() for k in first.headers}
    assert count_in(mail_user, "Sent") == 1

    other = dict(body, subject="Something else")
    with pytest.raises(NylasApiError) as reused:
        client.messages.send(grant_id, other, overrides=key)  # type: ignore[arg-type]
    assert reused.value.status_code == 409
    assert reused.value.type == "api.invalid_idempotent_request"
    with api.http() as http:
        too_long = http.post(
            f"/v3/grants/{grant_id}/messages/send",
            json=body,
            headers={"Idempotency-Key": "k" * 257},
        )
    assert too_long.status_code == 400
    assert too_long.json()["error"]["type"] == "api.invalid_idempotency_key"
    assert len(smtp.messages) == 1
    # without a key, each request is a send of its own
    client.messages.send(grant_id, dict(body))
    assert len(smtp.messages) == 2


def test_bcc_is_in_the_answer_and_the_sent_copy_never_on_the_wire(
    api: ApiServer, mail_user: MailUser, smtp: SmtpServer
) -> None:
    grant_id = connect(api, mail_user, smtp)
    sent = (
        api.nylas()
        .messages.send(
            grant_id,
            {
                "to": [{"email": "bob@example.test"}],
                "bcc": [{"name": "Hidden Person", "email": "hidden@example.test"}],
                "subject": "With a blind copy",
                "body": "hi",
            },
        )
        .data
    )
    assert [(b.get("name"), b["email"]) for b in sent.bcc or []] == [
        ("Hidden Person", "hidden@example.test")
    ]
    _, rcpt, wire = smtp.messages[-1]
    assert sorted(rcpt) == ["bob@example.test", "hidden@example.test"]
    assert b"hidden@example.test" not in wire
    (copy,) = sent_copies(mail_user)
    assert "hidden@example.test" in str(copy["Bcc"])
    assert copy["Message-ID"] == parsed(wire)["Message-ID"]


def test_reply_to_message_id_takes_the_rfc822_message_id(
    api: ApiServer, mail_user: MailUser, smtp: SmtpServer
) -> None:
    grant_id = connect(api, mail_user, smtp)
    client = api.nylas()
    first = client.messages.send(
        grant_id, {"to": [{"email": "bob@example.test"}], "subject": "Topic", "body": "one"}
    ).data
    first_mid = parsed(smtp.messages[-1][2])["Message-ID"]
    for ref in (first_mid, first_mid.strip("<>")):
        reply = client.messages.send(
            grant_id,
            {
                "to": [{"email": "bob@example.test"}],
                "subject": "Re: Topic",
                "body": "two",
                "reply_to_message_id": ref,
            },
        ).data
        wire = parsed(smtp.messages[-1][2])
        assert wire["In-Reply-To"] == first_mid
        assert reply.thread_id == first.thread_id
    with pytest.raises(NylasApiError) as unknown:
        client.messages.send(
            grant_id,
            {"to": [{"email": "a@b.c"}], "reply_to_message_id": "<nobody@example.test>"},
        )
    assert unknown.value.status_code == 404


def test_send_raw_mime(api: ApiServer, mail_user: MailUser, smtp: SmtpServer) -> None:
    grant_id = connect(api, mail_user, smtp)
    mime = (
        f"From: Me <{mail_user.email}>\r\n"
        "To: Bob <bob@example.test>\r\n"
        "Bcc: hidden@example.test\r\n"
        "Subject: Raw and important\r\n"
        "Importance: high\r\n"
        "X-Priority: 1\r\n"
        "Content-Type: text/plain; charset=utf-8\r\n"
        "\r\n"
        "Sent as I wrote it.\r\n"
    )
    sent = api.nylas().messages.send_raw_mime(grant_id, {"mime": mime}).data
    _, rcpt, wire = smtp.messages[-1]
    assert sorted(rcpt) == ["bob@example.test", "hidden@example.test"]
    on_wire = parsed(wire)
    assert on_wire["Importance"] == "high" and on_wire["X-Priority"] == "1"
    assert on_wire["Bcc"] is None and on_wire["Message-ID"]
    assert sent.id and sent.subject == "Raw and important"
    assert "hidden@example.test" in str(sent_copies(mail_user)[0]["Bcc"])


def test_send_at_is_listed_sent_when_due_and_a_cancelled_one_never_goes(
    api: ApiServer, mail_user: MailUser, smtp: SmtpServer
) -> None:
    create_folder(mail_user.server, mail_user.name, mail_user.password, "Drafts")
    grant_id = connect(api, mail_user, smtp)
    client = api.nylas()
    soon = int(now().timestamp()) + 10  # room for a loaded machine to make both requests
    later = int(now().timestamp()) + 3600
    due = client.messages.send(
        grant_id,
        {
            "to": [{"email": "bob@example.test"}],
            "subject": "Due soon",
            "send_at": soon,
            "use_draft": True,
        },
    ).data
    kept = client.messages.send(
        grant_id,
        {
            "to": [{"email": "bob@example.test"}],
            "subject": "Cancelled",
            "send_at": later,
            "use_draft": True,
        },
    ).data
    assert due.schedule_id and kept.schedule_id and due.send_at == soon
    assert smtp.messages == []  # nothing goes before its time
    # use_draft: they wait in Drafts meanwhile, as Nylas keeps them on the provider
    assert sorted(str(m["Subject"]) for m in sent_copies(mail_user, "Drafts")) == [
        "Cancelled",
        "Due soon",
    ]
    listed = {
        s.schedule_id: s.status.code for s in client.messages.list_scheduled_messages(grant_id).data
    }
    assert listed == {due.schedule_id: "pending", kept.schedule_id: "pending"}

    stopped = client.messages.stop_scheduled_message(grant_id, kept.schedule_id).data
    assert stopped.message
    wait_for(lambda: smtp.messages, "the due message to be sent", timeout_s=DUE_TIMEOUT_S)
    assert [parsed(raw)["Subject"] for _, _, raw in smtp.messages] == ["Due soon"]

    def status() -> str:
        return str(
            client.messages.find_scheduled_message(grant_id, due.schedule_id).data.status.code
        )

    wait_for(lambda: status() == "success", "the due message's success", timeout_s=DUE_TIMEOUT_S)
    found = client.messages.find_scheduled_message(grant_id, due.schedule_id).data
    assert found.status.code == "success" and found.close_time
    # sent: its Drafts copy goes (right after the Sent copy is filed); the cancelled one stays
    wait_for(
        lambda: [str(m["Subject"]) for m in sent_copies(mail_user, "Drafts")] == ["Cancelled"],
        "only the cancelled message's Drafts copy to stay",
        timeout_s=DUE_TIMEOUT_S,
    )
    cancelled = client.messages.find_scheduled_message(grant_id, kept.schedule_id).data
    assert cancelled.status.code == "cancelled"
    with pytest.raises(NylasApiError) as again:
        client.messages.stop_scheduled_message(grant_id, due.schedule_id)
    assert again.value.status_code == 400
    with pytest.raises(NylasApiError) as unknown:
        client.messages.find_scheduled_message(grant_id, "00000000-0000-4000-8000-000000000000")
    assert unknown.value.status_code == 404
    assert len(smtp.messages) == 1


def test_a_provider_that_files_sent_mail_itself_answers_the_real_id(
    api: ApiServer, mail_user: MailUser, tls_files: TlsFiles
) -> None:
    """Gmail-like: the SMTP server files the message in Sent; the engine finds it there by
    Message-ID and answers its id (before: ``"id": null``); the engine appends nothing."""

    def file_in_sent(raw: bytes) -> None:
        conn = imap_login(mail_user.server, mail_user.name, mail_user.password)
        try:
            conn.append('"Sent"', "(\\Seen)", imaplib.Time2Internaldate(time.time()), raw)
        finally:
            conn.logout()

    server = SmtpServer(
        str(tls_files.cert_file),
        str(tls_files.key_file),
        mail_user.name,
        mail_user.password,
        on_message=file_in_sent,
    )
    try:
        grant_id = connect(api, mail_user, server)
        with session_scope(api.settings.require_database_url()) as db:
            db.execute(update(Grant).where(Grant.id == grant_id).values(provider="gmail"))
            db.commit()
        sent = (
            api.nylas()
            .messages.send(
                grant_id,
                {"to": [{"email": "bob@example.test"}], "subject": "Filed by them", "body": "x"},
            )
            .data
        )
        assert sent.id is not None
        assert count_in(mail_user, "Sent") == 1  # theirs only: no second copy
        folders = {f.name: f.id for f in api.nylas().folders.list(grant_id).data}
        assert sent.folders == [folders["Sent"]]
    finally:
        server.close()


def test_a_sent_copy_that_cannot_be_filed_yet_is_filed_later_and_answered_with_its_id(
    api: ApiServer, mail_user: MailUser, smtp: SmtpServer
) -> None:
    """The Sent copy fails once (here the server's Sent folder is gone for a moment; in CI it
    was no IMAP login in time during a burst): the message went, so it is not sent again; the
    copy is tried again and the answer carries its id (before: ``"id": null`` and no copy)."""
    grant_id = connect(api, mail_user, smtp)
    conn = imap_login(mail_user.server, mail_user.name, mail_user.password)
    try:
        assert conn.delete('"Sent"')[0] == "OK"
    finally:
        conn.logout()

    def attempts() -> int:
        with session_scope(api.settings.require_database_url()) as db:
            return int(
                db.execute(
                    select(send_outbox.c.filing_attempts).where(send_outbox.c.grant_id == grant_id)
                ).scalar_one_or_none()
                or 0
            )

    def bring_sent_back() -> None:
        with contextlib.suppress(AssertionError):  # the test's own assertions say what failed
            wait_for(attempts, "a first filing attempt", timeout_s=DUE_TIMEOUT_S)
        create_folder(mail_user.server, mail_user.name, mail_user.password, "Sent")

    helper = threading.Thread(target=bring_sent_back)
    helper.start()
    try:
        sent = (
            api.nylas()
            .messages.send(
                grant_id,
                {"to": [{"email": "bob@example.test"}], "subject": "Filed later", "body": "x"},
            )
            .data
        )
    finally:
        helper.join()
    assert attempts() == 1  # the first try failed, the second filed it
    assert sent.id is not None and sent.subject == "Filed later"
    assert len(smtp.messages) == 1  # sent once
    assert [str(m["Subject"]) for m in sent_copies(mail_user)] == ["Filed later"]
    found = api.nylas().messages.find(grant_id, sent.id).data
    assert found.subject == "Filed later"


def test_a_server_that_never_answers_the_data_costs_one_deadline_and_no_second_send(
    api: ApiServer, mail_user: MailUser, tls_files: TlsFiles, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The message deadline ends a send whose answer never comes; the message may have been
    taken (this server keeps it before answering), so it is failed as unconfirmed, never sent
    again, and the answer says so."""
    from pipeline.outbound import smtp as smtp_module

    monkeypatch.setattr(smtp_module, "MESSAGE_DEADLINE_S", 2.0)
    server = SmtpServer(
        str(tls_files.cert_file),
        str(tls_files.key_file),
        mail_user.name,
        mail_user.password,
        data_delay_s=15,
    )
    try:
        grant_id = connect(api, mail_user, server)
        started = time.monotonic()
        with api.http() as http:
            answer = http.post(
                f"/v3/grants/{grant_id}/messages/send",
                json={"to": [{"email": "bob@example.test"}], "subject": "Slow", "body": "x"},
            )
        assert time.monotonic() - started < 12  # the deadline, not the server's 15 s
        assert answer.status_code == 504, answer.text
        assert answer.json()["error"]["type"] == "provider_error"
        assert "not sent again" in answer.json()["error"]["message"]
        time.sleep(1)  # time for a second send, which must not come
        assert len(server.messages) == 1
    finally:
        server.close()


def test_scheduled_sends_notify_send_success_and_send_failed(
    api: ApiServer, mail_user: MailUser, smtp: SmtpServer
) -> None:
    """Nylas (notifications/messages/message-send_success, -send_failed): a send with
    ``send_at`` ends in ``message.send_success`` (``data.grant_id``; the object is the sent
    message with ``schedule_id`` and ``send_at``, its body left out) or ``message.send_failed``
    (``data.grant_id``, ``data.reason``, ``data.error``); an immediate send sends neither."""
    grant_id = connect(api, mail_user, smtp)
    client = api.nylas()
    soon = int(now().timestamp()) + 5
    good = client.messages.send(
        grant_id,
        {
            "to": [{"email": "bob@example.test"}],
            "subject": "Goes",
            "body": "<p>Hi Bob</p>",
            "send_at": soon,
        },
    ).data
    bad = client.messages.send(
        grant_id, {"to": [{"email": REFUSED}], "subject": "Refused", "send_at": soon}
    ).data
    client.messages.send(grant_id, {"to": [{"email": "bob@example.test"}], "subject": "Now"})

    def codes() -> dict[str, str]:
        listed = client.messages.list_scheduled_messages(grant_id).data
        return {s.schedule_id: s.status.code for s in listed}

    expected = {good.schedule_id: "success", bad.schedule_id: "failed"}
    wait_for(
        lambda: codes() == expected, f"the scheduled sends to end as {expected}", DUE_TIMEOUT_S
    )

    def send_results() -> int:
        return sum(1 for r in api.outbox_rows() if r[0].startswith("message.send_"))

    # the success is written once the Sent copy is filed
    wait_for(lambda: send_results() == 2, "both send results in the outbox", DUE_TIMEOUT_S)
    rows = api.outbox_rows()
    results = [r for r in rows if r[0].startswith("message.send_")]
    assert sorted((t, s) for t, s, _, _ in results) == [
        ("message.send_failed", bad.schedule_id),
        ("message.send_success", good.schedule_id),
    ]
    assert payloads.source_for("message.send_success", grant_id) == "/nylas/send"
    envelopes = {
        t: json.loads(
            payloads.build(
                notification_id="n",
                type=t,
                grant_id=grant_id,
                occurred_at=now(),
                attempt=1,
                application_id="app",
                obj=obj,
                data=data,
                max_bytes=1_000_000,
            ).body
        )["data"]
        for t, _, obj, data in results
    }
    success = envelopes["message.send_success"]
    assert success["grant_id"] == grant_id
    sent = success["object"]
    assert sent["object"] == "message" and sent["grant_id"] == grant_id
    assert sent["subject"] == "Goes" and sent["snippet"].startswith("Hi Bob")
    assert sent["schedule_id"] == good.schedule_id and sent["send_at"] == soon
    assert "body" not in sent and "use_draft" not in sent
    # the object is the Sent copy as the API shows it, announced before by message.created
    assert client.messages.find(grant_id, sent["id"]).data.subject == "Goes"
    created = [i for i, r in enumerate(rows) if r[0] == "message.created" and r[1] == sent["id"]]
    assert created and created[0] < rows.index(
        next(r for r in rows if r[0] == "message.send_success")
    )
    failed = envelopes["message.send_failed"]
    assert failed["grant_id"] == grant_id
    assert REFUSED in failed["reason"]
    assert failed["error"]["message"] == failed["reason"]
    assert failed["error"]["status_code"] == 400 and failed["error"]["type"]
    assert failed["object"]["subject"] == "Refused"
    assert failed["object"]["schedule_id"] == bad.schedule_id
    assert failed["object"]["send_at"] == soon
