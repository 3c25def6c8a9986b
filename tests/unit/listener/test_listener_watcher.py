"""One folder watcher against the scriptable fake IMAP server: the cases Dovecot cannot stage.

The fake (tests/support/fake_imap.py) runs in its own thread with CONDSTORE on, INBOX at
UIDVALIDITY 42, three messages and HIGHESTMODSEQ 7, and only the password "good"; a test pushes
untagged lines, drops connections, queues notices for the next NOOP and counts logins.
"""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import logging
import random
import re
import time
import tracemalloc
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import pytest
from pydantic import SecretStr

from pipeline.config.listener import ListenerSettings
from pipeline.errors import ImapConnectError
from pipeline.imap.client import Endpoint
from pipeline.imap.responses import Snapshot
from pipeline.listener.events import FolderRef
from pipeline.listener.idle import FolderWatcher, WatchContext, WatchState, WatchTarget
from tests.support.fake_imap import (
    CAPABILITIES,
    FakeFolder,
    FakeImapConfig,
    FakeImapServer,
    Hostility,
    sample_message,
)
from tests.support.waiting import wait_for_async

SETTINGS = ListenerSettings(
    backoff_base_s=0.05,
    backoff_max_s=0.4,
    backoff_reset_after_s=30.0,
    poll_interval_s=0.1,
    connect_timeout_s=2.0,
    command_timeout_s=2.0,
)
WAIT_S = 5.0  # for what should happen within a few back-offs
CONDSTORE = CAPABILITIES + " CONDSTORE"
IDLE_FLOOD = b"* 9 EXISTS\r\n* 3 FETCH (FLAGS (\\Seen))"  # sent again and again while idling


def inbox() -> FakeFolder:
    return FakeFolder(
        b"INBOX", [sample_message(i) for i in (1, 2, 3)], uidvalidity=42, highestmodseq=7
    )


def config(**options: object) -> FakeImapConfig:
    """The watcher tests' server: CONDSTORE, one INBOX, the password "good"; ``options`` on top."""
    base = FakeImapConfig(folders=[inbox()], password="good", capabilities=CONDSTORE)
    return dataclasses.replace(base, **options)  # type: ignore[arg-type]


@dataclass
class Harness:
    server: FakeImapServer
    published: list[tuple[str, float]] = field(default_factory=list)
    auth_failures: list[str] = field(default_factory=list)
    throttles: int = 0  # throttling answers the watcher recorded in the shared back-off
    misbehaviours: int = 0  # broken bounds the watcher recorded in the shared back-off

    def target(self, baseline: Snapshot | None = None, host: str = "127.0.0.1") -> WatchTarget:
        return WatchTarget(
            grant_id="g1",
            folder_id="f1",
            provider="generic",
            role="inbox",
            raw_name="INBOX",
            endpoint=Endpoint(host, self.server.port, "plain", "alice", timeout_s=2),
            baseline=baseline,
        )

    def watcher(
        self,
        password: str = "good",  # noqa: S107
        baseline: Snapshot | None = None,
        settings: ListenerSettings = SETTINGS,
        host: str = "127.0.0.1",
        guard: Callable[[Endpoint], Endpoint] | None = None,
    ) -> FolderWatcher:
        async def yes(_: WatchTarget) -> bool:
            return True

        async def nothing(_: WatchTarget) -> None:
            return None

        async def auth_failed(_: WatchTarget, message: str) -> None:
            self.auth_failures.append(message)

        def publish(ref: FolderRef, reason: str) -> None:
            self.published.append((reason, time.monotonic()))

        async def throttled(_: WatchTarget) -> float:
            self.throttles += 1
            return 30.0

        async def misbehaved(_: WatchTarget) -> float:
            self.misbehaviours += 1
            return 30.0

        ctx = WatchContext(
            settings=settings,
            publish=publish,
            acquire_slot=yes,
            release_slot=nothing,
            auth_failed=auth_failed,
            login_gate=asyncio.Semaphore(10),
            rng=random.Random(7),
            throttled=throttled,
            misbehaved=misbehaved,
        )
        return FolderWatcher(self.target(baseline, host), SecretStr(password), ctx, guard)

    def reasons(self) -> list[str]:
        return [r for r, _ in self.published]


