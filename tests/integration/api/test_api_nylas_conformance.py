"""Differences from Nylas v3 that a client written for Nylas trips over, driven by the nylas SDK.

Each test names the Nylas reference it checks against (developer.nylas.com, ``/docs/reference``).
"""

from __future__ import annotations

from collections.abc import Callable

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
from tests.support.mail import create_folder, imap_login, make_message
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
        unknown = http.post("/v3/webhooks/mock-payload", json={"trigger_type": "nope.created"})
        assert unknown.status_code == 400, unknown.text

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
    messages, threads, folders = client.messages, client.threads, client.folders
    for refused in (
        lambda: messages.list(grant_id, {"search_query_native": "hello"}),
        lambda: messages.list(grant_id, {"metadata_pair": "key1:value"}),
        lambda: messages.list(grant_id, {"query_imap": True}),  # type: ignore[typeddict-unknown-key]
        lambda: threads.list(grant_id, {"search_query_native": "hello"}),
        lambda: threads.list(grant_id, {"earliest_message_date": 1}),
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
    ):
        assert _status_of(call) == 401
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
