"""The workers' and API's IMAP client keeps its bounds whatever a server sends (issue 9).

Each hostile server is the fake one (tests/support/fake_imap.py) in this process; memory is
measured with tracemalloc around the call (what the client allocated, not the whole process).
"""

from __future__ import annotations

import dataclasses
import time
import tracemalloc
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

import pytest

from pipeline.errors import ImapAuthError, ImapLimitError
from pipeline.imap import Endpoint, ImapLimits, ImapSession, open_session
from pipeline.imap.bounded import BoundedIMAP4
from tests.support.fake_imap import (
    FakeFolder,
    FakeImapConfig,
    FakeImapServer,
    Hostility,
    many_folders,
    sample_message,
)
from tests.support.services import TlsFiles

T = TypeVar("T")
MIB = 1024 * 1024
# Small bounds for the test, so that each breach comes quickly; the defaults are larger.
LIMITS = ImapLimits(
    max_line_bytes=1 * MIB,
    max_literal_bytes=8 * MIB,
    max_untagged=10_000,
    max_command_bytes=32 * MIB,
    command_deadline_s=3.0,
    login_deadline_s=3.0,
)
MEMORY_BOUND_BYTES = 48 * MIB  # what one breached command may have allocated at its peak
GENEROUS_S = 60.0  # a breach within the deadline plus a loaded machine's delay
# The same byte bounds with deadlines no loaded machine reaches: for tests about anything else
# (a 3 s deadline failed a thousand-response FETCH on a busy CI machine).
RELAXED = dataclasses.replace(
    LIMITS, command_deadline_s=GENEROUS_S / 2, login_deadline_s=GENEROUS_S / 2
)


def endpoint(server: FakeImapServer, **overrides: object) -> Endpoint:
    base = Endpoint(
        host="127.0.0.1",
        port=server.port,
        tls="plain",
        username="user",
        timeout_s=30.0,
        limits=LIMITS,
    )
    return Endpoint(**{**base.__dict__, **overrides})  # type: ignore[arg-type]


