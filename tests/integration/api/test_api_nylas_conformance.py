"""Differences from Nylas v3 that a client written for Nylas trips over, driven by the nylas SDK.

Each test names the Nylas reference it checks against (developer.nylas.com, ``/docs/reference``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import timedelta

import pytest
from api_support import (
    ApiServer,
    Receiver,
    append_many,
    connect_and_sync,
    connect_body,
    count_in,
    now,
    sync,
)
from nylas.models.errors import NylasApiError

from pipeline.db import session_scope
from pipeline.grants.service import expire_grant
from pipeline.webhooks import payloads
from tests.support.mail import append, create_folder, imap_login, make_message
from tests.support.services import MailUser

pytestmark = pytest.mark.services


def test_grant_notifications_have_the_nylas_object(api: ApiServer, mail_user: MailUser) -> None:
    """notifications/grants/grant-created, -updated, -deleted: ``grant_id``, ``code``,
    ``integration_id``, ``provider``; source ``/nylas/system``."""
    client = api.nylas()
    grant = client.auth.custom_authentication(connect_body(mail_user)).data  # type: ignore[arg-type]
    client.auth.custom_authentication(connect_body(mail_user))  # type: ignore[arg-type]
    client.grants.update(grant.id, {"settings": {"smtp_host": "smtp.example.test"}})
    client.grants.destroy(grant.id)

    objects = api.outbox_objects()
    assert [t for t, _ in objects] == [
        "grant.created",
        "grant.updated",
        "grant.updated",
        "grant.deleted",
    ]
    created, reauthenticated, updated, deleted = (o for _, o in objects)
    common = {"grant_id": grant.id, "integration_id": "imap", "provider": "imap"}
    assert created == {**common, "code": 25012, "email": mail_user.email, "scope": []}
    assert reauthenticated == {
        **common,
        "code": 25027,
        "email": mail_user.email,
        "reauthentication_flag": True,
    }
    assert updated == {
        **common,
        "code": 25014,
        "email": mail_user.email,
        "reauthentication_flag": False,
    }
    assert deleted == {**common, "code": 25013, "email": mail_user.email}
    assert {payloads.source_for(t, grant.id) for t, _ in objects} == {"/nylas/system"}


def test_sync_completed_has_the_nylas_object(api: ApiServer, mail_user: MailUser) -> None:
    """notifications/grants/grant-imap_sync_completed: source ``/imap/emails/historic``."""
    grant_id = connect_and_sync(api, mail_user)
    (completed,) = [o for t, o in api.outbox_objects() if t == "grant.imap_sync_completed"]
    assert completed == {
        "code": 25012,
        "grant_id": grant_id,
        "integration_id": "imap",
        "provider": "imap",
        "type": "grant.imap_sync_completed",
    }
    assert payloads.source_for("grant.imap_sync_completed", grant_id) == "/imap/emails/historic"


def test_webhook_destinations_as_nylas_shows_them(api: ApiServer, receiver: Receiver) -> None:
    """api/webhook-notifications: status ``pause``, every documented trigger type accepted,
    ``compressed_delivery`` kept; mock-payload and ip-addresses served."""
    client = api.nylas()
    created = client.webhooks.create(
        {
            "webhook_url": receiver.url,
            # event.created is documented by Nylas and never sent here: accepted all the same
            "trigger_types": ["message.created", "event.created"],  # type: ignore[list-item]
            "compressed_delivery": True,  # type: ignore[typeddict-unknown-key]
        }
    ).data
    assert created.trigger_types == ["message.created", "event.created"]
    paused = client.webhooks.update(created.id, {"status": "pause"})  # type: ignore[typeddict-unknown-key]
    assert paused.data.status == "pause"
    assert client.webhooks.find(created.id).data.status == "pause"
    with api.http() as http:
        raw = http.get(f"/v3/webhooks/{created.id}").json()["data"]
        assert raw["compressed_delivery"] is True
        off = http.put(f"/v3/webhooks/{created.id}", json={"compressed_delivery": False})
        assert off.json()["data"]["compressed_delivery"] is False

        mock = http.post("/v3/webhooks/mock-payload", json={"trigger_type": "grant.expired"})
        assert mock.status_code == 200, mock.text
        envelope = mock.json()["data"]
        assert envelope["type"] == "grant.expired"
        assert envelope["source"] == "/nylas/system"
        assert envelope["data"]["object"]["code"] == 25009
        assert "grant_id" in envelope["data"]["object"]
        cut = http.post(
            "/v3/webhooks/mock-payload", json={"trigger_type": "message.created.truncated"}
        ).json()["data"]
        assert cut["type"] == "message.created.truncated"
        assert "body" not in cut["data"]["object"]
        assert cut["data"]["object"]["object"] == "message"
        failed = http.post(
            "/v3/webhooks/mock-payload", json={"trigger_type": "message.send_failed"}
        ).json()["data"]
        assert failed["source"] == "/nylas/send"
        assert {"grant_id", "reason", "error", "object"} <= set(failed["data"])
        assert failed["data"]["object"]["schedule_id"]
        unknown = http.post("/v3/webhooks/mock-payload", json={"trigger_type": "nope.created"})
        assert unknown.status_code == 400, unknown.text
        # the reference's body schema lists webhook_url as required beside trigger_type
        with_url = http.post(
            "/v3/webhooks/mock-payload",
            json={"trigger_type": "folder.created", "webhook_url": receiver.url},
        )
        assert with_url.status_code == 200, with_url.text
        assert with_url.json()["data"]["type"] == "folder.created"

    # every type of the reference's trigger_types (api/webhook-notifications) is accepted,
    # those nothing over IMAP produces among them
    documented = [
        "grant.imap_sync_completed",
        "message.transactional.bounced",
        "message.transactional.complaint",
        "message.transactional.delivered",
        "message.transactional.rejected",
        "message.bounced",
        "message.complaint",
        "message.delivered",
        "message.rejected",
        "notetaker.created",
        "notetaker.updated",
        "notetaker.deleted",
        "notetaker.meeting_state",
        "notetaker.media",
        "message.created.metadata",  # notification reference, Message Metadata
        "message.updated.metadata",
    ]
    with api.http() as http:
        answer = http.put(f"/v3/webhooks/{created.id}", json={"trigger_types": documented})
    assert answer.status_code == 200, answer.text
    assert answer.json()["data"]["trigger_types"] == documented

    addresses = client.webhooks.ip_addresses().data
    assert addresses.ip_addresses == []
    assert addresses.updated_at > 0


def _status_of(call: Callable[[], object]) -> int:
    with pytest.raises(NylasApiError) as caught:
        call()
    return caught.value.status_code


def test_list_filters_filter_or_are_a_400(api: ApiServer, mail_user: MailUser) -> None:
    """A filter the engine cannot apply is refused, never ignored (an unfiltered 200 would be
    taken for a filtered page)."""
    create_folder(mail_user.server, mail_user.name, mail_user.password, "Projects")
    create_folder(mail_user.server, mail_user.name, mail_user.password, "Projects/2026")
    create_folder(mail_user.server, mail_user.name, mail_user.password, "Projects/2027")
    grant_id = connect_and_sync(api, mail_user)
    client = api.nylas()
    messages, folders = client.messages, client.folders
    for refused in (
        lambda: messages.list(grant_id, {"query_imap": True}),  # type: ignore[typeddict-unknown-key]
    ):
        assert _status_of(refused) == 400
    assert messages.list(grant_id, {"query_imap": False}).data == []  # type: ignore[typeddict-unknown-key]

    everything = [f.name for f in folders.list(grant_id).data]
    assert {"INBOX", "Projects", "Projects/2026", "Projects/2027"} <= set(everything)
    first = folders.list(grant_id, {"limit": 2})
    assert [f.name for f in first.data] == everything[:2]
    assert first.next_cursor
    paged = [f.name for f in first.data]
    cursor: str | None = first.next_cursor
    while cursor:
        more = folders.list(grant_id, {"limit": 2, "page_token": cursor})
        paged += [f.name for f in more.data]
        cursor = more.next_cursor
    assert paged == everything
    assert _status_of(lambda: folders.list(grant_id, {"page_token": "zzz"})) == 400

    projects = next(f for f in folders.list(grant_id).data if f.name == "Projects")
    children = folders.list(grant_id, {"parent_id": projects.id}).data
    assert sorted(f.name for f in children) == ["Projects/2026", "Projects/2027"]
    with api.http() as http:
        selected = http.get(f"/v3/grants/{grant_id}/folders", params={"select": "name"})
        one = http.get(f"/v3/grants/{grant_id}/folders/INBOX", params={"select": "name"})
    assert {frozenset(f) for f in selected.json()["data"]} == {
        frozenset({"id", "grant_id", "object", "name"})
    }
    assert set(one.json()["data"]) == {"id", "grant_id", "object", "name"}


def test_an_expired_grant_answers_its_data_with_401(api: ApiServer, mail_user: MailUser) -> None:
    """Nylas clients detect expiry from a 401 on the grant's data; the grant itself reads."""
    grant_id = connect_and_sync(api, mail_user)
    client = api.nylas()
    assert client.messages.list(grant_id).data is not None
    with session_scope(api.settings.require_database_url()) as db:
        assert expire_grant(db, grant_id, "the server refused the login") is True
    for call in (
        lambda: client.messages.list(grant_id),
        lambda: client.threads.list(grant_id),
        lambda: client.folders.list(grant_id),
        lambda: client.messages.list(mail_user.email),  # by address too
        # the grant is judged before the page is: an empty page, a bad filter, a bad token
        lambda: client.messages.list(grant_id, {"from": "nobody@example.test"}),
        lambda: client.messages.list(grant_id, {"in": "No such folder"}),
        lambda: client.messages.list(grant_id, {"page_token": "zzz"}),
        lambda: client.messages.list(grant_id, {"limit": 0}),
        # a search the store answers (its page carries the grant's check), one that matches
        # nothing, one that does not parse, and one the server would answer
        lambda: client.messages.list(grant_id, {"search_query_native": "SUBJECT e"}),  # type: ignore[typeddict-item]
        lambda: client.messages.list(grant_id, {"search_query_native": "FROM nobody.nowhere"}),  # type: ignore[typeddict-item]
        lambda: client.messages.list(grant_id, {"search_query_native": "("}),  # type: ignore[typeddict-item]
        lambda: client.messages.list(grant_id, {"search_query_native": "BODY e"}),  # type: ignore[typeddict-item]
    ):
        assert _status_of(call) == 401
    unknown = "0b6a4e8e-4f53-4f8e-9a3e-2f0c6c1d7a11"  # and a grant that does not exist: 404
    for query in ("SUBJECT e", "("):
        assert (
            _status_of(lambda q=query: client.messages.list(unknown, {"search_query_native": q}))
            == 404
        )  # type: ignore[misc, typeddict-item]
    with pytest.raises(NylasApiError) as caught:
        client.messages.list(grant_id)
    assert caught.value.type == "unauthorized"
    assert "Re-authenticate" in caught.value.args[0]
    assert client.grants.find(grant_id).data.grant_status == "invalid"

    client.auth.custom_authentication(connect_body(mail_user))  # type: ignore[arg-type]
    assert client.messages.list(grant_id).data is not None


