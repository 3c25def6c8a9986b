"""Every read of the listener's IMAP client is bounded, whatever a hostile server sends.

Each test runs :class:`ImapConnection` against a scripted server on 127.0.0.1 that misbehaves
in one way (issue 9: a server that floods untagged responses grew the shared listener process to
3.3 GB). Deadlines are generous and every hostile stream is far longer than any bound, so the
error that ends a test is the bound's, never a loaded machine's.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable

import pytest

from pipeline.errors import ImapConnectError, ImapLimitError, ImapProtocolError
from pipeline.imap.client import Endpoint
from pipeline.listener.protocol import (
    COMMAND_MAX_BYTES,
    LINE_MAX_BYTES,
    LITERAL_MAX_BYTES,
    RESPONSE_MAX_BYTES,
    ImapConnection,
)

GREETING = b"* OK [CAPABILITY IMAP4rev1 IDLE ENABLE CONDSTORE] hostile ready\r\n"
LONG_S = 30.0  # a deadline no test should reach: the bound under test must fire first
MAX_UNTAGGED = 200  # small, so that floods are short; the default is 10,000

Script = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def command_tag(reader: asyncio.StreamReader) -> bytes:
    """Read the client's next command; returns its tag."""
    line = await reader.readuntil(b"\r\n")
    return line.split(b" ", 1)[0]


async def endless(writer: asyncio.StreamWriter, data: bytes) -> None:
    """Write ``data`` again and again until the client goes away (or a safety cap)."""
    with contextlib.suppress(ConnectionError, OSError):
        for _ in range(10_000_000):  # safety cap: ends a broken test, never reached
            writer.write(data)
            await writer.drain()


async def trickle(writer: asyncio.StreamWriter, data: bytes, every_s: float) -> None:
    """Write ``data`` one byte every ``every_s``."""
    with contextlib.suppress(ConnectionError, OSError):
        for i in range(len(data)):
            writer.write(data[i : i + 1])
            await writer.drain()
            await asyncio.sleep(every_s)


