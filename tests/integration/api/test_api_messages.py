"""Listing, paging, filtering and reading messages through the API."""

from __future__ import annotations

import base64
from datetime import timedelta
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid
from typing import Any

import httpx
import pytest
from api_support import ApiServer, append_many, connect_and_sync, now, sync
from nylas.models.errors import NylasApiError
from sqlalchemy import Engine, event, text

from pipeline.api import create_app
from pipeline.api.deps import read_connection
from pipeline.config import Settings
from tests.support.mail import create_folder, make_message
from tests.support.services import MailUser

pytestmark = pytest.mark.services

PDF_BYTES = b"%PDF-1.4\n" + bytes(range(256)) * 40 + b"\n%%EOF\n"
NOTES = "Notizen: Grüße, 100 % ☃\n" * 30


def rich_message(
    subject: str,
    *,
    sender: str,
    to: str,
    cc: str | None = None,
    message_id: str | None = None,
    in_reply_to: str | None = None,
    hours_ago: float = 0,
    attach: bool = False,
) -> bytes:
    msg = EmailMessage()
    msg["From"] = sender
    msg["To"] = to
    if cc:
        msg["Cc"] = cc
    msg["Subject"] = subject
    msg["Date"] = format_datetime(now() - timedelta(hours=hours_ago))
    msg["Message-ID"] = message_id or make_msgid(domain="example.test")
    msg["X-Custom"] = "custom-header-value"
    if in_reply_to:
        msg["In-Reply-To"] = in_reply_to
        msg["References"] = in_reply_to
    msg.set_content(f"Body of {subject}")
    if attach:
        msg.add_attachment(PDF_BYTES, maintype="application", subtype="pdf", filename="report.pdf")
        msg.add_attachment(NOTES, subtype="plain", filename="notizen.txt")
    return msg.as_bytes()


@pytest.fixture
def mailbox(api: ApiServer, mail_user: MailUser) -> dict[str, Any]:
    """Five messages in INBOX and Archive with different flags, people and attachments."""
    t = now()
    append_many(
        mail_user,
        [
            (
                rich_message(
                    "Quarterly report",
                    sender="Carol <carol@example.test>",
                    to="Bob <bob@example.test>",
                    message_id="<q1@example.test>",
                    hours_ago=1,
                    attach=True,
                ),
                "\\Seen",
                t - timedelta(hours=1),
            ),
            (
                rich_message(
                    "Lunch?",
                    sender="Dave <DAVE@Example.test>",
                    to="bob@example.test",
                    cc="Erin <erin@example.test>",
                    hours_ago=2,
                ),
                "\\Flagged",
                t - timedelta(hours=2),
            ),
            (
                rich_message(
                    "Re: Quarterly report",
                    sender="Bob <bob@example.test>",
                    to="Carol <carol@example.test>",
                    in_reply_to="<q1@example.test>",
                    hours_ago=0.5,
                ),
                "\\Seen",
                t - timedelta(minutes=30),
            ),
            (
                rich_message(
                    "100% off_sale", sender="spam@example.test", to="bob@example.test", hours_ago=72
                ),
                "",
                t - timedelta(hours=72),
            ),
        ],
    )
    create_folder(mail_user.server, mail_user.name, mail_user.password, "Archive")
    from tests.support.mail import append

    append(
        mail_user.server,
        mail_user.name,
        mail_user.password,
        rich_message("archived", sender="old@example.test", to="bob@example.test", hours_ago=5),
        folder="Archive",
        when=t - timedelta(hours=5),
    )
    grant_id = connect_and_sync(api, mail_user)
    client = api.nylas()
    everything = client.messages.list(grant_id).data
    return {"grant_id": grant_id, "by_subject": {m.subject: m for m in everything}}


def subjects_for(api: ApiServer, grant_id: str, **params: Any) -> set[str]:
    """Subjects of the messages a filter returns (plain HTTP, parameters as given)."""
    with api.http() as http:
        response = http.get(f"/v3/grants/{grant_id}/messages", params=params)
    assert response.status_code == 200, response.text
    return {m["subject"] for m in response.json()["data"]}