def test_include_basic_headers_gives_the_threading_headers(
    api: ApiServer, mail_user: MailUser
) -> None:
    """changelogs/2026-05-20: ``fields=include_basic_headers`` returns Message-ID,
    In-Reply-To and References only (list and get)."""
    t = now()
    append_many(
        mail_user,
        [
            (make_message("first", message_id="<a1@example.test>", date=t), "", t),
            (
                make_message(
                    "second",
                    message_id="<b2@example.test>",
                    in_reply_to="<a1@example.test>",
                    date=t,
                ),
                "",
                t,
            ),
        ],
    )
    grant_id = connect_and_sync(api, mail_user)
    client = api.nylas()
    listed = client.messages.list(grant_id, {"fields": "include_basic_headers"}).data  # type: ignore[typeddict-item]
    by_subject = {m.subject: m for m in listed}
    assert by_subject["second"].headers is not None
    assert [(h.name, h.value) for h in by_subject["second"].headers] == [
        ("Message-ID", "<b2@example.test>"),
        ("In-Reply-To", "<a1@example.test>"),
        ("References", "<a1@example.test>"),
    ]
    one = client.messages.find(
        grant_id,
        by_subject["first"].id,
        {"fields": "include_basic_headers"},  # type: ignore[typeddict-item]
    ).data
    assert one.headers is not None
    assert [(h.name, h.value) for h in one.headers] == [("Message-ID", "<a1@example.test>")]