def run(test: Callable[[Harness], Awaitable[None]], **config_options: object) -> None:
    with FakeImapServer(config(**config_options)) as server:

        async def main() -> None:
            await test(Harness(server))

        asyncio.run(main())


def test_idle_changes_are_published_once_per_notice() -> None:
    async def scenario(h: Harness) -> None:
        watcher = h.watcher()
        watcher.start()
        await wait_for_async(lambda: watcher.state is WatchState.IDLING, "idling", WAIT_S)
        assert h.reasons() == ["reconnect"]  # no baseline: the first connect reports
        h.server.push(b"* 4 EXISTS")
        h.server.push(b"* 1 RECENT")
        await wait_for_async(lambda: len(h.published) == 2, "two changes published", WAIT_S)
        h.server.push(b"* 2 FETCH (FLAGS (\\Seen) MODSEQ (9))")
        h.server.push(b"* OK Still here")
        h.server.push(b"* 3 EXPUNGE")
        await wait_for_async(lambda: len(h.published) >= 4, "four changes published", WAIT_S)
        await watcher.stop()
        assert h.reasons()[:4] == ["reconnect", "exists", "flags", "expunge"]
        assert h.server.command_names()[-2:] == ["DONE", "LOGOUT"]  # a clean goodbye
        assert watcher.state is WatchState.STOPPED

    run(scenario)


def test_a_response_with_a_literal_is_read_whole() -> None:
    async def scenario(h: Harness) -> None:
        watcher = h.watcher()
        watcher.start()
        await wait_for_async(lambda: watcher.state is WatchState.IDLING, "idling", WAIT_S)
        h.server.push(b"* 2 FETCH (FLAGS (\\Seen) X-LABELS {7}\r\nA\r\n * 9 EXISTS)")
        h.server.push(b"* 3 EXPUNGE")
        await wait_for_async(lambda: len(h.published) >= 3, "three changes published", WAIT_S)
        # the literal's bytes (which look like a line) were not taken for a response
        assert h.reasons()[:3] == ["reconnect", "flags", "expunge"]
        await watcher.stop()

    run(scenario)


def test_unchanged_folder_on_connect_is_not_published() -> None:
    async def scenario(h: Harness) -> None:
        same = Snapshot(uidvalidity=42, uidnext=4, exists=None, highestmodseq=7)
        watcher = h.watcher(baseline=same)
        watcher.start()
        await wait_for_async(lambda: watcher.state is WatchState.IDLING, "idling", WAIT_S)
        assert h.published == []
        await watcher.stop()

    run(scenario)


def test_bye_reconnects_and_reports_the_reconnect() -> None:
    async def scenario(h: Harness) -> None:
        watcher = h.watcher()
        watcher.start()
        await wait_for_async(lambda: watcher.state is WatchState.IDLING, "idling", WAIT_S)
        h.server.config.folders[0].highestmodseq = 8  # something changed while we were away
        h.server.push(b"* BYE Server shutting down")
        h.server.drop_all()
        await wait_for_async(
            lambda: watcher.connects == 2 and watcher.state is WatchState.IDLING,
            "idling again after a reconnect",
            WAIT_S,
        )
        assert h.reasons() == ["reconnect", "reconnect"]
        await watcher.stop()

    run(scenario)


def test_no_idle_capability_falls_back_to_polling() -> None:
    async def scenario(h: Harness) -> None:
        watcher = h.watcher()
        watcher.start()
        await wait_for_async(lambda: watcher.state is WatchState.POLLING, "polling", WAIT_S)
        h.server.pending_noop.append(b"* 5 EXISTS")
        await wait_for_async(lambda: "exists" in h.reasons(), "an exists change published", WAIT_S)
        assert "IDLE" not in h.server.command_names()
        assert h.server.command_names().count("NOOP") >= 1
        await watcher.stop()

    run(scenario, capabilities=CONDSTORE.replace(" IDLE", ""))


