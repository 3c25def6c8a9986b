"""Changes through the API reach the IMAP server first: flags, moves, deletes and folders."""

from __future__ import annotations

import pytest
from api_support import ApiServer, append_many, connect_and_sync, count_in, now, sync
from nylas.models.errors import NylasApiError

from tests.support.mail import create_folder, flags_of, imap_login, make_message
from tests.support.services import MailUser

pytestmark = pytest.mark.services


def server_folders(user: MailUser) -> set[str]:
    """Folder names as the server lists them (raw, modified UTF-7)."""
    conn = imap_login(user.server, user.name, user.password)
    try:
        _typ, data = conn.list()
    finally:
        conn.logout()
    names = set()
    for line in data:
        assert isinstance(line, bytes)
        names.add(line.decode().rsplit(' "/" ', 1)[-1].strip('"'))
    return names


def test_flags_move_and_delete_are_written_to_the_server(
    api: ApiServer, mail_user: MailUser
) -> None:
    server = mail_user.server
    create_folder(server, mail_user.name, mail_user.password, "Archive")
    create_folder(server, mail_user.name, mail_user.password, "Trash")
    t = now()
    append_many(mail_user, [(make_message("keep me", date=t), "", t)])
    grant_id = connect_and_sync(api, mail_user)
    client = api.nylas()
    (message,) = client.messages.list(grant_id).data
    folders = {f.name: f.id for f in client.folders.list(grant_id).data}
    assert message.folders == [folders["INBOX"]]
    assert message.unread is True

    updated = client.messages.update(grant_id, message.id, {"unread": False, "starred": True}).data
    assert (updated.unread, updated.starred) == (False, True)
    (server_flags,) = flags_of(server, mail_user.name, mail_user.password)
    assert "\\Seen" in server_flags
    assert "\\Flagged" in server_flags
    assert client.messages.find(grant_id, message.id).data.starred is True

    updated = client.messages.update(grant_id, message.id, {"unread": True, "starred": False}).data
    assert (updated.unread, updated.starred) == (True, False)
    (server_flags,) = flags_of(server, mail_user.name, mail_user.password)
    assert "\\Seen" not in server_flags
    assert "\\Flagged" not in server_flags

    moved = client.messages.update(grant_id, message.id, {"folders": [folders["Archive"]]}).data
    assert moved.folders == [folders["Archive"]]  # the new UID came back in COPYUID
    assert count_in(mail_user, "INBOX") == 0
    assert count_in(mail_user, "Archive") == 1
    in_archive = client.messages.list(grant_id, query_params={"in": folders["Archive"]}).data
    assert [m.id for m in in_archive] == [message.id]
    # the sync engine agrees: same id, one folder
    sync(api.settings, grant_id)
    again = client.messages.list(grant_id).data
    assert [(m.id, m.folders) for m in again] == [(message.id, [folders["Archive"]])]

    updates = [e for e in api.outbox() if e[0] == "message.updated"]
    assert updates == [("message.updated", message.id)] * 3  # two flag changes and a move
    client.messages.destroy(grant_id, message.id)
    assert api.outbox()[-1] == ("message.updated", message.id)
    assert client.messages.find(grant_id, message.id).data.folders == [folders["Trash"]]
    assert count_in(mail_user, "Archive") == 0
    assert count_in(mail_user, "Trash") == 1


def test_bad_updates_are_4xx_and_change_nothing(api: ApiServer, mail_user: MailUser) -> None:
    t = now()
    append_many(mail_user, [(make_message("only", date=t), "", t)])
    grant_id = connect_and_sync(api, mail_user)
    client = api.nylas()
    (message,) = client.messages.list(grant_id).data
    path = f"/v3/grants/{grant_id}/messages/{message.id}"
    with api.http() as http:
        unknown_folder = http.put(path, json={"folders": ["No such folder"]})
        two_folders = http.put(path, json={"folders": ["INBOX", "INBOX"]})
        wrong_type = http.put(path, json={"unread": "sometimes"})
        unknown_field = http.put(path, json={"color": "red"})
        missing = http.put(
            f"/v3/grants/{grant_id}/messages/00000000-0000-4000-8000-000000000000",
            json={"unread": False},
        )
    assert unknown_folder.status_code == 404
    for response in (two_folders, wrong_type, unknown_field):
        assert response.status_code == 400, response.text
        assert response.json()["error"]["type"] == "invalid_request_error"
    assert missing.status_code == 404
    (server_flags,) = flags_of(mail_user.server, mail_user.name, mail_user.password)
    assert "\\Seen" not in server_flags
    assert client.messages.find(grant_id, message.id).data.folders is not None