def test_folder_notifications_name_their_parent(api: ApiServer, mail_user: MailUser) -> None:
    """notifications/folders: the object carries ``grant_id``, ``id``, ``name``, ``object``,
    ``system_folder``; a nested folder's ``parent_id`` is its parent's id, as the API shows it."""
    create_folder(mail_user.server, mail_user.name, mail_user.password, "Projects")
    grant_id = connect_and_sync(api, mail_user)
    client = api.nylas()
    created = client.folders.create(grant_id, {"name": "Projects/2026"}).data
    (notified,) = [o for t, o in api.outbox_objects() if t == "folder.created"]
    projects = next(f for f in client.folders.list(grant_id).data if f.name == "Projects")
    assert created.parent_id == projects.id
    assert {k: notified[k] for k in ("grant_id", "id", "name", "object", "system_folder")} == {
        "grant_id": grant_id,
        "id": created.id,
        "name": "Projects/2026",
        "object": "folder",
        "system_folder": False,
    }
    assert notified["parent_id"] == projects.id


def _server_folders(user: MailUser) -> set[str]:
    """Folder names as the server lists them (raw)."""
    conn = imap_login(user.server, user.name, user.password)
    try:
        _typ, data = conn.list()
    finally:
        conn.logout()
    return {
        line.decode().rsplit(' "/" ', 1)[-1].strip('"') for line in data if isinstance(line, bytes)
    }


def test_a_nested_folder_keeps_its_parent_and_moves_with_parent_id(
    api: ApiServer, mail_user: MailUser
) -> None:
    """folders/put-folders-id: ``name`` renames the folder where it is; ``parent_id`` moves it
    under that folder on the server (joined with the server's hierarchy delimiter)."""
    for name in ("Projects", "Projects/2026", "Clients"):
        create_folder(mail_user.server, mail_user.name, mail_user.password, name)
    grant_id = connect_and_sync(api, mail_user)
    client = api.nylas()
    by_name = {f.name: f for f in client.folders.list(grant_id).data}
    projects, child, clients = by_name["Projects"], by_name["Projects/2026"], by_name["Clients"]

    renamed = client.folders.update(grant_id, child.id, {"name": "2027"}).data
    assert (renamed.id, renamed.name, renamed.parent_id) == (child.id, "Projects/2027", projects.id)
    on_server = _server_folders(mail_user)
    assert "Projects/2027" in on_server
    assert not {"2027", "Projects/2026"} & on_server

    moved = client.folders.update(grant_id, child.id, {"parent_id": clients.id}).data
    assert (moved.id, moved.name, moved.parent_id) == (child.id, "Clients/2027", clients.id)
    on_server = _server_folders(mail_user)
    assert "Clients/2027" in on_server
    assert "Projects/2027" not in on_server
    (notified,) = [
        o for t, o in api.outbox_objects() if t == "folder.updated" and o["name"] == "Clients/2027"
    ]
    assert notified["parent_id"] == clients.id

    both = client.folders.update(grant_id, child.id, {"name": "Done", "parent_id": projects.id})
    assert (both.data.name, both.data.parent_id) == ("Projects/Done", projects.id)
    assert "Projects/Done" in _server_folders(mail_user)
    with api.http() as http:
        into_itself = http.put(
            f"/v3/grants/{grant_id}/folders/{projects.id}", json={"parent_id": child.id}
        )
    assert into_itself.status_code == 400, into_itself.text
    assert "Projects" in _server_folders(mail_user)
    # the sync engine finds the same folders: nothing duplicated or lost
    before = sorted((f.id, f.name) for f in client.folders.list(grant_id).data)
    sync(api.settings, grant_id)
    assert sorted((f.id, f.name) for f in client.folders.list(grant_id).data) == before