def test_a_server_that_accepts_then_drops_gets_no_reconnect_storm() -> None:
    async def scenario(h: Harness) -> None:
        watcher = h.watcher()
        watcher.start()
        await asyncio.sleep(2.0)  # a fixed window: count the logins in it
        await watcher.stop()
        # with 0.05 s doubling up to 0.4 s: about 0.05+0.1+0.2+0.4*n -> well under 10 logins;
        # a storm (reconnect at once) would log in hundreds of times
        assert 3 <= h.server.logins <= 10, h.server.logins

    run(scenario, hostile={"EXAMINE": Hostility("drop")})


def test_refused_login_is_reported_once_and_never_retried() -> None:
    async def scenario(h: Harness) -> None:
        watcher = h.watcher(password="wrong")
        watcher.start()
        await wait_for_async(
            lambda: watcher.state is WatchState.INVALID, "the grant invalid", WAIT_S
        )
        await asyncio.sleep(0.5)  # time for a retry that must not come
        assert h.server.logins == 1
        assert len(h.auth_failures) == 1
        assert "wrong" not in h.auth_failures[0]  # the message never carries the password
        assert not watcher.running

    run(scenario)


def test_a_bye_greeting_saying_too_many_connections_is_a_throttle() -> None:
    async def scenario(h: Harness) -> None:
        watcher = h.watcher()
        watcher.start()
        await wait_for_async(lambda: h.throttles >= 1, "a throttle recorded", WAIT_S)
        assert "Too many connections" in (watcher.last_error or "")
        assert not h.auth_failures  # not a reason to give the grant up
        await watcher.stop()

    run(scenario, greeting=Hostility("bye", b"Too many connections from your IP, try later"))


def test_a_throttling_bye_while_idling_is_recorded_and_a_plain_one_is_not() -> None:
    async def scenario(h: Harness) -> None:
        watcher = h.watcher()
        watcher.start()
        await wait_for_async(lambda: watcher.state is WatchState.IDLING, "idling", WAIT_S)
        h.server.push(b"* BYE Server shutting down")
        await wait_for_async(
            lambda: watcher.connects == 2 and watcher.state is WatchState.IDLING,
            "idling again after a reconnect",
            WAIT_S,
        )
        assert h.throttles == 0
        h.server.push(b"* BYE [UNAVAILABLE] Too many simultaneous connections")
        await wait_for_async(lambda: h.throttles == 1, "a throttle recorded", WAIT_S)
        await watcher.stop()

    run(scenario)


