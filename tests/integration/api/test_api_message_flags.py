"""Message-level unread/starred of a message held in two folders with different flags follow
one rule (unread if any copy is unseen, starred if any copy is flagged), whatever order the
copies were synced or changed in; the API and the webhooks show it (issue 11)."""

from __future__ import annotations

from typing import Any

import pytest
from api_support import ApiServer, append_many, connect_and_sync, now, sync

from tests.support.mail import create_folder, imap_login, make_message
from tests.support.services import MailUser

pytestmark = pytest.mark.services


def store(user: MailUser, folder: str, change: str, flags: str) -> None:
    """STORE on the folder's only message, as another mail client would."""
    conn = imap_login(user.server, user.name, user.password)
    try:
        typ, data = conn.select(f'"{folder}"')
        assert typ == "OK", data
        typ, data = conn.store("1", change, f"({flags})")
        assert typ == "OK", data
    finally:
        conn.logout()


def copy_to(user: MailUser, folder: str) -> None:
    conn = imap_login(user.server, user.name, user.password)
    try:
        conn.select("INBOX")
        typ, data = conn.copy("1", f'"{folder}"')
        assert typ == "OK", data
    finally:
        conn.logout()


def shown(api: ApiServer, grant_id: str) -> dict[str, Any]:
    with api.http() as http:
        listed = http.get(f"/v3/grants/{grant_id}/messages").json()["data"]
    assert len(listed) == 1
    message: dict[str, Any] = listed[0]
    return {"unread": message["unread"], "starred": message["starred"]}


def last_updated(api: ApiServer) -> dict[str, Any]:
    updated = [o for t, o in api.outbox_objects() if t == "message.updated"]
    assert updated, "no message.updated"
    return {"unread": updated[-1]["unread"], "starred": updated[-1]["starred"]}


def test_flags_of_a_message_in_two_folders_follow_one_rule(
    api: ApiServer, mail_user: MailUser
) -> None:
    user = mail_user
    append_many(user, [(make_message("both"), "\\Seen \\Flagged", now())])
    create_folder(user.server, user.name, user.password, "Archive")
    copy_to(user, "Archive")
    store(user, "Archive", "-FLAGS", "\\Seen \\Flagged")  # Inbox: read, starred; Archive: neither
    grant_id = connect_and_sync(api, user)  # Inbox is synced first, Archive after
    assert shown(api, grant_id) == {"unread": True, "starred": True}

    store(user, "Archive", "+FLAGS", "\\Seen")  # now read everywhere
    sync(api.settings, grant_id)
    assert shown(api, grant_id) == {"unread": False, "starred": True}
    assert last_updated(api) == {"unread": False, "starred": True}

    store(user, "INBOX", "-FLAGS", "\\Flagged")  # no copy starred any more
    sync(api.settings, grant_id)
    assert shown(api, grant_id) == {"unread": False, "starred": False}
    assert last_updated(api) == {"unread": False, "starred": False}

    # a change in the folder synced first is not undone by the other's older flags
    store(user, "INBOX", "-FLAGS", "\\Seen")
    sync(api.settings, grant_id)
    assert shown(api, grant_id) == {"unread": True, "starred": False}
    store(user, "Archive", "+FLAGS", "\\Flagged")
    sync(api.settings, grant_id)
    assert shown(api, grant_id) == {"unread": True, "starred": True}
    assert last_updated(api) == {"unread": True, "starred": True}