def test_filters(api: ApiServer, mailbox: dict[str, Any]) -> None:
    grant_id = mailbox["grant_id"]
    by_subject = mailbox["by_subject"]
    assert set(by_subject) == {
        "Quarterly report",
        "Lunch?",
        "Re: Quarterly report",
        "100% off_sale",
        "archived",
    }
    client = api.nylas()

    def sdk(**params: Any) -> set[str]:
        return {m.subject for m in client.messages.list(grant_id, query_params=params).data}  # type: ignore[arg-type]

    assert sdk(unread=True) == {"Lunch?", "100% off_sale", "archived"}
    assert sdk(unread=False) == {"Quarterly report", "Re: Quarterly report"}
    assert sdk(starred=True) == {"Lunch?"}
    assert sdk(subject="QUARTERLY") == {"Quarterly report", "Re: Quarterly report"}
    assert sdk(subject="100%") == {"100% off_sale"}
    assert sdk(subject="_") == {"100% off_sale"}
    assert sdk(**{"from": ["dave@example.test"]}) == {"Lunch?"}
    assert sdk(to=["carol@example.test"]) == {"Re: Quarterly report"}
    assert sdk(cc=["ERIN@example.test"]) == {"Lunch?"}
    assert sdk(any_email=["carol@example.test"]) == {"Quarterly report", "Re: Quarterly report"}
    assert subjects_for(api, grant_id, any_email="erin@example.test,spam@example.test") == {
        "Lunch?",
        "100% off_sale",
    }
    assert sdk(has_attachment=True) == {"Quarterly report"}
    assert sdk(thread_id=by_subject["Quarterly report"].thread_id) == {
        "Quarterly report",
        "Re: Quarterly report",
    }
    after = int((now() - timedelta(hours=4)).timestamp())
    assert sdk(received_after=after) == {"Quarterly report", "Lunch?", "Re: Quarterly report"}
    before = int((now() - timedelta(days=1)).timestamp())
    assert sdk(received_before=before) == {"100% off_sale"}
    assert sdk(unread=True, received_after=after) == {"Lunch?"}

    folders = {f.name: f for f in client.folders.list(grant_id).data}
    archive_id = folders["Archive"].id
    assert sdk(**{"in": archive_id}) == {"archived"}
    assert subjects_for(api, grant_id, **{"in": "Archive"}) == {"archived"}
    assert sdk(**{"in": folders["INBOX"].id, "unread": True}) == {"Lunch?", "100% off_sale"}
    assert sdk(thread_id="00000000-0000-4000-8000-000000000000") == set()
    assert sdk(thread_id="not-a-uuid") == set()


def test_message_objects_headers_and_select(api: ApiServer, mailbox: dict[str, Any]) -> None:
    grant_id = mailbox["grant_id"]
    report = mailbox["by_subject"]["Quarterly report"]
    client = api.nylas()
    found = client.messages.find(grant_id, report.id).data
    assert found.id == report.id
    assert found.grant_id == grant_id
    assert found.object == "message"
    assert found.from_ is not None
    assert found.from_[0]["email"] == "carol@example.test"
    assert found.to is not None
    assert found.to[0] == {"name": "Bob", "email": "bob@example.test"}
    assert found.unread is False
    assert found.starred is False
    assert found.body is not None
    assert "Body of Quarterly report" in found.body
    assert found.snippet
    assert isinstance(found.date, int)
    assert abs(found.date - int((now() - timedelta(hours=1)).timestamp())) < 120
    assert found.folders and len(found.folders) == 1
    assert found.headers is None
    assert found.attachments is not None
    names = {a.filename: a for a in found.attachments}
    assert set(names) == {"report.pdf", "notizen.txt"}
    assert names["report.pdf"].content_type == "application/pdf"
    assert names["report.pdf"].size == len(PDF_BYTES)
    assert names["report.pdf"].is_inline is False

    with_headers = client.messages.find(
        grant_id, report.id, query_params={"fields": "include_headers"}
    ).data
    assert with_headers.headers is not None
    assert {"name": "X-Custom", "value": "custom-header-value"} in [
        {"name": h.name, "value": h.value} for h in with_headers.headers
    ]
    with api.http() as http:
        listed = http.get(
            f"/v3/grants/{grant_id}/messages", params={"fields": "include_headers", "limit": 1}
        ).json()["data"][0]
        selected = http.get(
            f"/v3/grants/{grant_id}/messages", params={"select": "subject,unread"}
        ).json()["data"]
        plain = http.get(f"/v3/grants/{grant_id}/messages/{report.id}").json()["data"]
        in_list = next(
            m
            for m in http.get(
                f"/v3/grants/{grant_id}/messages", params={"has_attachment": "true"}
            ).json()["data"]
            if m["id"] == report.id
        )
    # the list builds folders and attachments in SQL, the single get in Python: same output
    assert in_list == plain
    assert "headers" in listed
    assert "headers" not in plain
    assert all(set(m) == {"id", "grant_id", "object", "subject", "unread"} for m in selected)