def test_a_flood_while_idling_costs_the_connection_and_a_growing_back_off(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Reset-after is tiny: before issue 9 a connection that had been up that long reset the
    # back-off, so a flooding server was reconnected to at once, again and again.
    flooded = SETTINGS.model_copy(update={"backoff_reset_after_s": 0.001, "max_untagged": 100})

    async def scenario(h: Harness) -> None:
        watcher = h.watcher(settings=flooded)
        watcher.start()
        await wait_for_async(lambda: watcher.limit_breaches >= 4, "four broken bounds", 30)
        assert watcher.state in (WatchState.BACKOFF, WatchState.CONNECTING, WatchState.IDLING)
        assert "more than 100 untagged responses" in (watcher.last_error or "")
        assert h.misbehaviours >= 4  # workers see the account back off too
        assert h.throttles == 0  # not a throttle: the provider is not slowed down
        await watcher.stop()

    with caplog.at_level(logging.WARNING, logger="pipeline.listener.idle"):
        run(scenario, hostile={"IDLE": Hostility("flood", IDLE_FLOOD, idling=True)})
    breaches = [r.getMessage() for r in caplog.records if "the server misbehaved" in r.message]
    attempts = [int(a) for a in re.findall(r"\(attempt (\d+)\)", " ".join(breaches))]
    assert attempts[:4] == [1, 2, 3, 4], breaches  # never reset: the delay keeps growing
    assert all("grant=g1 folder=f1" in b and "a flood" in b for b in breaches)


def test_connecting_has_one_deadline_for_every_step_together() -> None:
    # every answer comes 0.5 s late: each step is well within its own 5 s, the whole is not
    slow = SETTINGS.model_copy(update={"command_timeout_s": 5.0, "session_timeout_s": 1.0})

    async def scenario(h: Harness) -> None:
        watcher = h.watcher(settings=slow)
        watcher.start()
        await wait_for_async(lambda: watcher.limit_breaches >= 1, "a broken bound", 30)
        assert "connect, log in and open the folder within 1 s" in (watcher.last_error or "")
        assert watcher.connects == 0
        await watcher.stop()

    run(scenario, answer_delay_s=0.5)


def test_reconnecting_to_a_flooding_server_holds_no_more_memory_each_time() -> None:
    # Seen: the 3.3 GB came back on every reconnect. Python's allocations made by the
    # listener's code are traced (tracemalloc): from the 5th to the 30th flood, what they hold
    # must not grow.
    flooded = SETTINGS.model_copy(
        update={"backoff_base_s": 0.001, "backoff_max_s": 0.002, "max_untagged": 200}
    )

    async def held(h: Harness) -> int:
        # The least of many samples: buffers of the flood in flight (the fake server's writes,
        # the reader's) come and go within a connection; what leaks stays in every sample.
        # Only what the listener's code allocated (anywhere in the stack): threads other tests
        # left behind allocate in this process too, and the full suite once added 256 KB.
        mine = [tracemalloc.Filter(True, "*/pipeline/listener/*", all_frames=True)]
        samples = []
        for _ in range(20):
            h.published.clear()
            gc.collect()
            snapshot = tracemalloc.take_snapshot().filter_traces(mine)
            samples.append(sum(stat.size for stat in snapshot.statistics("filename")))
            await asyncio.sleep(0.005)
        return min(samples)

    async def scenario(h: Harness) -> None:
        watcher = h.watcher(settings=flooded)
        watcher.start()
        await wait_for_async(lambda: watcher.limit_breaches >= 5, "five floods", 120)
        held_at_5 = await held(h)
        at_5 = watcher.limit_breaches
        await wait_for_async(lambda: watcher.limit_breaches >= at_5 + 25, "25 more floods", 240)
        grown = await held(h) - held_at_5
        await watcher.stop()
        assert grown < 128 * 1024, f"{grown} bytes more after 25 more floods"

    tracemalloc.start(8)  # deep enough to see the listener's frames under asyncio's
    try:
        flood = b"\r\n".join([IDLE_FLOOD] * 100)
        run(scenario, hostile={"IDLE": Hostility("flood", flood, idling=True)})
    finally:
        tracemalloc.stop()


# --- a server a user named: checked again before every connection ------------------------------


def test_a_user_named_server_is_reached_at_the_address_its_check_returned() -> None:
    # The host name exists nowhere but in the guard: logging in proves the connection went to
    # the address the check pinned, not to a second lookup of the name.
    checked: list[str] = []

    def guard(endpoint: Endpoint) -> Endpoint:
        checked.append(endpoint.host)
        return dataclasses.replace(endpoint, address="127.0.0.1")

    async def scenario(h: Harness) -> None:
        watcher = h.watcher(host="imap.only-in-the-guard.test", guard=guard)
        watcher.start()
        await wait_for_async(lambda: watcher.state is WatchState.IDLING, "idling", WAIT_S)
        h.server.drop_all()  # a reconnect is checked again
        await wait_for_async(
            lambda: h.server.logins == 2 and watcher.state is WatchState.IDLING,
            "a second login, idling",
            WAIT_S,
        )
        await watcher.stop()
        assert checked == ["imap.only-in-the-guard.test"] * 2

    run(scenario)


def test_a_user_named_server_that_turned_internal_is_never_connected_to() -> None:
    refusals: list[str] = []

    def guard(endpoint: Endpoint) -> Endpoint:
        refusals.append(endpoint.host)
        raise ImapConnectError(f"The IMAP server {endpoint.host} cannot be used.")

    async def scenario(h: Harness) -> None:
        watcher = h.watcher(guard=guard)  # 127.0.0.1: the fake server would answer
        watcher.start()
        # refused, backed off, refused again
        await wait_for_async(lambda: len(refusals) >= 2, "two refusals", WAIT_S)
        await watcher.stop()
        assert h.server.commands == [] and h.server.logins == 0
        assert "cannot be used" in (watcher.last_error or "")

    run(scenario)