def test_folders_list_inbox_and_system_folders_first(api: ApiServer, mail_user: MailUser) -> None:
    """folders/get-folders: INBOX, then the system folders (a role), then the others by name."""
    for name in ("Aardvark", "Trash", "Sent", "Zebra", "Archive", "Drafts"):
        create_folder(mail_user.server, mail_user.name, mail_user.password, name)
    grant_id = connect_and_sync(api, mail_user)
    listed = api.nylas().folders.list(grant_id).data
    assert listed[0].name == "INBOX"
    system = [f.system_folder for f in listed]
    assert system == sorted(system, reverse=True)  # every system folder before any other
    assert [f.name for f in listed if not f.system_folder] == ["Aardvark", "Zebra"]
    assert {f.name for f in listed if f.system_folder} == {
        "INBOX",
        "Trash",
        "Sent",
        "Archive",
        "Drafts",
    }


def test_delete_with_hard_delete_expunges_the_message(api: ApiServer, mail_user: MailUser) -> None:
    """messages/delete-message: without ``hard_delete`` the message goes to Trash; with
    ``hard_delete=true`` it is deleted at once (here: \\Deleted and EXPUNGE on every copy)."""
    create_folder(mail_user.server, mail_user.name, mail_user.password, "Trash")
    t = now()
    append_many(
        mail_user, [(make_message("gone", date=t), "", t), (make_message("kept", date=t), "", t)]
    )
    grant_id = connect_and_sync(api, mail_user)
    client = api.nylas()
    gone = next(m for m in client.messages.list(grant_id).data if m.subject == "gone")
    with api.http() as http:
        answer = http.delete(
            f"/v3/grants/{grant_id}/messages/{gone.id}", params={"hard_delete": "true"}
        )
        again = http.get(f"/v3/grants/{grant_id}/messages/{gone.id}")
    assert answer.status_code == 200, answer.text
    assert again.status_code == 404
    assert count_in(mail_user, "INBOX") == 1
    assert count_in(mail_user, "Trash") == 0
    assert api.outbox()[-1] == ("message.deleted", gone.id)
    assert [m.subject for m in client.messages.list(grant_id).data] == ["kept"]
    sync(api.settings, grant_id)
    assert [m.subject for m in client.messages.list(grant_id).data] == ["kept"]


def test_delete_without_a_trash_folder_deletes(api: ApiServer, mail_user: MailUser) -> None:
    """messages/delete-message on an account with no Trash folder: the message is deleted
    (there is nowhere to move it), not refused."""
    t = now()
    append_many(mail_user, [(make_message("no trash", date=t), "", t)])
    grant_id = connect_and_sync(api, mail_user)
    client = api.nylas()
    (message,) = client.messages.list(grant_id).data
    client.messages.destroy(grant_id, message.id)
    assert count_in(mail_user, "INBOX") == 0
    assert client.messages.list(grant_id).data == []
    assert api.outbox()[-1] == ("message.deleted", message.id)


def test_messages_carry_in_reply_to(api: ApiServer, mail_user: MailUser) -> None:
    """messages: ``in_reply_to`` is the In-Reply-To header's Message-ID (null on a first
    message), on lists, single reads and in ``select``."""
    t = now()
    append_many(
        mail_user,
        [
            (make_message("first", message_id="<a1@example.test>", date=t), "", t),
            (
                make_message(
                    "second",
                    message_id="<b2@example.test>",
                    in_reply_to="<a1@example.test>",
                    date=t,
                ),
                "",
                t,
            ),
        ],
    )
    grant_id = connect_and_sync(api, mail_user)
    with api.http() as http:
        listed = http.get(f"/v3/grants/{grant_id}/messages").json()["data"]
        by_subject = {m["subject"]: m for m in listed}
        assert by_subject["second"]["in_reply_to"] == "<a1@example.test>"
        assert by_subject["first"]["in_reply_to"] is None
        one = http.get(f"/v3/grants/{grant_id}/messages/{by_subject['second']['id']}").json()
        assert one["data"]["in_reply_to"] == "<a1@example.test>"
        selected = http.get(
            f"/v3/grants/{grant_id}/messages", params={"select": "in_reply_to"}
        ).json()["data"]
        assert {m["in_reply_to"] for m in selected} == {None, "<a1@example.test>"}
    # the SDK reads the objects all the same
    assert len(api.nylas().messages.list(grant_id).data) == 2


def test_grant_locators_email_and_grant_prefixes(api: ApiServer, mail_user: MailUser) -> None:
    """``/v3/grants/{identifier}``: the id, the address, and the ``grant:<id>`` and
    ``email:<address>`` locators name the same grant, in every grant route."""
    t = now()
    append_many(mail_user, [(make_message("located", date=t), "", t)])
    grant_id = connect_and_sync(api, mail_user)
    client = api.nylas()
    for locator in (
        grant_id,
        mail_user.email,
        f"grant:{grant_id}",
        f"email:{mail_user.email}",
        f"email:{mail_user.email.upper()}",
    ):
        assert client.grants.find(locator).data.id == grant_id, locator
        assert [m.subject for m in client.messages.list(locator).data] == ["located"], locator
        assert len(client.threads.list(locator).data) == 1, locator
        assert "INBOX" in {f.name for f in client.folders.list(locator).data}, locator
    for unknown in ("email:nobody@example.test", "grant:not-a-grant", "email:", "grant:"):
        assert _status_of(lambda u=unknown: client.grants.find(u)) == 404, unknown  # type: ignore[misc]
        assert _status_of(lambda u=unknown: client.messages.list(u)) == 404, unknown  # type: ignore[misc]