@contextmanager
def measured() -> Iterator[list[int]]:
    """Peak bytes allocated inside the block (tracemalloc)."""
    peak: list[int] = []
    tracemalloc.start()
    try:
        yield peak
    finally:
        peak.append(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()


def breach(call: Callable[[], T]) -> tuple[ImapLimitError, int, float]:
    """Run ``call``, expecting an ImapLimitError; returns it, the peak memory and the time."""
    started = time.monotonic()
    with measured() as peak, pytest.raises(ImapLimitError) as caught:
        call()
    return caught.value, peak[0], time.monotonic() - started


@contextmanager
def session_on(
    config: FakeImapConfig, limits: ImapLimits = RELAXED
) -> Iterator[tuple[FakeImapServer, ImapSession]]:
    with FakeImapServer(config) as server:
        imap = open_session(endpoint(server, limits=limits), "pw")
        try:
            yield server, imap
        finally:
            imap.close()


def test_a_two_gigabyte_literal_in_the_greeting_is_refused_unread() -> None:
    config = FakeImapConfig(greeting=Hostility("literal", 2**31))
    with FakeImapServer(config) as server:
        error, peak, _ = breach(lambda: open_session(endpoint(server), "pw"))
    assert error.bound == "literal size"
    assert error.setting == "IMAP_PIPELINE_IMAP_MAX_LITERAL_BYTES"
    assert "2,147,483,648 bytes" in str(error) and "the greeting" in str(error)
    assert peak < MEMORY_BOUND_BYTES


def test_a_greeting_trickled_one_byte_at_a_time_hits_the_login_deadline() -> None:
    config = FakeImapConfig(greeting=Hostility("trickle", 0.5))
    with FakeImapServer(config) as server:
        error, _, took = breach(lambda: open_session(endpoint(server), "pw"))
    assert error.bound == "deadline"
    assert error.setting == "IMAP_PIPELINE_IMAP_LOGIN_DEADLINE_S"
    assert took < GENEROUS_S


def test_a_trickled_login_answer_hits_the_login_deadline_too() -> None:
    config = FakeImapConfig(hostile={"LOGIN": Hostility("trickle", 0.5)})
    with FakeImapServer(config) as server:
        error, _, took = breach(lambda: open_session(endpoint(server), "pw"))
    assert error.setting == "IMAP_PIPELINE_IMAP_LOGIN_DEADLINE_S"
    assert took < GENEROUS_S


def test_a_flood_during_uid_search_ends_at_the_untagged_bound() -> None:
    # Seen: a flood during UID SEARCH reached 3.9 GB and still ran at 200 s.
    with session_on(FakeImapConfig(hostile={"SEARCH": Hostility("flood")})) as (_, imap):
        imap.select("INBOX")
        error, peak, took = breach(lambda: imap.search_uids("ALL"))
        assert error.bound == "untagged responses"
        assert "UID SEARCH" in str(error) and "IMAP_PIPELINE_IMAP_MAX_UNTAGGED" in str(error)
        assert peak < MEMORY_BOUND_BYTES
        assert imap.broken
    assert took < GENEROUS_S


def test_a_flood_of_long_lines_ends_at_the_bytes_per_command_bound() -> None:
    line = b"* SEARCH " + b"1234567 " * 100_000  # 800 KB lines: few responses, many bytes
    config = FakeImapConfig(hostile={"SEARCH": Hostility("flood", line)})
    with session_on(config) as (_, imap):
        imap.select("INBOX")
        error, peak, _ = breach(lambda: imap.search_uids("ALL"))
        assert error.bound == "bytes per command"
        assert peak < MEMORY_BOUND_BYTES + LIMITS.max_command_bytes * 3


def test_a_two_gigabyte_literal_in_list_is_refused_unread() -> None:
    # Seen: a 2 GB literal in LIST ended in MemoryError.
    with session_on(FakeImapConfig(hostile={"LIST": Hostility("literal", 2**31)})) as (
        server,
        imap,
    ):
        error, peak, _ = breach(imap.list_folders)
        assert error.bound == "literal size"
        assert peak < MEMORY_BOUND_BYTES
    assert server.bytes_streamed < 2**31  # the client hung up instead of reading it


def test_an_endless_line_ends_at_the_line_bound() -> None:
    with session_on(FakeImapConfig(hostile={"LIST": Hostility("endless-line")})) as (_, imap):
        error, peak, _ = breach(imap.list_folders)
        assert error.bound == "line length"
        assert peak < MEMORY_BOUND_BYTES


def test_a_trickled_fetch_hits_the_command_deadline() -> None:
    # Seen: a trickled FETCH held sync processes for the 391 s it was watched: the socket
    # timeout is per read, and every read got its byte in time.
    config = FakeImapConfig(hostile={"FETCH": Hostility("trickle", 0.2)})
    with session_on(config, LIMITS) as (_, imap):
        imap.select("INBOX")
        error, _, took = breach(lambda: list(imap.fetch_messages([1, 2, 3])))
        assert error.bound == "deadline"
        assert error.setting == "IMAP_PIPELINE_IMAP_COMMAND_DEADLINE_S"
        assert "UID FETCH" in str(error)
    assert LIMITS.command_deadline_s <= took < GENEROUS_S


def test_unrequested_fetch_responses_are_ignored() -> None:
    # Seen: 1,000 FETCH responses the engine never asked for were stored.
    config = FakeImapConfig(hostile={"FETCH": Hostility("unrequested", 1000)})
    with session_on(config) as (_, imap):
        imap.select("INBOX")
        fetched = list(imap.fetch_messages([2, 3]))
        assert [m.uid for m in fetched] == [2, 3]
        assert [m.raw for m in fetched] == [sample_message(2), sample_message(3)]
        assert [m.uid for m in imap.fetch_meta([1])] == [1]
        assert set(imap.fetch_headers([1])) == {1}


def test_untagged_data_does_not_pile_up_over_a_session() -> None:
    config = FakeImapConfig(hostile={"NOOP": Hostility("unrequested", 200)})
    with session_on(config) as (_, imap):
        for _ in range(5):
            imap.noop()
        imap.select("INBOX")
        held = sum(len(v) for v in imap.raw.untagged_responses.values())
        assert held < 20  # what SELECT answered, not 1,000 volunteered FETCHes


def test_eight_bit_folder_names_can_be_listed_selected_and_fetched() -> None:
    # Seen: a folder with a raw 8-bit name crashed SELECT with UnicodeEncodeError.
    latin1, utf8 = b"Caf\xe9", b"R\xc3\xa9sum\xc3\xa9"
    config = FakeImapConfig(
        folders=[
            FakeFolder(b"INBOX"),
            FakeFolder(latin1, [sample_message(1)]),
            FakeFolder(utf8, [sample_message(2), sample_message(3)]),
        ]
    )
    with session_on(config) as (_, imap):
        folders = {f.name: f for f in imap.list_folders()}
        assert set(folders) == {"INBOX", "Café", "Résumé"}
        for name, count in (("Café", 1), ("Résumé", 2)):
            raw_name = folders[name].raw_name
            assert imap.status(raw_name).messages == count
            assert imap.select(raw_name).exists == count
            assert len(list(imap.fetch_messages(imap.search_uids("ALL")))) == count


def test_a_non_ascii_password_is_sent_as_a_literal() -> None:
    with FakeImapServer(FakeImapConfig(password="pässwörd")) as server:
        with pytest.raises(ImapAuthError):
            open_session(endpoint(server), "wrong")
        open_session(endpoint(server), "pässwörd").close()


def test_a_broken_session_is_disconnected_not_logged_out() -> None:
    with session_on(FakeImapConfig(hostile={"LIST": Hostility("endless-line")})) as (server, imap):
        with pytest.raises(ImapLimitError):
            imap.list_folders()
        imap.close()
        assert imap.raw.closed
    assert "LOGOUT" not in server.command_names()


def test_a_normal_server_works_over_implicit_tls_and_starttls(tls_files: TlsFiles) -> None:
    for mode in ("ssl", "starttls"):
        config = FakeImapConfig(
            tls=mode, cert_file=tls_files.cert_file, key_file=tls_files.key_file
        )
        with FakeImapServer(config) as server:
            imap = open_session(endpoint(server, tls=mode, ca_file=tls_files.ca_file), "pw")
            try:
                imap.select("INBOX")
                assert [m.uid for m in imap.fetch_messages(imap.search_uids("ALL"))] == [1, 2, 3]
            finally:
                imap.close()


def test_the_client_class_is_bounded() -> None:
    with FakeImapServer() as server:
        imap = open_session(endpoint(server), "pw")
        try:
            assert isinstance(imap.raw, BoundedIMAP4)
            assert imap.raw.limits == LIMITS
        finally:
            imap.close()


class _Stop(Exception):
    """What Celery's soft time limit does: an exception raised from a signal handler."""


def test_a_command_cut_off_by_a_signal_leaves_a_session_that_is_only_disconnected() -> None:
    import signal

    config = FakeImapConfig(hostile={"FETCH": Hostility("trickle", 0.5)})
    unbounded = ImapLimits(command_deadline_s=600.0, login_deadline_s=30.0)

    def stop(_signum: int, _frame: object) -> None:
        raise _Stop

    with FakeImapServer(config) as server:
        imap = open_session(endpoint(server, limits=unbounded), "pw")
        imap.select("INBOX")
        previous = signal.signal(signal.SIGALRM, stop)
        try:
            signal.setitimer(signal.ITIMER_REAL, 1.0)
            with pytest.raises(_Stop):
                list(imap.fetch_messages([1]))
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous)
        assert imap.broken  # the trickled answer is still coming: out of step
        started = time.monotonic()
        imap.close()
        assert time.monotonic() - started < GENEROUS_S / 2
    assert "LOGOUT" not in server.command_names()


