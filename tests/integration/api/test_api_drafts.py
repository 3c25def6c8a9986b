"""The Drafts API as Nylas v3 serves it (reference/api/drafts), driven by the official SDK
against the API process, Dovecot and an aiosmtpd server: drafts live in the server's Drafts
folder, keep their id when updated, and leave it when sent or destroyed."""

from __future__ import annotations

import base64
import email
import email.policy
import imaplib
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from typing import Any

import httpx
import pytest
from api_support import (
    API_KEY,
    ApiServer,
    SmtpServer,
    connect_and_sync,
    connect_with_smtp,
    count_in,
    sync,
)
from nylas.models.errors import NylasApiError
from nylas.utils.file_utils import _build_form_request

from tests.support.mail import append, create_folder, imap_login, make_message
from tests.support.services import MailUser, TlsFiles

pytestmark = pytest.mark.services

NOTE = b"draft attachment\n" * 20
BIG = bytes(range(256)) * (14 * 1024)  # 3.5 MiB: the SDK sends it as multipart/form-data


@pytest.fixture
def smtp(tls_files: TlsFiles, mail_user: MailUser) -> Iterator[SmtpServer]:
    server = SmtpServer(
        str(tls_files.cert_file), str(tls_files.key_file), mail_user.name, mail_user.password
    )
    yield server
    server.close()


def connect(api: ApiServer, user: MailUser, smtp: SmtpServer) -> str:
    """A grant with SMTP, its Drafts and Sent folders made first, synced once."""
    return connect_with_smtp(api, user, smtp, folders=("Drafts", "Sent"))


def server_drafts(user: MailUser) -> list[tuple[str, EmailMessage]]:
    """Every message in the server's Drafts folder: (FLAGS, parsed message)."""
    conn = imap_login(user.server, user.name, user.password)
    try:
        conn.select('"Drafts"', readonly=True)
        typ, data = conn.uid("FETCH", "1:*", "(FLAGS BODY.PEEK[])")
        assert typ == "OK", data
        out = []
        for item in data:
            if isinstance(item, tuple):
                flags = " ".join(f.decode() for f in imaplib.ParseFlags(item[0]))
                parsed = email.message_from_bytes(item[1], policy=email.policy.default)
                assert isinstance(parsed, EmailMessage)
                out.append((flags, parsed))
        return out
    finally:
        conn.logout()


def parse(raw: bytes) -> EmailMessage:
    message = email.message_from_bytes(raw, policy=email.policy.default)
    assert isinstance(message, EmailMessage)
    return message


def files_of(message: EmailMessage) -> dict[str | None, bytes]:
    return {
        p.get_filename(): p.get_payload(decode=True)  # type: ignore[misc]
        for p in message.iter_attachments()
    }