def test_attachment_metadata_and_download(api: ApiServer, mailbox: dict[str, Any]) -> None:
    grant_id = mailbox["grant_id"]
    report = mailbox["by_subject"]["Quarterly report"]
    client = api.nylas()
    attachments = {a.filename: a for a in report.attachments}
    pdf = attachments["report.pdf"]
    meta = client.attachments.find(grant_id, pdf.id, {"message_id": report.id}).data
    assert meta.filename == "report.pdf"
    assert meta.size == len(PDF_BYTES)
    data = client.attachments.download_bytes(grant_id, pdf.id, {"message_id": report.id})
    assert data == PDF_BYTES
    with api.http() as http:
        notes = http.get(
            f"/v3/grants/{grant_id}/attachments/{attachments['notizen.txt'].id}/download"
        )
        wrong_message = http.get(
            f"/v3/grants/{grant_id}/attachments/{pdf.id}",
            params={"message_id": mailbox["by_subject"]["Lunch?"].id},
        )
        missing = http.get(
            f"/v3/grants/{grant_id}/attachments/00000000-0000-4000-8000-000000000000/download"
        )
    assert notes.status_code == 200
    assert notes.headers["content-type"].startswith("text/plain")
    assert "notizen.txt" in notes.headers["content-disposition"]
    # text travels in MIME canonical form: CRLF line ends, as the server stores them
    assert notes.content.decode("utf-8") == NOTES.replace("\n", "\r\n")
    assert wrong_message.status_code == 404
    assert missing.status_code == 404
    assert missing.json()["error"]["type"] == "not_found_error"
    # downloading never marks the message read
    assert client.messages.find(grant_id, report.id).data.unread is False
    lunch = mailbox["by_subject"]["Lunch?"]
    assert client.messages.find(grant_id, lunch.id).data.unread is True


def test_bad_list_parameters_are_400(api: ApiServer, mailbox: dict[str, Any]) -> None:
    grant_id = mailbox["grant_id"]
    client = api.nylas()
    with pytest.raises(NylasApiError) as caught:
        client.messages.list(grant_id, query_params={"page_token": "garbage!"})
    assert caught.value.status_code == 400
    assert "page_token" in caught.value.args[0]
    with api.http() as http:
        for params in (
            {"limit": 0},
            {"limit": 201},
            {"limit": "ten"},
            {"unread": "perhaps"},
            {"received_before": -1},
            {"received_after": 10**13},
            {"fields": "everything"},
            {"page_token": base64.urlsafe_b64encode(b'{"v":1}').decode()},
        ):
            r = http.get(f"/v3/grants/{grant_id}/messages", params=params)
            assert r.status_code == 400, (params, r.text)
            assert r.json()["error"]["type"] == "invalid_request_error"
        unknown_folder = http.get(f"/v3/grants/{grant_id}/messages", params={"in": "Nope"})
        # an unknown grant is a 404 whatever else is wrong with the request
        nobody = "00000000-0000-4000-8000-000000000000"
        for params in ({}, {"page_token": "zzz"}, {"in": "Nope"}, {"limit": 0}):
            r = http.get(f"/v3/grants/{nobody}/messages", params=params)
            assert r.status_code == 404, (params, r.text)
            assert r.json()["error"]["type"] == "not_found_error"
        unknown_message = http.get(f"/v3/grants/{grant_id}/messages/not-a-message")
    assert unknown_folder.status_code == 404
    assert unknown_message.status_code == 404
    with pytest.raises(NylasApiError) as gone:
        client.messages.find(grant_id, "00000000-0000-4000-8000-000000000000")
    assert gone.value.status_code == 404