def test_grants_list_sorts_and_filters_as_nylas(
    api: ApiServer, mail_user: MailUser, _mail_user_pool: Iterator[MailUser]
) -> None:
    """manage-grants/get-all-grants: newest first by default (``sort_by=created_at``,
    ``order_by=desc``); ``since``/``before`` bound ``created_at``; ``provider``, ``ip``,
    ``account_id(s)`` and ``workspace_id`` filter (no grant here has an ip, a v2 account or a
    workspace), never ignored."""
    client = api.nylas()
    first = client.auth.custom_authentication(connect_body(mail_user)).data  # type: ignore[arg-type]
    other = next(_mail_user_pool)
    second = client.auth.custom_authentication(connect_body(other)).data  # type: ignore[arg-type]

    def ids(params: dict[str, object] | None = None) -> list[str]:
        return [g.id for g in client.grants.list(params).data]  # type: ignore[arg-type]

    assert ids() == [second.id, first.id]
    assert ids({"order_by": "asc"}) == [first.id, second.id]
    assert ids({"limit": 1}) == [second.id]
    assert ids({"limit": 1, "offset": 1}) == [first.id]
    client.grants.update(first.id, {"settings": {"smtp_host": "smtp.example.test"}})
    assert ids({"sort_by": "updated_at"}) == [first.id, second.id]
    assert ids({"sort_by": "updated_at", "order_by": "asc"}) == [second.id, first.id]

    assert first.created_at is not None
    assert ids({"since": 0}) == [second.id, first.id]
    assert ids({"since": first.created_at + 3600}) == []
    assert ids({"before": first.created_at - 1}) == []
    assert ids({"before": first.created_at + 3600}) == [second.id, first.id]
    assert ids({"provider": "imap"}) == [second.id, first.id]
    assert ids({"provider": "google"}) == []
    assert ids({"ip": "192.0.2.1"}) == []
    with api.http() as http:
        for params in ({"account_id": "v2"}, {"account_ids": "v2,v3"}, {"workspace_id": "w"}):
            answer = http.get("/v3/grants", params=params)
            assert answer.status_code == 200, answer.text
            assert answer.json()["data"] == [], params
        for bad in ({"sort_by": "email"}, {"order_by": "up"}, {"since": "soon"}):
            assert http.get("/v3/grants", params=bad).status_code == 400, bad


def test_threads_filter_by_earliest_message_date(api: ApiServer, mail_user: MailUser) -> None:
    """threads/get-threads ``earliest_message_date``: the threads whose first message is at or
    after that time (a thread that began earlier is left out, however recent its last reply)."""
    t = now().replace(microsecond=0)
    old, reply, recent = t - timedelta(days=3), t - timedelta(hours=1), t - timedelta(days=1)
    append_many(
        mail_user,
        [
            (make_message("long", message_id="<l1@example.test>", date=old), "", old),
            (
                make_message(
                    "Re: long",
                    message_id="<l2@example.test>",
                    in_reply_to="<l1@example.test>",
                    date=reply,
                ),
                "",
                reply,
            ),
            (make_message("fresh", message_id="<f1@example.test>", date=recent), "", recent),
        ],
    )
    grant_id = connect_and_sync(api, mail_user)
    threads = api.nylas().threads
    assert len(threads.list(grant_id).data) == 2
    since = int((t - timedelta(days=2)).timestamp())
    (fresh,) = threads.list(grant_id, {"earliest_message_date": since}).data
    assert fresh.subject == "fresh"
    assert fresh.earliest_message_date is not None and fresh.earliest_message_date >= since
    at_old = int(old.timestamp())
    assert len(threads.list(grant_id, {"earliest_message_date": at_old}).data) == 2
    assert threads.list(grant_id, {"earliest_message_date": int(t.timestamp()) + 60}).data == []
    page = threads.list(grant_id, {"earliest_message_date": at_old, "limit": 1})
    assert page.next_cursor
    rest = threads.list(
        grant_id, {"earliest_message_date": at_old, "limit": 1, "page_token": page.next_cursor}
    )
    assert {page.data[0].subject, rest.data[0].subject} == {"fresh", "Re: long"}


def test_threads_tell_the_latest_received_from_the_latest_sent(
    api: ApiServer, mail_user: MailUser
) -> None:
    """threads/get-threads: ``latest_message_received_date`` is the most recent message received
    in the thread and ``latest_message_sent_date`` the most recent one the account sent (here:
    held in its Sent folder); a thread with no message of one kind has no such field (the SDKs
    have both optional)."""
    server, user, password = mail_user.server, mail_user.name, mail_user.password
    create_folder(server, user, password, "Sent")
    t = now().replace(microsecond=0)
    me = f"Me <{mail_user.email}>"
    mail = [
        (
            "INBOX",
            make_message("Plans", message_id="<p1@example.test>", date=t - timedelta(hours=3)),
        ),
        (
            "INBOX",
            make_message(
                "Re: Plans",
                message_id="<p2@example.test>",
                in_reply_to="<p1@example.test>",
                date=t - timedelta(hours=2),
            ),
        ),
        (
            "Sent",
            make_message(
                "Re: Plans",
                sender=me,
                message_id="<p3@example.test>",
                in_reply_to="<p2@example.test>",
                date=t - timedelta(hours=1),
            ),
        ),
        (
            "INBOX",
            make_message("Lone", message_id="<l1@example.test>", date=t - timedelta(hours=4)),
        ),
    ]
    for folder, raw in mail:
        when = t - timedelta(hours=1)
        append(server, user, password, raw, folder=folder, when=when)
    grant_id = connect_and_sync(api, mail_user)
    client = api.nylas()
    listed = {x.subject: x for x in client.threads.list(grant_id).data}
    plans, lone = listed["Re: Plans"], listed["Lone"]
    received, sent = (
        int((t - timedelta(hours=2)).timestamp()),
        int((t - timedelta(hours=1)).timestamp()),
    )
    for thread in (plans, client.threads.find(grant_id, plans.id).data):
        assert (thread.latest_message_received_date, thread.latest_message_sent_date) == (
            received,
            sent,
        )
    assert lone.latest_message_received_date == int((t - timedelta(hours=4)).timestamp())
    assert lone.latest_message_sent_date is None
    with api.http() as http:
        raw_lone = http.get(f"/v3/grants/{grant_id}/threads/{lone.id}").json()["data"]
        listed_raw = http.get(f"/v3/grants/{grant_id}/threads").json()["data"]
    assert "latest_message_sent_date" not in raw_lone
    assert [x for x in listed_raw if x["id"] == lone.id] == [raw_lone]


