"""Folders and threads through the API."""

from __future__ import annotations

import email
import email.policy
from collections.abc import Sequence
from datetime import timedelta
from email.message import EmailMessage
from email.utils import format_datetime

import pytest
from api_support import ApiServer, append_many, connect_and_sync, now
from nylas.models.errors import NylasApiError

from pipeline.imap import FetchedMessage
from tests.support.mail import append, create_folder, make_message
from tests.support.services import MailUser
from tests.support.store import offline_grant, write_fetched

pytestmark = pytest.mark.services


def test_folders_list_and_get(api: ApiServer, mail_user: MailUser) -> None:
    server = mail_user.server
    create_folder(server, mail_user.name, mail_user.password, "Projects")
    create_folder(server, mail_user.name, mail_user.password, "Projects/2026")
    t = now()
    append_many(
        mail_user,
        [
            (make_message("one", date=t), "", t),
            (make_message("two", date=t), "\\Seen", t),
            (make_message("three", date=t), "", t),
        ],
    )
    grant_id = connect_and_sync(api, mail_user)
    client = api.nylas()
    folders = {f.name: f for f in client.folders.list(grant_id).data}
    assert {"INBOX", "Projects", "Projects/2026"} <= set(folders)
    inbox = folders["INBOX"]
    assert inbox.grant_id == grant_id
    assert inbox.object == "folder"
    assert inbox.total_count == 3
    assert inbox.unread_count == 2
    assert inbox.system_folder is True
    assert folders["Projects/2026"].parent_id == folders["Projects"].id
    assert folders["Projects"].child_count == 1
    assert folders["Projects"].total_count == 0
    assert client.folders.find(grant_id, inbox.id).data.name == "INBOX"
    with api.http() as http:
        by_name = http.get(f"/v3/grants/{grant_id}/folders/INBOX")
        missing = http.get(f"/v3/grants/{grant_id}/folders/Nope")
    assert by_name.json()["data"]["id"] == inbox.id
    assert missing.status_code == 404
    assert missing.json()["error"]["type"] == "not_found_error"


def test_threads_list_get_and_page(api: ApiServer, mail_user: MailUser) -> None:
    t = now()
    root = make_message(
        "Plans",
        sender="Carol <carol@example.test>",
        to="Bob <bob@example.test>",
        message_id="<root@example.test>",
        date=t - timedelta(hours=3),
    )
    reply = make_message(
        "Re: Plans",
        sender="Bob <bob@example.test>",
        to="Carol <carol@example.test>",
        message_id="<reply@example.test>",
        in_reply_to="<root@example.test>",
        date=t - timedelta(hours=1),
    )
    alone = [
        (
            make_message(f"alone {i}", sender="dan@example.test", date=t - timedelta(hours=10 + i)),
            "\\Seen",
            t - timedelta(hours=10 + i),
        )
        for i in range(5)
    ]
    append_many(
        mail_user,
        [(root, "\\Seen", t - timedelta(hours=3)), (reply, "", t - timedelta(hours=1)), *alone],
    )
    grant_id = connect_and_sync(api, mail_user)
    client = api.nylas()

    threads = client.threads.list(grant_id).data
    assert len(threads) == 6
    first = threads[0]  # the conversation has the most recent message
    assert first.subject == "Re: Plans"
    assert len(first.message_ids) == 2
    assert first.unread is True
    assert first.starred is False
    assert first.object == "thread"
    assert {p["email"] for p in first.participants or []} == {
        "carol@example.test",
        "bob@example.test",
    }
    assert first.earliest_message_date is not None
    assert first.latest_message_received_date is not None
    assert first.earliest_message_date < first.latest_message_received_date
    assert first.latest_draft_or_message.id == first.message_ids[-1]
    assert first.latest_draft_or_message.subject == "Re: Plans"
    assert len(first.folders) == 1

    found = client.threads.find(grant_id, first.id).data
    assert found.message_ids == first.message_ids
    messages = {m.id: m for m in client.messages.list(grant_id).data}
    assert {messages[mid].thread_id for mid in found.message_ids} == {first.id}

    assert [x.id for x in client.threads.list(grant_id, query_params={"unread": True}).data] == [
        first.id
    ]
    dan = client.threads.list(grant_id, query_params={"any_email": ["dan@example.test"]}).data
    assert len(dan) == 5
    # the window applies to a thread's latest message: the conversation's root is 3 h old,
    # its reply 1 h, so it is not "latest before 2 h ago"
    two_hours_ago = int((t - timedelta(hours=2)).timestamp())
    older = client.threads.list(
        grant_id, query_params={"latest_message_before": two_hours_ago}
    ).data
    assert first.id not in [x.id for x in older]
    assert len(older) == 5
    newer = client.threads.list(grant_id, query_params={"latest_message_after": two_hours_ago})
    assert [x.id for x in newer.data] == [first.id]

    # pages of two, no repeats, same order as one page
    seen: list[str] = []
    cursor: str | None = None
    while True:
        params: dict[str, object] = {"limit": 2}
        if cursor:
            params["page_token"] = cursor
        page = client.threads.list(grant_id, query_params=params)  # type: ignore[arg-type]
        seen.extend(x.id for x in page.data)
        cursor = page.next_cursor
        if not cursor:
            break
    assert seen == [x.id for x in threads]

    with pytest.raises(NylasApiError) as caught:
        client.threads.find(grant_id, "00000000-0000-4000-8000-000000000000")
    assert caught.value.status_code == 404
    with api.http() as http:
        bad = http.get(f"/v3/grants/{grant_id}/threads", params={"page_token": "zzz"})
    assert bad.status_code == 400