def test_paging_through_120_messages_is_stable_under_inserts(
    api: ApiServer, mail_user: MailUser
) -> None:
    t = now()
    # 120 messages a minute apart, ten of them sharing one Date right at the page boundary
    messages = []
    for i in range(120):
        when = t - timedelta(minutes=45 if 45 <= i < 55 else i)
        messages.append((make_message(f"bulk {i:03d}", date=when), "", when))
    append_many(mail_user, messages)
    grant_id = connect_and_sync(api, mail_user)
    client = api.nylas()

    first = client.messages.list(grant_id, query_params={"limit": 50})
    assert len(first.data) == 50
    assert first.next_cursor
    # mail arrives between pages: one newer than everything, one older than everything
    append_many(
        mail_user,
        [
            (make_message("newest", date=t + timedelta(minutes=1)), "", t),
            (
                make_message("oldest", date=t - timedelta(days=2)),
                "",
                t - timedelta(days=2),
            ),
        ],
    )
    sync(api.settings, grant_id)
    seen = list(first.data)
    cursor = first.next_cursor
    pages = 1
    while cursor:
        page = client.messages.list(grant_id, query_params={"limit": 50, "page_token": cursor})
        seen.extend(page.data)
        cursor = page.next_cursor
        pages += 1
    subjects = [m.subject for m in seen]
    assert len(subjects) == len(set(subjects)), "a message appeared on two pages"
    assert {f"bulk {i:03d}" for i in range(120)} <= set(subjects)
    assert "newest" not in subjects  # newer than the first page: not in later pages
    assert subjects[-1] == "oldest"
    assert pages == 3
    dates = [(m.date, m.id) for m in seen]
    assert dates == sorted(dates, reverse=True)
    # the default page is 50, and the last page has no cursor
    assert len(client.messages.list(grant_id).data) == 50


def test_listed_messages_and_threads_are_the_objects_fetched_alone(
    api: ApiServer, mailbox: dict[str, Any]
) -> None:
    # a standard list page is rendered as JSON by Postgres (message_queries.message_json), the other
    # pages from plain rows serialized by orjson, a single message from its ORM object through
    # FastAPI's encoder: every field must agree, in every `fields` variant and with `select`
    grant_id = mailbox["grant_id"]
    base = f"/v3/grants/{grant_id}"
    with api.http() as http:
        report = mailbox["by_subject"]["Quarterly report"]
        put = http.put(
            f"{base}/messages/{report.id}", json={"metadata": {"k1": 'ünï "q"', "k2": "2"}}
        )
        assert put.status_code == 200, put.text
        for fields in ("standard", "include_headers", "include_basic_headers"):
            listed = http.get(f"{base}/messages", params={"fields": fields})
            assert listed.headers["content-type"] == "application/json"
            data = listed.json()["data"]
            assert len(data) == 5
            for message in data:
                alone = http.get(f"{base}/messages/{message['id']}", params={"fields": fields})
                assert message == alone.json()["data"]
            if fields == "standard":
                every = ",".join(data[0])  # the same page through the Python views
                selected = http.get(f"{base}/messages", params={"select": every}).json()
                assert selected["data"] == data
                assert any(m["metadata"] == {"k1": 'ünï "q"', "k2": "2"} for m in data)
                assert any(len(m["attachments"]) == 2 for m in data)
        threads = http.get(f"{base}/threads").json()["data"]
        assert sorted(len(t["message_ids"]) for t in threads) == [1, 1, 1, 2]
        for thread in threads:
            assert thread == http.get(f"{base}/threads/{thread['id']}").json()["data"]
            latest = thread["latest_draft_or_message"]
            assert latest["id"] == thread["message_ids"][-1]
            assert latest == http.get(f"{base}/messages/{latest['id']}").json()["data"]