def test_threads_filter_by_thread_id(api: ApiServer, mail_user: MailUser) -> None:
    """The SDK's ``ListThreadsQueryParams`` has ``thread_id``: it filters (one thread, or none
    for an id no thread has), never an unfiltered page."""
    t = now()
    append_many(
        mail_user,
        [
            (make_message("one", message_id="<o1@example.test>", date=t), "", t),
            (make_message("two", message_id="<t1@example.test>", date=t), "", t),
        ],
    )
    grant_id = connect_and_sync(api, mail_user)
    threads = api.nylas().threads
    every = threads.list(grant_id).data
    assert len(every) == 2
    for thread in every:
        (only,) = threads.list(grant_id, {"thread_id": thread.id}).data
        assert (only.id, only.subject) == (thread.id, thread.subject)
        with api.http() as http:
            selected = http.get(
                f"/v3/grants/{grant_id}/threads", params={"thread_id": thread.id, "select": "id"}
            )
        assert [t["id"] for t in selected.json()["data"]] == [thread.id]
    for nothing in ("0b6a4e8e-4f53-4f8e-9a3e-2f0c6c1d7a11", "not-a-thread"):
        assert threads.list(grant_id, {"thread_id": nothing}).data == [], nothing


def test_message_metadata_is_kept_returned_and_filtered(
    api: ApiServer, mail_user: MailUser
) -> None:
    """dev-guide/metadata: ``PUT .../messages/{id}`` with ``metadata`` stores it (the whole
    object replaced), the message returns it, and ``metadata_pair=key1:value`` (key1..key5
    only) filters; 50 pairs, 40-character keys, 500-character string values at most."""
    t = now()
    append_many(mail_user, [(make_message(s, date=t), "", t) for s in ("one", "two", "three")])
    grant_id = connect_and_sync(api, mail_user)
    client = api.nylas()
    by_subject = {m.subject: m for m in client.messages.list(grant_id).data}
    one, two = by_subject["one"], by_subject["two"]
    assert all(m.metadata == {} for m in by_subject.values())
    events_before = api.outbox()

    stored = client.messages.update(
        grant_id, one.id, {"metadata": {"key1": "onboarding", "note": "from the CRM"}}
    ).data
    assert stored.metadata == {"key1": "onboarding", "note": "from the CRM"}
    assert client.messages.find(grant_id, one.id).data.metadata == stored.metadata
    assert api.outbox() == events_before  # Nylas sends no notification for metadata alone

    def subjects(pair: str, **more: object) -> list[str]:
        params = {"metadata_pair": pair, **more}
        return sorted(m.subject for m in client.messages.list(grant_id, params).data)  # type: ignore[arg-type, misc]

    assert subjects("key1:onboarding") == ["one"]
    assert subjects("key1:other") == []
    client.messages.update(grant_id, two.id, {"metadata": {"key1": "onboarding"}})
    assert subjects("key1:onboarding") == ["one", "two"]
    client.messages.update(grant_id, one.id, {"unread": False})
    assert subjects("key1:onboarding", unread=True) == ["two"]
    # a write replaces the whole object
    client.messages.update(grant_id, one.id, {"metadata": {"key2": "b"}})
    assert client.messages.find(grant_id, one.id).data.metadata == {"key2": "b"}
    assert subjects("key1:onboarding") == ["two"]
    assert subjects("key2:b") == ["one"]
    # kept through a sync, and in the message.updated a later change sends
    sync(api.settings, grant_id)
    assert client.messages.find(grant_id, one.id).data.metadata == {"key2": "b"}
    client.messages.update(grant_id, one.id, {"starred": True})
    updates = [o for t, o in api.outbox_objects() if t == "message.updated" and o["id"] == one.id]
    assert updates[-1]["starred"] is True
    assert updates[-1]["metadata"] == {"key2": "b"}

    for refused_pair in ("note:from the CRM", "key1", "key6:x", ":x"):
        assert _status_of(lambda p=refused_pair: subjects(p)) == 400, refused_pair  # type: ignore[misc]
    for refused in (
        {f"k{i}": "v" for i in range(51)},
        {"k" * 41: "v"},
        {"key1": "v" * 501},
        {"key1": {"nested": "no"}},
        {"key1": 5},
    ):
        status = _status_of(
            lambda r=refused: client.messages.update(grant_id, two.id, {"metadata": r})
        )  # type: ignore[misc]
        assert status == 400, refused
    assert client.messages.find(grant_id, two.id).data.metadata == {"key1": "onboarding"}
    limits = {f"k{i:02}" + "x" * 37: "v" * 500 for i in range(50)}
    assert client.messages.update(grant_id, two.id, {"metadata": limits}).data.metadata == limits