def test_a_draft_from_create_to_send(api: ApiServer, mail_user: MailUser, smtp: SmtpServer) -> None:
    """create (with a file) -> on the server's Drafts with \\Draft -> list/find -> update
    (server copy replaced, same id) -> send (SMTP, filed in Sent, draft gone)."""
    grant_id = connect(api, mail_user, smtp)
    client = api.nylas()
    draft = client.drafts.create(
        grant_id,
        {
            "to": [{"name": "Bob", "email": "bob@example.test"}],
            "bcc": [{"email": "hidden@example.test"}],
            "subject": "First words",
            "body": "<p>Hello <b>Bob</b></p>",
            "starred": True,
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
    assert draft.object == "draft"
    assert draft.subject == "First words"
    assert draft.starred is True
    assert [a.filename for a in draft.attachments or []] == ["note.txt"]
    assert [b["email"] for b in draft.bcc or []] == ["hidden@example.test"]
    folders = {f.name: f.id for f in client.folders.list(grant_id).data}
    assert draft.folders == [folders["Drafts"]]

    ((flags, on_server),) = server_drafts(mail_user)
    assert "\\Draft" in flags and "\\Flagged" in flags
    assert on_server["Subject"] == "First words"
    assert on_server["Bcc"] == "hidden@example.test"  # a draft keeps its Bcc until it is sent
    assert files_of(on_server) == {"note.txt": NOTE}
    # the attachment's bytes come from the server's copy
    assert (
        client.attachments.download_bytes(
            grant_id, (draft.attachments or [])[0].id, {"message_id": draft.id}
        )
        == NOTE
    )

    assert [d.id for d in client.drafts.list(grant_id).data] == [draft.id]
    assert client.drafts.find(grant_id, draft.id).data.subject == "First words"
    # drafts are not messages (Nylas lists them under /drafts); a thread names them apart
    assert draft.id not in [m.id for m in client.messages.list(grant_id).data]
    thread = client.threads.find(grant_id, draft.thread_id).data  # type: ignore[arg-type]
    assert (thread.draft_ids, thread.message_ids, thread.has_drafts) == ([draft.id], [], True)

    updated = client.drafts.update(
        grant_id, draft.id, {"subject": "Better words", "cc": [{"email": "carol@example.test"}]}
    ).data
    assert updated.id == draft.id
    assert updated.subject == "Better words"
    assert [c["email"] for c in updated.cc or []] == ["carol@example.test"]
    assert [t["email"] for t in updated.to or []] == ["bob@example.test"]  # not given: kept
    assert [a.filename for a in updated.attachments or []] == ["note.txt"]  # kept too
    ((flags, on_server),) = server_drafts(mail_user)  # replaced, not added
    assert on_server["Subject"] == "Better words"
    assert "\\Draft" in flags and "\\Flagged" in flags
    assert files_of(on_server) == {"note.txt": NOTE}

    sync(api.settings, grant_id)  # the sync finds the server's copy it did not store itself
    listed = client.drafts.list(grant_id).data
    assert [(d.id, d.subject) for d in listed] == [(draft.id, "Better words")]

    sent = client.drafts.send(grant_id, draft.id).data
    assert sent.id and sent.id != draft.id
    assert sent.subject == "Better words"
    assert sent.folders == [folders["Sent"]]
    mail_from, rcpt, raw = smtp.messages[-1]
    assert mail_from == mail_user.email
    assert sorted(rcpt) == ["bob@example.test", "carol@example.test", "hidden@example.test"]
    wire = email.message_from_bytes(raw, policy=email.policy.default)
    assert isinstance(wire, EmailMessage)
    assert wire["Subject"] == "Better words"
    assert "hidden@example.test" not in raw.decode("utf-8", "replace")
    assert files_of(wire) == {"note.txt": NOTE}
    assert server_drafts(mail_user) == []
    assert count_in(mail_user, "Sent") == 1
    assert client.drafts.list(grant_id).data == []
    with pytest.raises(NylasApiError) as gone:
        client.drafts.find(grant_id, draft.id)
    assert gone.value.status_code == 404
    sync(api.settings, grant_id)
    assert client.drafts.list(grant_id).data == []


def test_destroy_deletes_the_draft_from_the_server(
    api: ApiServer, mail_user: MailUser, smtp: SmtpServer
) -> None:
    create_folder(mail_user.server, mail_user.name, mail_user.password, "Trash")
    grant_id = connect(api, mail_user, smtp)
    client = api.nylas()
    draft = client.drafts.create(grant_id, {"subject": "never mind", "body": "x"}).data
    assert len(server_drafts(mail_user)) == 1
    client.drafts.destroy(grant_id, draft.id)
    assert server_drafts(mail_user) == []
    assert count_in(mail_user, "Trash") == 0  # a draft is deleted, not moved to Trash
    with pytest.raises(NylasApiError) as gone:
        client.drafts.find(grant_id, draft.id)
    assert gone.value.status_code == 404
    sync(api.settings, grant_id)
    assert client.drafts.list(grant_id).data == []


def test_a_draft_saved_by_another_client_is_listed_and_filtered(
    api: ApiServer, mail_user: MailUser, smtp: SmtpServer
) -> None:
    grant_id = connect(api, mail_user, smtp)
    client = api.nylas()
    append(
        mail_user.server,
        mail_user.name,
        mail_user.password,
        make_message("From Thunderbird", sender=mail_user.email, to="dave@example.test"),
        folder="Drafts",
        flags="\\Draft \\Seen",
    )
    append(
        mail_user.server,
        mail_user.name,
        mail_user.password,
        make_message("Inbox mail", to=mail_user.email),
    )
    sync(api.settings, grant_id)
    ours = client.drafts.create(
        grant_id, {"subject": "From the API", "to": [{"email": "erin@example.test"}]}
    ).data

    def subjects(**params: object) -> list[str]:
        return [d.subject or "" for d in client.drafts.list(grant_id, params).data]  # type: ignore[arg-type]

    assert sorted(subjects()) == ["From Thunderbird", "From the API"]
    assert subjects(subject="thunder") == ["From Thunderbird"]
    assert subjects(any_email=["dave@example.test"]) == ["From Thunderbird"]
    assert subjects(to=["erin@example.test"]) == ["From the API"]
    assert subjects(thread_id=ours.thread_id) == ["From the API"]
    assert subjects(starred=True) == []
    assert subjects(search_query_native='SUBJECT "thunderbird"') == ["From Thunderbird"]
    (only_ids,) = client.drafts.list(
        grant_id, {"select": "id,subject", "to": ["erin@example.test"]}
    ).data  # type: ignore[typeddict-unknown-key]
    assert (only_ids.id, only_ids.subject, only_ids.body) == (ours.id, "From the API", None)
    assert subjects(unread=False) != []
    first = client.drafts.list(grant_id, {"limit": 1})
    second = client.drafts.list(grant_id, {"limit": 1, "page_token": first.next_cursor})  # type: ignore[typeddict-item]
    assert len(first.data) == len(second.data) == 1
    assert {first.data[0].subject, second.data[0].subject} == {"From Thunderbird", "From the API"}
    assert second.next_cursor is None

    # the messages list leaves drafts out, unless `in` names the Drafts folder
    assert [m.subject for m in client.messages.list(grant_id).data] == ["Inbox mail"]
    folders = {f.name: f.id for f in client.folders.list(grant_id).data}
    in_drafts = client.messages.list(grant_id, {"in": [folders["Drafts"]]}).data
    assert sorted(m.subject or "" for m in in_drafts) == ["From Thunderbird", "From the API"]

    # another client's draft can be updated and destroyed like ours
    (theirs,) = [d for d in client.drafts.list(grant_id).data if d.subject == "From Thunderbird"]
    # the sync announces what it finds, a draft included; the API's own drafts are not announced
    notified = {subject for kind, subject in api.outbox() if kind == "message.created"}
    assert theirs.id in notified and ours.id not in notified
    assert client.drafts.update(grant_id, theirs.id, {"body": "edited"}).data.id == theirs.id
    assert sorted(on["Subject"] for _, on in server_drafts(mail_user)) == [
        "From Thunderbird",
        "From the API",
    ]
    client.drafts.destroy(grant_id, theirs.id)
    assert [on["Subject"] for _, on in server_drafts(mail_user)] == ["From the API"]


def test_a_reply_draft_joins_its_thread_and_sends_as_a_reply(
    api: ApiServer, mail_user: MailUser, smtp: SmtpServer
) -> None:
    grant_id = connect(api, mail_user, smtp)
    append(
        mail_user.server,
        mail_user.name,
        mail_user.password,
        # an hour old: the draft (dated now) is the thread's latest, never a same-second tie
        make_message(
            "Question",
            to=mail_user.email,
            message_id="<q1@example.test>",
            date=datetime.now(UTC) - timedelta(hours=1),
        ),
    )
    sync(api.settings, grant_id)
    client = api.nylas()
    (question,) = client.messages.list(grant_id).data
    draft = client.drafts.create(
        grant_id,
        {
            "to": [{"email": "alice@example.test"}],
            "subject": "Re: Question",
            "body": "an answer",
            "is_plaintext": True,
            "reply_to_message_id": question.id,
        },
    ).data
    assert draft.thread_id == question.thread_id
    thread = client.threads.find(grant_id, question.thread_id).data  # type: ignore[arg-type]
    assert thread.message_ids == [question.id]
    assert thread.draft_ids == [draft.id]
    assert thread.latest_draft_or_message.id == draft.id  # type: ignore[union-attr]
    # Nylas documents reply_to_message_id for IMAP as the RFC 822 Message-ID: taken too
    by_header = client.drafts.create(
        grant_id, {"subject": "Re: Question", "reply_to_message_id": "<q1@example.test>"}
    ).data
    assert by_header.thread_id == question.thread_id
    client.drafts.destroy(grant_id, by_header.id)

    sent = client.drafts.send(grant_id, draft.id).data
    _, _, raw = smtp.messages[-1]
    wire = email.message_from_bytes(raw, policy=email.policy.default)
    assert wire["In-Reply-To"] == "<q1@example.test>"
    assert wire.get_body(("plain",)).get_content().strip() == "an answer"  # type: ignore[union-attr]
    thread = client.threads.find(grant_id, question.thread_id).data  # type: ignore[arg-type]
    assert thread.message_ids == [question.id, sent.id]
    assert thread.draft_ids == []


def test_large_files_go_as_multipart(api: ApiServer, mail_user: MailUser, smtp: SmtpServer) -> None:
    """Over 3 MB the SDK sends multipart/form-data (the JSON in a ``message`` part). SDK 6.18's
    drafts.create/update then read the answer as a dict where it is a (dict, headers) tuple
    and raise TypeError after the server answered, so the request is the SDK's own encoder
    sent over its HTTP client."""
    grant_id = connect(api, mail_user, smtp)
    form = _build_form_request(
        {
            "subject": "big one",
            "to": [{"email": "bob@example.test"}],
            "attachments": [
                {
                    "filename": "blob.bin",
                    "content_type": "application/octet-stream",
                    "content": BIG,
                    "size": len(BIG),
                }
            ],
        }
    )
    with httpx.Client(base_url=api.url, timeout=60) as http:
        response = http.post(
            f"/v3/grants/{grant_id}/drafts",
            content=form.to_string(),
            headers={"Authorization": f"Bearer {API_KEY}", "Content-Type": form.content_type},
        )
    assert response.status_code == 200, response.text
    draft = response.json()["data"]
    assert [a["filename"] for a in draft["attachments"]] == ["blob.bin"]
    ((_, on_server),) = server_drafts(mail_user)
    assert files_of(on_server) == {"blob.bin": BIG}

    client = api.nylas()
    client.drafts.update(grant_id, draft["id"], {"subject": "big one, again"})
    ((_, on_server),) = server_drafts(mail_user)
    assert files_of(on_server) == {"blob.bin": BIG}  # kept through the update
    other = BIG[::-1]
    form = _build_form_request(
        {
            "attachments": [
                {
                    "filename": "other.bin",
                    "content_type": "application/octet-stream",
                    "content": other,
                    "size": len(other),
                }
            ]
        }
    )
    with httpx.Client(base_url=api.url, timeout=60) as http:
        response = http.put(
            f"/v3/grants/{grant_id}/drafts/{draft['id']}",
            content=form.to_string(),
            headers={"Authorization": f"Bearer {API_KEY}", "Content-Type": form.content_type},
        )
    assert response.status_code == 200, response.text
    assert response.json()["data"]["id"] == draft["id"]
    assert response.json()["data"]["subject"] == "big one, again"
    ((_, on_server),) = server_drafts(mail_user)
    assert files_of(on_server) == {"other.bin": other}  # files given: replaced
    client.drafts.send(grant_id, draft["id"])
    _, _, raw = smtp.messages[-1]
    wire = email.message_from_bytes(raw, policy=email.policy.default)
    assert isinstance(wire, EmailMessage)
    assert files_of(wire) == {"other.bin": other}


def test_an_account_without_a_drafts_folder_is_told_to_make_one(
    api: ApiServer, mail_user: MailUser
) -> None:
    grant_id = connect_and_sync(api, mail_user)  # INBOX only
    with pytest.raises(NylasApiError) as refused:
        api.nylas().drafts.create(grant_id, {"subject": "nowhere"})
    assert refused.value.status_code == 400
    assert "Drafts folder" in refused.value.args[0]
    assert api.nylas().drafts.list(grant_id).data == []


def test_draft_errors(api: ApiServer, mail_user: MailUser, smtp: SmtpServer) -> None:
    grant_id = connect(api, mail_user, smtp)
    client = api.nylas()

    def status(call: object) -> int:
        with pytest.raises(NylasApiError) as refused:
            call()  # type: ignore[operator]
        return refused.value.status_code

    assert status(lambda: client.drafts.find(grant_id, "not-a-draft")) == 404
    assert status(lambda: client.drafts.create(grant_id, {"send_at": 2_000_000_000})) == 400
    assert (
        status(lambda: client.drafts.create(grant_id, {"from": [{"email": "x@example.test"}]}))  # type: ignore[typeddict-unknown-key]
        == 400
    )
    bad_file = {"filename": "f", "content_type": "text/plain", "content": "%%%", "size": 3}
    assert status(lambda: client.drafts.create(grant_id, {"attachments": [bad_file]})) == 400  # type: ignore[list-item]
    assert server_drafts(mail_user) == []
    # a message is not a draft
    append(mail_user.server, mail_user.name, mail_user.password, make_message("plain mail"))
    sync(api.settings, grant_id)
    (message,) = client.messages.list(grant_id).data
    assert status(lambda: client.drafts.find(grant_id, message.id)) == 404
    assert status(lambda: client.drafts.send(grant_id, message.id)) == 404


def test_drafts_keep_metadata_and_filter_on_it(
    api: ApiServer, mail_user: MailUser, smtp: SmtpServer
) -> None:
    """reference/api/drafts: metadata on POST/PUT, ``metadata_pair`` on the list."""
    grant_id = connect(api, mail_user, smtp)
    client = api.nylas()
    tagged = client.drafts.create(
        grant_id, {"subject": "tagged", "metadata": {"key1": "campaign-7", "note": "x"}}
    ).data
    client.drafts.create(grant_id, {"subject": "plain"})
    assert tagged.metadata == {"key1": "campaign-7", "note": "x"}

    def listed(pair: str) -> list[str]:
        found = client.drafts.list(grant_id, {"metadata_pair": pair}).data
        return [d.subject or "" for d in found]

    assert listed("key1:campaign-7") == ["tagged"]
    kept = client.drafts.update(grant_id, tagged.id, {"subject": "tagged, edited"}).data
    assert kept.metadata == {"key1": "campaign-7", "note": "x"}  # not given: kept
    assert listed("key1:campaign-7") == ["tagged, edited"]
    replaced = client.drafts.update(grant_id, tagged.id, {"metadata": {"key2": "b"}}).data
    assert replaced.metadata == {"key2": "b"}
    assert listed("key1:campaign-7") == []
    with pytest.raises(NylasApiError) as nested:
        client.drafts.create(grant_id, {"metadata": {"key1": {"deep": "x"}}})  # type: ignore[dict-item]
    assert nested.value.status_code == 400
    assert sorted(d.subject or "" for d in client.drafts.list(grant_id).data) == [
        "plain",
        "tagged, edited",
    ]  # the refused create left nothing behind


def test_an_update_replaces_every_copy_of_the_draft(
    api: ApiServer, mail_user: MailUser, smtp: SmtpServer
) -> None:
    """A second identical copy in Drafts (a client's retried APPEND) is the same draft; an
    update leaves one copy on the server, not two."""
    grant_id = connect(api, mail_user, smtp)
    client = api.nylas()
    draft = client.drafts.create(grant_id, {"subject": "twice", "body": "x"}).data
    conn = imap_login(mail_user.server, mail_user.name, mail_user.password)
    try:
        conn.select('"Drafts"')
        typ, data = conn.uid("FETCH", "1:*", "(BODY.PEEK[])")
        assert typ == "OK", data
        raw = next(item[1] for item in data if isinstance(item, tuple))
        typ, data = conn.append('"Drafts"', "(\\Draft \\Seen)", None, raw)
        assert typ == "OK", data
    finally:
        conn.logout()
    sync(api.settings, grant_id)
    assert [d.id for d in client.drafts.list(grant_id).data] == [draft.id]
    assert len(server_drafts(mail_user)) == 2

    client.drafts.update(grant_id, draft.id, {"subject": "once"})
    assert [on["Subject"] for _, on in server_drafts(mail_user)] == ["once"]
    sync(api.settings, grant_id)
    assert [(d.id, d.subject) for d in client.drafts.list(grant_id).data] == [(draft.id, "once")]


def test_concurrent_updates_of_one_draft_are_applied_one_after_the_other(
    api: ApiServer, mail_user: MailUser, smtp: SmtpServer
) -> None:
    """Two PUTs of one draft at once (an editor's autosave racing the user's change): each is
    applied to what the other left, so the server ends with one copy carrying both changes
    (before: the second answered 404 or left two copies in Drafts, or one change was lost)."""
    import threading

    grant_id = connect(api, mail_user, smtp)
    client = api.nylas()

    def put(draft_id: str, body: dict[str, str], start: Any, answers: list[int]) -> None:
        with api.http() as http:
            start.wait(timeout=30)
            answers.append(
                http.put(f"/v3/grants/{grant_id}/drafts/{draft_id}", json=body).status_code
            )

    for n in range(3):
        draft = client.drafts.create(grant_id, {"subject": "start", "body": "start"}).data
        start, answers = threading.Barrier(2), []
        threads = [
            threading.Thread(target=put, args=(draft.id, change, start, answers))
            for change in ({"subject": f"subject {n}"}, {"body": f"body {n}"})
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
        assert answers == [200, 200]
        on_server = [m for _, m in server_drafts(mail_user)]
        assert len(on_server) == 1, [str(m["Subject"]) for m in on_server]
        (copy,) = on_server
        assert copy["Subject"] == f"subject {n}"
        assert f"body {n}" in copy.get_body(("html", "plain")).get_content()  # type: ignore[union-attr]
        found = client.drafts.find(grant_id, draft.id).data
        assert found.subject == f"subject {n}" and f"body {n}" in (found.body or "")
        client.drafts.destroy(grant_id, draft.id)


def test_a_draft_with_send_at_is_sent_as_it_stands_when_due(
    api: ApiServer, mail_user: MailUser, smtp: SmtpServer
) -> None:
    """``send_at`` on a draft (the SDK's CreateDraftRequest/UpdateDraftRequest) schedules its
    send, kept in Drafts meanwhile as Nylas keeps a ``use_draft`` scheduled message: the draft
    shows ``schedule_id``/``send_at``, ``/messages/schedules`` lists it, an update is what
    goes out, a deleted draft or one sent at once is not sent again later."""
    import time as clock

    grant_id = connect(api, mail_user, smtp)
    client = api.nylas()
    due = int(clock.time()) + 8
    later = int(clock.time()) + 3600
    to = [{"email": "bob@example.test"}]
    draft = client.drafts.create(
        grant_id, {"to": to, "subject": "Scheduled", "body": "first", "send_at": due}
    ).data
    assert draft.send_at == due and draft.schedule_id
    dropped = client.drafts.create(
        grant_id, {"to": to, "subject": "Dropped", "body": "x", "send_at": later}
    ).data
    hurried = client.drafts.create(
        grant_id, {"to": to, "subject": "Hurried", "body": "x", "send_at": later}
    ).data
    pending = {
        s.schedule_id: s.status.code for s in client.messages.list_scheduled_messages(grant_id).data
    }
    assert pending == {
        draft.schedule_id: "pending",
        dropped.schedule_id: "pending",
        hurried.schedule_id: "pending",
    }
    assert smtp.messages == []
    updated = client.drafts.update(grant_id, draft.id, {"body": "second"}).data
    assert updated.send_at == due and updated.schedule_id != draft.schedule_id
    assert client.drafts.find(grant_id, draft.id).data.schedule_id == updated.schedule_id
    client.drafts.destroy(grant_id, dropped.id)
    sent_now = client.drafts.send(grant_id, hurried.id).data
    assert sent_now.subject == "Hurried"

    deadline = clock.monotonic() + 60
    while clock.monotonic() < deadline and len(smtp.messages) < 2:
        clock.sleep(0.3)
    clock.sleep(1.0)  # nothing else follows
    subjects = sorted(str(parse(raw)["Subject"]) for _, _, raw in smtp.messages)
    assert subjects == ["Hurried", "Scheduled"]
    sent = next(parse(raw) for _, _, raw in smtp.messages if parse(raw)["Subject"] == "Scheduled")
    assert "second" in sent.get_body(("html", "plain")).get_content()  # type: ignore[union-attr]
    codes = {
        s.schedule_id: s.status.code for s in client.messages.list_scheduled_messages(grant_id).data
    }
    assert codes[updated.schedule_id] == "success"
    assert codes[draft.schedule_id] == codes[dropped.schedule_id] == "cancelled"
    assert codes[hurried.schedule_id] == "cancelled"
    while clock.monotonic() < deadline and server_drafts(mail_user):
        clock.sleep(0.3)
    assert server_drafts(mail_user) == []  # the sent draft left Drafts
    assert count_in(mail_user, "Sent") == 2
