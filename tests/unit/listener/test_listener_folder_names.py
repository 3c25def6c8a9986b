"""The listener watches a folder whose name the server sends in raw 8-bit bytes (issue 9): the
workers keep such a name as the server's bytes (``FolderInfo.raw_name``), and the listener sends
the same bytes back in EXAMINE."""

from __future__ import annotations

import asyncio

from pipeline.imap import Endpoint, ImapLimits, open_session
from pipeline.imap.aio import ImapConnection
from tests.support.fake_imap import FakeFolder, FakeImapConfig, FakeImapServer, sample_message

TIMEOUT_S = 30.0


def test_the_listener_examines_the_folder_the_workers_listed() -> None:
    config = FakeImapConfig(
        folders=[
            FakeFolder(b"INBOX"),
            FakeFolder(b"Caf\xe9", [sample_message(1)]),
            FakeFolder(b"R\xc3\xa9sum\xc3\xa9", [sample_message(2), sample_message(3)]),
        ]
    )
    with FakeImapServer(config) as server:
        endpoint = Endpoint("127.0.0.1", server.port, "plain", "u", limits=ImapLimits())
        with open_session(endpoint, "pw") as imap:
            listed = {f.name: f.raw_name for f in imap.list_folders()}

        async def examine_all() -> dict[str, int | None]:
            conn = await ImapConnection.open(
                endpoint, connect_timeout_s=TIMEOUT_S, command_timeout_s=TIMEOUT_S
            )
            try:
                await conn.login("u", "pw")
                return {name: (await conn.examine(raw)).exists for name, raw in listed.items()}
            finally:
                await conn.close()

        exists = asyncio.run(examine_all())
    assert exists == {"INBOX": 0, "Café": 1, "Résumé": 2}