def test_metadata_pair_is_served_by_its_index(api: ApiServer, mail_user: MailUser) -> None:
    """With many messages of which few carry metadata (as it is used), the filter's query is
    planned on the partial GIN index of migration 0310, not a walk of the grant's messages."""
    from sqlalchemy import text

    from pipeline.api.pagination import DEFAULT_LIMIT
    from pipeline.messages import filters as message_filters
    from pipeline.messages import queries as message_queries

    grant_id = connect_and_sync(api, mail_user)
    with session_scope(api.settings.require_database_url()) as db:
        db.execute(
            text(
                "INSERT INTO messages (id, grant_id, identity_key, header_hash, date, "
                'received_at, "references", subject, "from", "to", cc, bcc, reply_to, snippet, '
                "body, headers, size, unread, starred, flags, has_attachments, metadata) "
                "SELECT gen_random_uuid(), CAST(:g AS uuid), 'bulk-' || n, md5(n::text), "
                "now() - n * interval '1 minute', now(), '{}', '', '[]', '[]', '[]', '[]', "
                "'[]', '', '', '[]', 0, true, false, '{}', false, CASE WHEN n % 2000 = 0 "
                "THEN jsonb_build_object('key1', 'tag' || n) ELSE '{}'::jsonb END "
                "FROM generate_series(1, 20000) AS n"
            ),
            {"g": grant_id},
        )
        db.execute(text("ANALYZE messages"))
        query = message_queries.list_messages_query(
            grant_id,
            message_filters.MessageFilter(metadata_pair=("key1", "tag4000")),
            DEFAULT_LIMIT,
            None,
        )
        sql = str(query.compile(db.get_bind(), compile_kwargs={"literal_binds": True}))
        plan = "\n".join(str(r[0]) for r in db.execute(text(f"EXPLAIN {sql}")))
        assert "ix_api_messages_grant_metadata" in plan, plan
        assert len(db.execute(query).all()) == 1


@pytest.mark.parametrize(
    ("provider", "settings_of"),
    [
        # auth/custom (iCloud): the Apple ID and an app-specific password (the test Dovecot's
        # login name is not the address, so the address is given too)
        ("icloud", lambda u: {"username": u.name, "password": u.password, "email": u.email}),
        # Yahoo with an app password (Nylas: the IMAP way in); address and password
        ("yahoo", lambda u: {"email": u.email, "username": u.name, "password": u.password}),
    ],
)
def test_connect_custom_takes_icloud_and_yahoo(
    api: ApiServer,
    mail_user: MailUser,
    monkeypatch: pytest.MonkeyPatch,
    provider: str,
    settings_of: Callable[[MailUser], dict[str, str]],
) -> None:
    """``/v3/connect/custom`` with ``provider: "icloud"`` or ``"yahoo"`` and Nylas' settings for
    them signs in with the engine's preset of that provider (its servers; here the preset points
    at the test Dovecot, as the internet hosts cannot be reached from the tests)."""
    from dataclasses import replace

    from pipeline import presets

    local = replace(
        presets.PRESETS[provider],
        imap_host="127.0.0.1",
        imap_port=mail_user.server.port,
        imap_tls="starttls",
        smtp_host=None,
    )
    monkeypatch.setitem(presets.PRESETS, provider, local)
    t = now()
    append_many(mail_user, [(make_message("from the provider", date=t), "", t)])
    client = api.nylas()
    # Nylas apps create the provider's connector first (provider-guides/icloud)
    assert client.connectors.create({"provider": provider}).data.provider == provider  # type: ignore[typeddict-item]
    assert client.connectors.find(provider).data.provider == provider
    grant = client.auth.custom_authentication(
        {"provider": provider, "settings": settings_of(mail_user)}  # type: ignore[typeddict-item]
    ).data
    # the engine reports every grant as "imap" and names the preset it used in its settings
    assert grant.provider == "imap"
    assert grant.settings is not None and grant.settings["provider_preset"] == provider
    assert grant.email == mail_user.email
    sync(api.settings, grant.id)
    assert [m.subject for m in client.messages.list(grant.id).data] == ["from the provider"]

    with api.http() as http:
        wrong = http.post(
            "/v3/connect/custom",
            json={"provider": provider, "settings": {**settings_of(mail_user), "password": "no"}},
        )
        assert wrong.status_code == 401, wrong.text
        missing = http.post(
            "/v3/connect/custom", json={"provider": provider, "settings": {"email": "a@b.c"}}
        )
        assert missing.status_code == 400, missing.text
        assert "password" in missing.json()["error"]["message"]


def test_connect_custom_yahoo_oauth_is_refused_with_the_way_in(api: ApiServer) -> None:
    """Yahoo's OAuth shape (``refresh_token``) needs Nylas' Yahoo connector: a 400 that says to
    use an app password, never a grant that cannot log in."""
    with api.http() as http:
        r = http.post(
            "/v3/connect/custom",
            json={"provider": "yahoo", "settings": {"refresh_token": "r", "email": "a@yahoo.com"}},
        )
    assert r.status_code == 400, r.text
    assert "app password" in r.json()["error"]["message"]