def _with_attachment(raw: bytes, name: str) -> bytes:
    message = email.message_from_bytes(raw, policy=email.policy.default)
    assert isinstance(message, EmailMessage)
    message.add_attachment(b"%PDF-1.4 a page\n" * 8, "application", "pdf", filename=name)
    return message.as_bytes()


def test_listed_threads_are_rendered_as_thread_view_renders_them(
    api: ApiServer, mail_user: MailUser
) -> None:
    # a page of threads with every field is rendered by Postgres
    # (pipeline.threads.rendered.thread_json_select), a page with `select` and a single thread by
    # threads.thread_view in Python: every field of every thread must agree, on threads with
    # drafts, attachments, several folders, participants spelled twice, unread/starred mixes
    server, user, password = mail_user.server, mail_user.name, mail_user.password
    for folder in ("Drafts", "Projects"):
        create_folder(server, user, password, folder)
    t = now()
    root = make_message(
        "Budget",
        sender="Carol <carol@example.test>",
        to="Bob <bob@example.test>, Dan <DAN@example.test>",
        message_id="<budget@example.test>",
        date=t - timedelta(hours=5),
    )
    reply = make_message(
        "Re: Budget",
        sender="BOB <Bob@Example.test>",
        to="carol@example.test, Erin <erin@example.test>",
        message_id="<budget-2@example.test>",
        in_reply_to="<budget@example.test>",
        date=t - timedelta(hours=4),
    )
    draft = make_message(
        "Re: Budget",
        sender="dan@example.test",
        to="Carol <carol@example.test>",
        message_id="<budget-draft@example.test>",
        in_reply_to="<budget-2@example.test>",
        date=t - timedelta(hours=1),
    )
    mail = [
        ("INBOX", root, "\\Seen", t - timedelta(hours=5)),
        ("Projects", _with_attachment(reply, "plan.pdf"), "\\Flagged", t - timedelta(hours=4)),
        ("Drafts", _with_attachment(draft, "draft.pdf"), "\\Seen \\Draft", t - timedelta(hours=1)),
        ("INBOX", make_message("Lone", sender="frank@example.test", date=t), "", t),
        (
            "Projects",
            _with_attachment(
                make_message("Seen and starred", date=t - timedelta(hours=2)), "a.pdf"
            ),
            "\\Seen \\Flagged",
            t - timedelta(hours=2),
        ),
        (
            "INBOX",
            make_message("Read", date=t - timedelta(hours=3)),
            "\\Seen",
            t - timedelta(hours=3),
        ),
    ]
    for folder, raw, flags, when in mail:
        append(server, user, password, raw, folder=folder, when=when, flags=flags)
    grant_id = connect_and_sync(api, mail_user)
    base = f"/v3/grants/{grant_id}/threads"
    with api.http() as http:
        rendered = http.get(base).json()["data"]
        every = ",".join({key for thread in rendered for key in thread})  # some have not all
        in_python = http.get(base, params={"select": every}).json()["data"]
        assert rendered == in_python
        for thread in rendered:
            assert thread == http.get(f"{base}/{thread['id']}").json()["data"]
        # pages of two: the same threads, rendered the same
        paged: list[dict[str, object]] = []
        cursor = None
        for _ in range(10):
            params = {"limit": 2, **({"page_token": cursor} if cursor else {})}
            page = http.get(base, params=params).json()
            paged.extend(page["data"])
            cursor = page["next_cursor"]
            if not cursor:
                break
        assert paged == rendered
    by_subject = {t["subject"]: t for t in rendered}
    assert len(rendered) == 4
    budget = by_subject["Re: Budget"]
    assert (len(budget["message_ids"]), len(budget["draft_ids"]), budget["has_drafts"]) == (
        2,
        1,
        True,
    )
    assert budget["latest_draft_or_message"]["object"] == "draft"
    assert len(budget["latest_draft_or_message"]["attachments"]) == 1
    assert len(budget["folders"]) == 3
    assert (budget["unread"], budget["starred"], budget["has_attachments"]) == (True, True, True)
    # each address once, as first spelled, in the order the messages name them
    assert budget["participants"] == [
        {"name": "Carol", "email": "carol@example.test"},
        {"name": "Bob", "email": "bob@example.test"},
        {"name": "Dan", "email": "DAN@example.test"},
        {"name": "Erin", "email": "erin@example.test"},
    ]
    starred = by_subject["Seen and starred"]
    assert (starred["unread"], starred["starred"], starred["has_attachments"]) == (
        False,
        True,
        True,
    )
    lone = by_subject["Lone"]
    assert (lone["unread"], lone["starred"], lone["has_drafts"]) == (True, False, False)
    assert lone["latest_draft_or_message"]["object"] == "message"