def _statements_of(http: httpx.Client, path: str, params: dict[str, Any]) -> list[str]:
    """The SQL statements the API ran to answer one request."""
    seen: list[str] = []

    def record(*args: Any) -> None:
        seen.append(args[2])

    event.listen(Engine, "before_cursor_execute", record)
    try:
        assert http.get(path, params=params).status_code == 200
    finally:
        event.remove(Engine, "before_cursor_execute", record)
    return seen


def test_a_list_page_costs_the_same_queries_whatever_its_size(
    api: ApiServer, mailbox: dict[str, Any]
) -> None:
    # no query per listed object (a thread's latest message used to load its body alone)
    base = f"/v3/grants/{mailbox['grant_id']}"
    with api.http() as http:
        for path in ("/messages", "/threads"):
            one = _statements_of(http, base + path, {"limit": 1})
            four = _statements_of(http, base + path, {"limit": 4})
            assert len(four) == len(one), (path, four)


def test_folders_named_by_id_are_checked_by_the_page_query(
    api: ApiServer, mailbox: dict[str, Any]
) -> None:
    # `in` with folder ids (as the SDK sends them) costs no lookup before the page: the page
    # query checks the ids are the grant's, and only when they are not (or the page is empty)
    # are they looked up, for the 404 an unknown folder gets
    grant_id = mailbox["grant_id"]
    base = f"/v3/grants/{grant_id}"
    folders = {f.name: f.id for f in api.nylas().folders.list(grant_id).data}
    archive, inbox = folders["Archive"], folders["INBOX"]
    unknown = "00000000-0000-4000-8000-000000000001"
    with api.http() as http:
        assert len(_statements_of(http, base + "/messages", {"in": archive})) == 1
        assert len(_statements_of(http, base + "/messages", {"in": "Archive"})) == 2
        # the threads' page: the grant's check and the folders' in the page statement too
        assert len(_statements_of(http, base + "/threads", {"in": archive})) == 1
        assert len(_statements_of(http, base + "/threads", {"in": "Archive"})) == 2
        for path in ("/messages", "/threads"):
            for params in (
                {"in": unknown},
                {"in": f"{archive},{unknown}"},  # a page of Archive's messages, and one unknown
                {"in": [inbox, unknown]},
                {"in": unknown, "unread": "true"},
            ):
                r = http.get(base + path, params=params)
                assert r.status_code == 404, (path, params, r.text)
                assert r.json()["error"]["type"] == "not_found_error"
        for params in ({"in": archive}, {"in": [archive, inbox]}, {"in": "Archive"}):
            by_id = http.get(base + "/threads", params=params).json()["data"]
            every = ",".join(by_id[0])  # the same threads made in Python
            selected = http.get(base + "/threads", params={**params, "select": every})
            assert selected.json()["data"] == by_id
            assert by_id == [http.get(f"{base}/threads/{t['id']}").json()["data"] for t in by_id], (
                params
            )
    assert subjects_for(api, grant_id, **{"in": archive.upper()}) == {"archived"}
    assert subjects_for(api, grant_id, **{"in": f"{archive},{archive}"}) == {"archived"}
    assert subjects_for(api, grant_id, **{"in": [archive, "INBOX"], "starred": "true"}) == {
        "Lunch?"
    }
    assert subjects_for(api, grant_id, **{"in": archive, "unread": "false"}) == set()
    assert subjects_for(api, grant_id, **{"in": archive, "subject": "nothing"}) == set()


def test_api_sessions_plan_pages_with_the_requests_values(api_settings: Settings) -> None:
    # with Postgres' defaults an address filter's page went from milliseconds to seconds at a
    # million messages: a grant-wide bitmap ANDed in, parallel workers, a generic plan once
    # psycopg had prepared the statement (README, "A list page is one query")
    app = create_app(api_settings, enqueue_sync=lambda *_: None, kick_webhooks=lambda: None)
    with app.state.api.sessions() as session, read_connection(app.state.api) as reads:
        for db in (session, reads):
            assert db.execute(text("SHOW plan_cache_mode")).scalar() == "force_custom_plan"
            assert float(db.execute(text("SHOW random_page_cost")).scalar()) == 1.1
            assert db.execute(text("SHOW max_parallel_workers_per_gather")).scalar() == "0"