def test_folders_are_created_renamed_and_deleted_on_the_server(
    api: ApiServer, mail_user: MailUser
) -> None:
    t = now()
    append_many(mail_user, [(make_message("hello", date=t), "", t)])
    grant_id = connect_and_sync(api, mail_user)
    client = api.nylas()

    projects = client.folders.create(grant_id, {"name": "Projects"}).data
    assert projects.name == "Projects"
    child = client.folders.create(grant_id, {"name": "2026", "parent_id": projects.id}).data
    assert child.name == "Projects/2026"
    assert child.parent_id == projects.id
    umlaut = client.folders.create(grant_id, {"name": "Entwürfe Ärger"}).data
    assert umlaut.name == "Entwürfe Ärger"
    assert {"Projects", "Projects/2026", "Entw&APw-rfe &AMQ-rger"} <= server_folders(mail_user)

    with pytest.raises(NylasApiError) as duplicate:
        client.folders.create(grant_id, {"name": "Projects"})
    assert duplicate.value.status_code == 400

    renamed = client.folders.update(grant_id, projects.id, {"name": "Work"}).data
    assert renamed.id == projects.id
    assert renamed.name == "Work"
    on_server = server_folders(mail_user)
    assert {"Work", "Work/2026"} <= on_server
    assert "Projects" not in on_server
    names = {f.name: f for f in client.folders.list(grant_id).data}
    assert names["Work/2026"].id == child.id
    assert names["Work/2026"].parent_id == projects.id

    folder_events = [e for e in api.outbox() if e[0].startswith("folder.")]
    assert folder_events[:3] == [
        ("folder.created", projects.id),
        ("folder.created", child.id),
        ("folder.created", umlaut.id),
    ]
    assert ("folder.updated", projects.id) in folder_events
    assert ("folder.updated", child.id) in folder_events  # renamed with its parent
    client.folders.destroy(grant_id, child.id)
    assert api.outbox()[-1] == ("folder.deleted", child.id)
    assert "Work/2026" not in server_folders(mail_user)
    with pytest.raises(NylasApiError) as gone:
        client.folders.find(grant_id, child.id)
    assert gone.value.status_code == 404

    inbox = names["INBOX"]
    with api.http() as http:
        assert http.delete(f"/v3/grants/{grant_id}/folders/{inbox.id}").status_code == 400
        assert (
            http.put(f"/v3/grants/{grant_id}/folders/{inbox.id}", json={"name": "X"}).status_code
            == 400
        )
        assert http.post(f"/v3/grants/{grant_id}/folders", json={"name": "a*b"}).status_code == 400

    # the sync engine sees the same folders: nothing duplicated or lost
    before = sorted((f.id, f.name) for f in client.folders.list(grant_id).data)
    sync(api.settings, grant_id)
    assert sorted((f.id, f.name) for f in client.folders.list(grant_id).data) == before


def test_imap_work_respects_the_shared_account_limits(api: ApiServer, mail_user: MailUser) -> None:
    import redis

    from pipeline.limits import ConnectionSlots, Priority, RateLimiter

    t = now()
    append_many(mail_user, [(make_message("limited", date=t), "", t)])
    grant_id = connect_and_sync(api, mail_user)
    client = api.nylas()
    (message,) = client.messages.list(grant_id).data
    limiter = RateLimiter(redis.Redis.from_url(api.settings.require_redis_url(), socket_timeout=5))
    limiter.set_limits("generic", {"max_connections": 0})  # every slot taken
    with api.http() as http:
        refused = http.put(f"/v3/grants/{grant_id}/messages/{message.id}", json={"unread": False})
    assert refused.status_code == 429, refused.text
    assert refused.json()["error"]["type"] == "rate_limit_error"
    assert int(refused.headers["retry-after"]) >= 1
    (server_flags,) = flags_of(mail_user.server, mail_user.name, mail_user.password)
    assert "\\Seen" not in server_flags

    limiter.set_limits("generic", {"max_connections": 5})
    assert client.messages.update(grant_id, message.id, {"unread": False}).data.unread is False
    # the session stays pooled (holding one slot) and the next request reuses it
    slots = ConnectionSlots(limiter.redis)
    assert slots.held(grant_id) == {Priority.IDLE: 0, Priority.INTERACTIVE: 1, Priority.BULK: 0}
    assert client.messages.update(grant_id, message.id, {"starred": True}).data.starred is True
    assert sum(slots.held(grant_id).values()) == 1


def test_thread_updates_and_deletes_reach_every_message(
    api: ApiServer, mail_user: MailUser
) -> None:
    create_folder(mail_user.server, mail_user.name, mail_user.password, "Trash")
    t = now()
    root = make_message("Plan", message_id="<p1@example.test>", date=t)
    reply = make_message("Re: Plan", in_reply_to="<p1@example.test>", date=t)
    append_many(mail_user, [(root, "", t), (reply, "", t)])
    grant_id = connect_and_sync(api, mail_user)
    client = api.nylas()
    (thread,) = client.threads.list(grant_id).data
    assert len(thread.message_ids) == 2

    updated = client.threads.update(grant_id, thread.id, {"unread": False, "starred": True}).data
    assert (updated.unread, updated.starred) == (False, True)
    server_flags = flags_of(mail_user.server, mail_user.name, mail_user.password)
    assert len(server_flags) == 2
    assert all("\\Seen" in f and "\\Flagged" in f for f in server_flags)

    client.threads.destroy(grant_id, thread.id)
    assert count_in(mail_user, "INBOX") == 0
    assert count_in(mail_user, "Trash") == 2
    trash = next(f.id for f in client.folders.list(grant_id).data if f.name == "Trash")
    assert client.threads.find(grant_id, thread.id).data.folders == [trash]