def test_ten_thousand_folders_and_deep_nesting_stay_within_the_default_bounds() -> None:
    config = FakeImapConfig(
        folders=many_folders(10_000), hostile={"FETCH": Hostility("nested", 1_000_000)}
    )
    with FakeImapServer(config) as server:
        imap = open_session(endpoint(server, limits=ImapLimits()), "pw")
        try:
            assert len(imap.list_folders()) == 10_000
            imap.select("INBOX")
            # a FETCH of a million nested parentheses nobody asked for: read, then ignored
            with measured() as peak:
                assert [m.uid for m in imap.fetch_meta([1])] == [1]
            assert peak[0] < MEMORY_BOUND_BYTES
        finally:
            imap.close()


def test_plaintext_injected_after_starttls_is_refused(tls_files: TlsFiles) -> None:
    from pipeline.errors import ImapTlsError

    config = FakeImapConfig(
        tls="starttls",
        cert_file=tls_files.cert_file,
        key_file=tls_files.key_file,
        hostile={"STARTTLS": Hostility("inject")},
    )
    with FakeImapServer(config) as server:
        # refused by our check (the bytes came with the OK) or by the handshake they spoil
        with pytest.raises(ImapTlsError):
            open_session(endpoint(server, tls="starttls", ca_file=tls_files.ca_file), "pw")
        assert "LOGIN" not in server.command_names()  # the password never left


def test_a_total_deadline_bounds_several_commands_together() -> None:
    # Each trickled NOOP (about 1 s) is well within its own command deadline; five of them are
    # not within the 2 s the block allows in all (server search: SELECT + UID SEARCH of many
    # folders under one deadline).
    config = FakeImapConfig(hostile={"NOOP": Hostility("trickle", 0.04)})
    with session_on(config) as (_, imap):
        started = time.monotonic()
        with (
            pytest.raises(ImapLimitError) as caught,
            imap.raw.total_deadline(2.0, setting="the test's 2 s"),
        ):
            for _ in range(5):
                imap.noop()
        took = time.monotonic() - started
    assert caught.value.bound == "deadline"
    assert caught.value.setting == "the test's 2 s"
    assert "within 2 s" in str(caught.value)
    assert 2.0 <= took < GENEROUS_S / 4


def test_a_total_deadline_ends_with_its_block() -> None:
    with session_on(FakeImapConfig()) as (_, imap):
        with imap.raw.total_deadline(0.5, setting="the block's 0.5 s"):
            imap.noop()
        time.sleep(0.6)  # the block's 0.5 s deadline would have passed by now
        imap.noop()  # past the block's end, but outside it: only the command's own deadline
        imap.select("INBOX")