def test_fields_raw_mime_gives_the_message_as_the_server_has_it(
    api: ApiServer, mail_user: MailUser
) -> None:
    """messages (``fields=raw_mime``): the grant_id, object, id and ``raw_mime``, the whole
    message Base64url-encoded, on a single read and on lists (fetched from the IMAP server)."""
    import base64
    import email

    t = now()
    raws = {
        s: make_message(s, f"body of {s}", message_id=f"<{s}@example.test>", date=t)
        for s in ("first", "second")
    }
    append_many(mail_user, [(raw, "", t) for raw in raws.values()])
    grant_id = connect_and_sync(api, mail_user)
    client = api.nylas()
    by_subject = {m.subject: m for m in client.messages.list(grant_id).data}

    def decoded(value: str | None) -> bytes:
        assert value is not None
        return base64.urlsafe_b64decode(value + "=" * (-len(value) % 4)).replace(b"\r\n", b"\n")

    one = client.messages.find(grant_id, by_subject["first"].id, {"fields": "raw_mime"}).data
    assert decoded(one.raw_mime) == raws["first"].replace(b"\r\n", b"\n")
    assert email.message_from_bytes(decoded(one.raw_mime))["Message-ID"] == "<first@example.test>"
    with api.http() as http:
        raw_one = http.get(
            f"/v3/grants/{grant_id}/messages/{by_subject['first'].id}",
            params={"fields": "raw_mime"},
        ).json()["data"]
        assert set(raw_one) == {"id", "grant_id", "object", "raw_mime"}
        listed = http.get(f"/v3/grants/{grant_id}/messages", params={"fields": "raw_mime"}).json()[
            "data"
        ]
    assert {m["id"]: decoded(m["raw_mime"]) for m in listed} == {
        by_subject[s].id: raw.replace(b"\r\n", b"\n") for s, raw in raws.items()
    }
    assert all(set(m) == {"id", "grant_id", "object", "raw_mime"} for m in listed)


def test_clean_messages_answers_each_message_with_its_conversation(
    api: ApiServer, mail_user: MailUser
) -> None:
    """api/messages/clean-messages (``PUT .../messages/clean``, the SDK's ``clean_messages``):
    the message objects with ``conversation``, the body without quoted history, signature,
    links, images and tables (Nylas' defaults); ``select``; at most 20 ids; an unknown id a
    404 naming it; a wrong type a 400."""
    from tests.support.corpus import CORPUS

    t = now()
    reply_html = (
        '<div dir="ltr">Works for me, see <a href="https://example.test/plan">the plan</a>.'
        '<img src="https://example.test/chart.png" alt="Chart"><div><br></div>'
        "<div>Thanks,</div><div>Ann</div></div><br>"
        '<div class="gmail_quote"><div class="gmail_attr">On Mon, Bob wrote:</div>'
        "<blockquote>Lunch at noon?</blockquote></div>"
    )
    append_many(
        mail_user,
        [
            (make_message("html reply", "Works for me.", html=reply_html, date=t), "", t),
            ((CORPUS / "php-mime-mail-parser/issue84.eml").read_bytes(), "", t),
        ],
    )
    grant_id = connect_and_sync(api, mail_user)
    client = api.nylas()
    by_subject = {m.subject: m for m in client.messages.list(grant_id).data}
    html_id = by_subject["html reply"].id
    list_id = by_subject["Re: [PHP-DEV] [RFC] Remove PHP 4 Constructors"].id

    cleaned = client.messages.clean_messages(grant_id, {"message_id": [html_id, list_id]}).data
    assert [m.id for m in cleaned] == [html_id, list_id]
    html_reply, list_reply = cleaned
    assert html_reply.conversation == "<p>Works for me, see the plan.</p>"
    assert html_reply.subject == "html reply" and html_reply.grant_id == grant_id
    assert html_reply.body is not None and "Lunch at noon?" in html_reply.body  # body as stored
    assert list_reply.conversation == "+1 from me."

    kept = client.messages.clean_messages(
        grant_id,
        {
            "message_id": [html_id],
            "ignore_links": False,
            "ignore_images": False,
            "remove_conclusion_phrases": False,
            "html_as_markdown": True,
        },  # type: ignore[typeddict-unknown-key]
    ).data[0]
    assert kept.conversation == (
        "Works for me, see [the plan](https://example.test/plan)."
        " ![Chart](https://example.test/chart.png)\n\nThanks,\nAnn"
    )

    with api.http() as http:
        url = f"/v3/grants/{grant_id}/messages/clean"
        selected = http.put(url, params={"select": "id,subject"}, json={"message_id": [html_id]})
        assert selected.status_code == 200, selected.text
        assert selected.json()["data"] == [
            {
                "id": html_id,
                "grant_id": grant_id,
                "object": "message",
                "subject": "html reply",
                "conversation": "<p>Works for me, see the plan.</p>",
            }
        ]
        unknown = "0b6a4e8e-4f53-4f8e-9a3e-2f0c6c1d7a11"
        missing = http.put(url, json={"message_id": [html_id, unknown, "not-an-id"]})
        assert missing.status_code == 404, missing.text
        error = missing.json()["error"]
        assert error["type"] == "not_found_error"
        assert unknown in error["message"] and "not-an-id" in error["message"]
        assert html_id not in error["message"]
        # 21 ids (a repeated one counts once)
        too_many = {
            "message_id": [
                html_id,
                html_id,
                *(f"{i:08x}-0000-4000-8000-{i:012x}" for i in range(20)),
            ]
        }
        for refused in (
            too_many,
            {"message_id": []},
            {"message_id": html_id},
            {"message_id": [html_id], "ignore_links": "yes"},
            {"message_id": [html_id], "html_as_markdown": True, "images_as_markdown": False},
            {"message_id": [html_id], "unknown_option": True},
            {},
        ):
            answer = http.put(url, json=refused)
            assert answer.status_code == 400, (refused, answer.text)
            assert answer.json()["error"]["type"] == "invalid_request_error"
        answer = http.put(url, json=too_many)
        assert "At most 20 messages" in answer.json()["error"]["message"]
    # the path is not read as a message id by the other message routes
    assert _status_of(lambda: client.messages.find(grant_id, "clean")) == 404
