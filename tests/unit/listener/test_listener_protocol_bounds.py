"""Every read of the listener's IMAP client is bounded, whatever a hostile server sends.

Each test runs :class:`ImapConnection` against the fake IMAP server (tests/support/fake_imap.py)
playing a raw byte script that misbehaves in one way (issue 9: a server that floods untagged
responses grew the shared listener process to 3.3 GB). Deadlines are generous and every hostile
stream is far longer than any bound, so the error that ends a test is the bound's, never a loaded
machine's.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest

from pipeline.errors import ImapConnectError, ImapLimitError, ImapProtocolError
from pipeline.imap.aio import (
    COMMAND_MAX_BYTES,
    LINE_MAX_BYTES,
    LITERAL_MAX_BYTES,
    RESPONSE_MAX_BYTES,
    ImapConnection,
)
from pipeline.imap.client import Endpoint
from tests.support.fake_imap import FakeImapConfig, FakeImapServer, Step

GREETING = b"* OK [CAPABILITY IMAP4rev1 IDLE ENABLE CONDSTORE] hostile ready\r\n"
LONG_S = 30.0  # a deadline no test should reach: the bound under test must fire first
MAX_UNTAGGED = 200  # small, so that floods are short; the default is 10,000


def run_against(
    script: list[Step],
    client: Callable[[ImapConnection], Awaitable[None]],
    *,
    greeting: bytes = GREETING,
    command_timeout_s: float = LONG_S,
) -> None:
    """Serve ``script`` after ``greeting``; run ``client`` on an open connection."""

    async def main(port: int) -> None:
        conn = await ImapConnection.open(
            Endpoint("127.0.0.1", port, "plain", "alice", timeout_s=LONG_S),
            connect_timeout_s=LONG_S,
            command_timeout_s=command_timeout_s,
            max_untagged=MAX_UNTAGGED,
        )
        try:
            await client(conn)
        finally:
            await conn.close()

    with FakeImapServer(FakeImapConfig(script=[Step(None, greeting), *script])) as server:
        asyncio.run(main(server.port))


async def idle_until_error(conn: ImapConnection) -> None:
    """IDLE and read notices until an error (the test expects one)."""
    await conn.idle_start()
    for _ in range(10 * MAX_UNTAGGED):
        line = await conn.idle_wait(LONG_S)
        assert line is not None, "the flood stopped"


def idle_then(flood: bytes) -> list[Step]:
    """Answer IDLE with its continuation, then an endless stream of ``flood``."""
    return [Step("IDLE", b"+ idling\r\n", then=flood)]


def answer_with(command: str, flood: bytes) -> list[Step]:
    """Answer ``command`` with an endless stream of ``flood``, never the tagged OK."""
    return [Step(command, then=flood)]


def test_a_flood_of_notices_while_idling_breaks_the_idle_bound() -> None:
    async def client(conn: ImapConnection) -> None:
        with pytest.raises(ImapLimitError, match=r"more than 200 untagged .* of IDLE"):
            await idle_until_error(conn)

    run_against(idle_then(b"* 1 EXISTS\r\n* 2 FETCH (FLAGS (\\Seen))\r\n"), client)


def test_garbage_while_idling_counts_towards_the_same_bound() -> None:
    async def client(conn: ImapConnection) -> None:
        with pytest.raises(ImapLimitError, match="a flood"):
            await idle_until_error(conn)

    run_against(idle_then(b"\x00\xff garbage that is no IMAP at all )(\r\n"), client)


def test_a_flood_of_bytes_while_idling_breaks_the_byte_bound() -> None:
    line = b"* OK " + b"x" * (LINE_MAX_BYTES - 100) + b"\r\n"
    assert COMMAND_MAX_BYTES // len(line) < MAX_UNTAGGED  # the byte bound fires first

    async def client(conn: ImapConnection) -> None:
        with pytest.raises(ImapLimitError, match=r"more than 4,096 KiB .* of IDLE"):
            await idle_until_error(conn)

    run_against(idle_then(line), client)


def test_a_flood_of_untagged_during_examine_is_refused_before_its_deadline() -> None:
    async def client(conn: ImapConnection) -> None:
        with pytest.raises(ImapLimitError, match="untagged responses in answer to EXAMINE"):
            await conn.examine("INBOX")

    run_against(answer_with("EXAMINE", b"* 1 EXISTS\r\n* OK [UIDNEXT 5] x\r\n"), client)


def test_a_flood_before_the_idle_continuation_is_refused() -> None:
    async def client(conn: ImapConnection) -> None:
        with pytest.raises(ImapLimitError, match="in answer to IDLE"):
            await conn.idle_start()

    run_against(answer_with("IDLE", b"* 3 EXPUNGE\r\n"), client)


def test_notices_of_a_command_are_coalesced_not_kept() -> None:
    notices = b"* 7 EXISTS\r\n* 2 FETCH (FLAGS ())\r\n* 1 EXPUNGE\r\n* OK still here\r\n"
    script = [Step("NOOP", notices * (MAX_UNTAGGED // 4 - 1) + b"{tag} OK NOOP done\r\n")]

    async def client(conn: ImapConnection) -> None:
        status, lines, _ = await conn.command("NOOP")
        assert status == "OK"
        assert lines == [b"* 7 EXISTS", b"* 2 FETCH (FLAGS ())", b"* 1 EXPUNGE"]

    run_against(script, client)


def test_a_huge_literal_is_refused_without_being_read() -> None:
    # The server announces 2 GiB and sends none of it: only the size check can end this fast.
    script = [Step("IDLE", b"+ idling\r\n* 1 FETCH (X-GM-LABELS {2147483648}\r\n")]

    async def client(conn: ImapConnection) -> None:
        await conn.idle_start()
        with pytest.raises(ImapLimitError, match="literal of 2,147,483,648 bytes"):
            await conn.idle_wait(LONG_S)

    run_against(script, client)


def test_a_literal_size_with_thousands_of_digits_is_refused() -> None:
    async def client(conn: ImapConnection) -> None:
        with pytest.raises(ImapLimitError, match="literal"):
            await conn.command("NOOP")

    run_against(answer_with("NOOP", b"* 1 FETCH (X {" + b"9" * 5000 + b"}\r\n"), client)


def test_literals_chained_in_one_response_are_bounded_together() -> None:
    piece = b"x" * LITERAL_MAX_BYTES
    assert RESPONSE_MAX_BYTES // LITERAL_MAX_BYTES < 10  # ten pieces are over the bound

    script = [
        Step(
            "NOOP", b"* 1 FETCH (A {%d}\r\n" % len(piece), then=piece + b" B {%d}\r\n" % len(piece)
        )
    ]

    async def client(conn: ImapConnection) -> None:
        with pytest.raises(ImapLimitError, match="response longer than 256 KiB"):
            await conn.command("NOOP")

    run_against(script, client)


def test_a_line_that_never_ends_is_refused() -> None:
    async def client(conn: ImapConnection) -> None:
        with pytest.raises(ImapLimitError, match="line longer than 64 KiB"):
            await conn.command("NOOP")

    run_against(answer_with("NOOP", b"* OK " + b"y" * 4096), client)


def test_a_trickled_answer_fails_by_the_command_deadline() -> None:
    # 200 bytes at one per 0.05 s would take 10 s; the deadline is 1 s for the whole answer
    script = [Step("EXAMINE", b"* 1 EXISTS\r\n" * 15 + b"{tag} OK done\r\n", trickle_s=0.05)]

    async def client(conn: ImapConnection) -> None:
        with pytest.raises(ImapLimitError, match=r"did not answer EXAMINE within 1 s"):
            await conn.examine("INBOX")

    run_against(script, client, command_timeout_s=1.0)


def test_a_trickled_literal_while_idling_fails_by_the_command_deadline() -> None:
    script = [
        Step("IDLE", b"+ idling\r\n* 1 FETCH (X {400}\r\n"),
        Step(None, b"z" * 400, trickle_s=0.05),
    ]

    async def client(conn: ImapConnection) -> None:
        await conn.idle_start()
        with pytest.raises(ImapLimitError, match="did not complete a response within 1 s"):
            await conn.idle_wait(LONG_S)

    run_against(script, client, command_timeout_s=1.0)


def test_a_trickled_greeting_fails_by_the_connect_deadline() -> None:
    async def main(port: int) -> None:
        with pytest.raises(ImapConnectError, match="did not connect and greet within 1 s"):
            await ImapConnection.open(
                Endpoint("127.0.0.1", port, "plain", "alice", timeout_s=LONG_S),
                connect_timeout_s=1.0,
                command_timeout_s=LONG_S,
            )

    trickled = Step(None, GREETING, trickle_s=0.2)  # 13 s in all
    with FakeImapServer(FakeImapConfig(script=[trickled])) as server:
        asyncio.run(main(server.port))


def test_a_greeting_with_a_huge_literal_is_refused() -> None:
    async def client(conn: ImapConnection) -> None:
        raise AssertionError("the connection should not open")

    with pytest.raises(ImapLimitError, match="literal"):
        run_against([], client, greeting=b"* OK {2147483648}\r\n")


def test_malformed_lines_in_an_answer_end_the_command() -> None:
    async def client(conn: ImapConnection) -> None:
        with pytest.raises(ImapProtocolError, match="Unexpected IMAP line"):
            await conn.examine("INBOX")

    run_against(answer_with("EXAMINE", b"\x00\x01 )))((( not imap\r\n"), client)