def _stored_raw(
    api: ApiServer, user: str, letters: Sequence[tuple[str, str, str]], *, threaded: bool = False
) -> str:
    """A grant of ``user`` on a server never reached, with a message per ``(From, To,
    Subject)`` in its Inbox, a minute apart, oldest first, headers in raw UTF-8 as a server may
    send them; ``threaded``: each answers the one before. Returns the grant's id."""
    database_url = api.settings.require_database_url()
    grant_id, (inbox,) = offline_grant(database_url, user)
    sent = now() - timedelta(hours=1)

    def raw(uid: int, sender: str, to: str, subject: str) -> bytes:
        answers = f"In-Reply-To: <{user}-{uid - 1}@example.org>\r\n" if threaded else ""
        return (
            f"From: {sender}\r\nTo: {to}\r\nSubject: {subject}\r\n"
            f"Date: {format_datetime(sent + timedelta(minutes=uid))}\r\n"
            f"Message-ID: <{user}-{uid}@example.org>\r\n{answers if uid > 1 else ''}"
            "Content-Type: text/plain; charset=utf-8\r\n\r\nbody\r\n"
        ).encode()

    fetched = [
        FetchedMessage(
            uid=uid,
            flags=(),
            internaldate=sent + timedelta(minutes=uid),
            size=100,
            modseq=None,
            raw=raw(uid, *letter),
        )
        for uid, letter in enumerate(letters, start=1)
    ]
    write_fetched(database_url, grant_id, inbox, fetched)
    return grant_id


def test_participants_with_non_ascii_addresses_are_the_same_listed_and_alone(
    api: ApiServer,
) -> None:
    # a thread's participants are its addresses each once, compared with ASCII letters folded
    # (the one rule of the page Postgres renders and of the view Python makes): Postgres'
    # lower() and Python's str.lower() disagree past ASCII ('İ' is 'i' to one and 'i̇' to the
    # other), and a page listed the same thread with other participants than the thread alone
    grant_id = _stored_raw(
        api,
        "unicode-participants",
        [
            ("Ärger <ÄRGER@example.org>", "İlker <İLKER@example.org>, ilker@example.org", "Grüße"),
            ("ärger@example.org", "STRASSE@example.org, Straße <straße@example.org>", "Grüße"),
            ("Ilker <ILKER@EXAMPLE.ORG>", "i̇lker@example.org, ÄRGER@Example.org", "Grüße"),
        ],
        threaded=True,
    )
    base = f"/v3/grants/{grant_id}/threads"
    with api.http() as http:
        (listed,) = http.get(base).json()["data"]
        alone = http.get(f"{base}/{listed['id']}").json()["data"]
    assert listed["participants"] == alone["participants"]
    assert [p["email"] for p in listed["participants"]] == [
        "ÄRGER@example.org",
        "İLKER@example.org",
        "ilker@example.org",
        "ärger@example.org",
        "STRASSE@example.org",
        "straße@example.org",
        "i̇lker@example.org",
    ]


def test_a_message_is_found_by_each_address_it_carries_past_ascii(api: ApiServer) -> None:
    # Address filters compare lowercased addresses: Postgres lowers the stored ones (the GIN
    # index of api_participant_keys and the JSONB filters), the API lowered the asked-for ones
    # in Python, and the two disagree on 'İ' (Postgres: 'i', Python: 'i̇') and on a final 'Σ'
    # (Postgres: U+03C3, Python: U+03C2): a message was not found by its own address.
    grant_id = _stored_raw(
        api,
        "unicode-filters",
        [
            ("İLKER@example.org", "ΟΔΥΣΣΕΥΣ@example.org", "m1"),
            ("ΟΔΥΣΣΕΥΣ@example.org", "Ärger <ÄRGER@example.org>", "m2"),
        ],
    )
    base = f"/v3/grants/{grant_id}/messages"

    def subjects(**query: str) -> set[str]:
        with api.http() as http:
            answer = http.get(base, params=query)
        assert answer.status_code == 200, answer.text
        return {m["subject"] for m in answer.json()["data"]}

    assert subjects(**{"from": "İLKER@example.org"}) == {"m1"}
    assert subjects(to="ΟΔΥΣΣΕΥΣ@example.org") == {"m1"}
    assert subjects(**{"from": "ΟΔΥΣΣΕΥΣ@example.org"}) == {"m2"}
    assert subjects(to="ärger@example.org") == {"m2"}
    assert subjects(any_email="İLKER@example.org") == {"m1"}
    assert subjects(any_email="ΟΔΥΣΣΕΥΣ@example.org") == {"m1", "m2"}