def run_against(
    script: Script,
    client: Callable[[ImapConnection], Awaitable[None]],
    *,
    greeting: bytes = GREETING,
    command_timeout_s: float = LONG_S,
) -> None:
    """Serve ``script`` after ``greeting``; run ``client`` on an open connection."""
    handlers: set[asyncio.Task[object]] = set()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        handlers.add(task)
        try:
            writer.write(greeting)
            await writer.drain()
            await script(reader, writer)
        except (ConnectionError, OSError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    async def main() -> None:
        server = await asyncio.start_server(serve, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        try:
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
        finally:
            server.close()
            for task in handlers:  # the scripts never end by themselves
                task.cancel()
            await asyncio.gather(*handlers, return_exceptions=True)
            await server.wait_closed()

    asyncio.run(main())


async def idle_until_error(conn: ImapConnection) -> None:
    """IDLE and read notices until an error (the test expects one)."""
    await conn.idle_start()
    for _ in range(10 * MAX_UNTAGGED):
        line = await conn.idle_wait(LONG_S)
        assert line is not None, "the flood stopped"


def idle_then(flood: bytes) -> Script:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await command_tag(reader)
        writer.write(b"+ idling\r\n")
        await endless(writer, flood)

    return script


def answer_with(flood: bytes) -> Script:
    """Answer the first command with an endless stream of ``flood``, never the tagged OK."""

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await command_tag(reader)
        await endless(writer, flood)

    return script


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

    run_against(answer_with(b"* 1 EXISTS\r\n* OK [UIDNEXT 5] x\r\n"), client)


def test_a_flood_before_the_idle_continuation_is_refused() -> None:
    async def client(conn: ImapConnection) -> None:
        with pytest.raises(ImapLimitError, match="in answer to IDLE"):
            await conn.idle_start()

    run_against(answer_with(b"* 3 EXPUNGE\r\n"), client)


def test_notices_of_a_command_are_coalesced_not_kept() -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        tag = await command_tag(reader)
        notices = b"* 7 EXISTS\r\n* 2 FETCH (FLAGS ())\r\n* 1 EXPUNGE\r\n* OK still here\r\n"
        writer.write(notices * (MAX_UNTAGGED // 4 - 1) + tag + b" OK NOOP done\r\n")
        await writer.drain()
        await reader.read(1)

    async def client(conn: ImapConnection) -> None:
        status, lines, _ = await conn.command("NOOP")
        assert status == "OK"
        assert lines == [b"* 7 EXISTS", b"* 2 FETCH (FLAGS ())", b"* 1 EXPUNGE"]

    run_against(script, client)


def test_a_huge_literal_is_refused_without_being_read() -> None:
    # The server announces 2 GiB and sends none of it: only the size check can end this fast.
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await command_tag(reader)
        writer.write(b"+ idling\r\n* 1 FETCH (X-GM-LABELS {2147483648}\r\n")
        await writer.drain()
        await reader.read(1)  # until the client hangs up

    async def client(conn: ImapConnection) -> None:
        await conn.idle_start()
        with pytest.raises(ImapLimitError, match="literal of 2,147,483,648 bytes"):
            await conn.idle_wait(LONG_S)

    run_against(script, client)


def test_a_literal_size_with_thousands_of_digits_is_refused() -> None:
    async def client(conn: ImapConnection) -> None:
        with pytest.raises(ImapLimitError, match="literal"):
            await conn.command("NOOP")

    run_against(answer_with(b"* 1 FETCH (X {" + b"9" * 5000 + b"}\r\n"), client)


def test_literals_chained_in_one_response_are_bounded_together() -> None:
    piece = b"x" * LITERAL_MAX_BYTES
    assert RESPONSE_MAX_BYTES // LITERAL_MAX_BYTES < 10  # ten pieces are over the bound

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await command_tag(reader)
        writer.write(b"* 1 FETCH (A {%d}\r\n" % len(piece))
        await endless(writer, piece + b" B {%d}\r\n" % len(piece))

    async def client(conn: ImapConnection) -> None:
        with pytest.raises(ImapLimitError, match="response longer than 256 KiB"):
            await conn.command("NOOP")

    run_against(script, client)


def test_a_line_that_never_ends_is_refused() -> None:
    async def client(conn: ImapConnection) -> None:
        with pytest.raises(ImapLimitError, match="line longer than 64 KiB"):
            await conn.command("NOOP")

    run_against(answer_with(b"* OK " + b"y" * 4096), client)


def test_a_trickled_answer_fails_by_the_command_deadline() -> None:
    # 200 bytes at one per 0.05 s would take 10 s; the deadline is 1 s for the whole answer
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        tag = await command_tag(reader)
        await trickle(writer, b"* 1 EXISTS\r\n" * 15 + tag + b" OK done\r\n", 0.05)

    async def client(conn: ImapConnection) -> None:
        with pytest.raises(ImapLimitError, match=r"did not answer EXAMINE within 1 s"):
            await conn.examine("INBOX")

    run_against(script, client, command_timeout_s=1.0)


def test_a_trickled_literal_while_idling_fails_by_the_command_deadline() -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await command_tag(reader)
        writer.write(b"+ idling\r\n* 1 FETCH (X {400}\r\n")
        await trickle(writer, b"z" * 400, 0.05)

    async def client(conn: ImapConnection) -> None:
        await conn.idle_start()
        with pytest.raises(ImapLimitError, match="did not complete a response within 1 s"):
            await conn.idle_wait(LONG_S)

    run_against(script, client, command_timeout_s=1.0)


def test_a_trickled_greeting_fails_by_the_connect_deadline() -> None:
    handlers: set[asyncio.Task[object]] = set()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        handlers.add(task)
        try:
            await trickle(writer, GREETING, 0.2)  # 13 s in all
        finally:
            writer.close()

    async def main() -> None:
        server = await asyncio.start_server(serve, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        try:
            with pytest.raises(ImapConnectError, match="did not connect and greet within 1 s"):
                await ImapConnection.open(
                    Endpoint("127.0.0.1", port, "plain", "alice", timeout_s=LONG_S),
                    connect_timeout_s=1.0,
                    command_timeout_s=LONG_S,
                )
        finally:
            server.close()
            for task in handlers:
                task.cancel()
            await asyncio.gather(*handlers, return_exceptions=True)
            await server.wait_closed()

    asyncio.run(main())


def test_a_greeting_with_a_huge_literal_is_refused() -> None:
    async def client(conn: ImapConnection) -> None:
        raise AssertionError("the connection should not open")

    with pytest.raises(ImapLimitError, match="literal"):
        run_against(answer_with(b""), client, greeting=b"* OK {2147483648}\r\n")


def test_malformed_lines_in_an_answer_end_the_command() -> None:
    async def client(conn: ImapConnection) -> None:
        with pytest.raises(ImapProtocolError, match="Unexpected IMAP line"):
            await conn.examine("INBOX")

    run_against(answer_with(b"\x00\x01 )))((( not imap\r\n"), client)
