"""Coalescing of folder-changed events and the small pure helpers of the listener."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable

import pytest

from pipeline.config.listener import ListenerSettings
from pipeline.imap.responses import Change, Snapshot, classify
from pipeline.listener.events import ChangePublisher, FolderRef
from pipeline.listener.idle import IDLE_RENEW_MAX_S, idle_renew_s, reconnect_delay
from pipeline.listener.leases import fair_share
from pipeline.presets import PRESETS

INBOX = FolderRef("g1", "f1", "generic")
SENT = FolderRef("g1", "f2", "generic")


def run_publisher(
    scenario: Callable[[ChangePublisher, list[FolderRef]], Awaitable[None]],
    *,
    debounce_s: float = 0.2,
    fail_first: int = 0,
) -> None:
    """Run ``scenario`` against a publisher whose enqueues land in ``sent`` (the first
    ``fail_first`` fail); it needs nothing else: the broker is the one durable record."""
    failures = [fail_first]

    async def main() -> None:
        sent: list[FolderRef] = []

        def enqueue(grant_id: str, folder_id: str, provider: str) -> None:
            if failures[0] > 0:
                failures[0] -= 1
                raise ConnectionError("broker down")
            sent.append(FolderRef(grant_id, folder_id, provider))

        publisher = ChangePublisher(enqueue, debounce_s=debounce_s)
        task = asyncio.get_running_loop().create_task(publisher.run())
        try:
            await scenario(publisher, sent)
        finally:
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task

    asyncio.run(main())


def test_first_change_is_sent_at_once_and_a_burst_folds_into_one_more() -> None:
    async def scenario(publisher: ChangePublisher, sent: list[FolderRef]) -> None:
        publisher.folder_changed(INBOX, "exists")
        await asyncio.sleep(0.05)
        assert sent == [INBOX]  # no added latency for the first change
        for _ in range(500):
            publisher.folder_changed(INBOX, "exists")
        await asyncio.sleep(0.05)
        assert sent == [INBOX]  # the rest waits for the window to close
        await asyncio.sleep(0.3)
        assert sent == [INBOX, INBOX]
        assert publisher.stats.changes == 501
        assert publisher.stats.enqueued == 2

    run_publisher(scenario)


def test_folders_are_coalesced_independently() -> None:
    async def scenario(publisher: ChangePublisher, sent: list[FolderRef]) -> None:
        publisher.folder_changed(INBOX, "exists")
        publisher.folder_changed(SENT, "flags")
        await asyncio.sleep(0.05)
        assert sorted(r.folder_id for r in sent) == ["f1", "f2"]

    run_publisher(scenario)


def test_a_failed_enqueue_is_retried() -> None:
    async def scenario(publisher: ChangePublisher, sent: list[FolderRef]) -> None:
        publisher.folder_changed(INBOX, "exists")
        await asyncio.sleep(0.1)
        assert sent == []
        assert publisher.stats.failed == 1
        await asyncio.sleep(1.3)  # first retry after 1 s
        assert sent == [INBOX]

    run_publisher(scenario, fail_first=1)


def test_flush_sends_what_waits_for_its_window() -> None:
    async def scenario(publisher: ChangePublisher, sent: list[FolderRef]) -> None:
        publisher.folder_changed(INBOX, "exists")
        await asyncio.sleep(0.05)
        publisher.folder_changed(INBOX, "exists")
        await publisher.flush(2.0)
        assert sent == [INBOX, INBOX]

    run_publisher(scenario, debounce_s=60)


@pytest.mark.parametrize(
    ("line", "change"),
    [
        (b"* 12 EXISTS", Change.EXISTS),
        (b"* 3 EXPUNGE", Change.EXPUNGE),
        (b"* VANISHED (EARLIER) 1:3", Change.EXPUNGE),
        (b"* VANISHED 7", Change.EXPUNGE),
        (b"* 2 FETCH (FLAGS (\\Seen) MODSEQ (12))", Change.FLAGS),
        (b"* 1 RECENT", Change.NONE),
        (b"* OK Still here", Change.NONE),
        (b"* BYE IMAP session state is inconsistent", Change.BYE),
        (b"* bye server going down", Change.BYE),
    ],
)
def test_classify(line: bytes, change: Change) -> None:
    assert classify(line) is change


def test_snapshot_proves_nothing_without_condstore() -> None:
    with_modseq = Snapshot(1, 10, 5, 99)
    assert with_modseq.proves_unchanged_since(Snapshot(1, 10, None, 99))
    assert not with_modseq.proves_unchanged_since(Snapshot(1, 11, 5, 99))
    assert not with_modseq.proves_unchanged_since(Snapshot(1, 10, 5, 98))
    assert not with_modseq.proves_unchanged_since(Snapshot(2, 10, 5, 99))
    assert not with_modseq.proves_unchanged_since(Snapshot(1, 10, 4, 99))
    assert not with_modseq.proves_unchanged_since(None)
    no_modseq = Snapshot(1, 10, 5, None)
    assert not no_modseq.proves_unchanged_since(Snapshot(1, 10, 5, None))


def test_idle_is_renewed_before_every_providers_limit() -> None:
    rng = random.Random(1)
    for name, preset in PRESETS.items():
        for _ in range(50):
            renew = idle_renew_s(name, rng)
            assert renew <= preset.idle_renew_s
            assert renew <= IDLE_RENEW_MAX_S < 29 * 60
            assert renew >= 0.9 * min(preset.idle_renew_s, IDLE_RENEW_MAX_S)
    assert idle_renew_s("yahoo", rng) < 3 * 60  # Yahoo drops IDLE after about 3 minutes


def test_reconnect_delay_grows_jittered_and_capped() -> None:
    rng = random.Random(3)
    for attempt in range(40):
        ceiling = min(300.0, 1.0 * 2**attempt)
        delays = [reconnect_delay(attempt, 1.0, 300.0, rng) for _ in range(20)]
        assert all(ceiling / 2 <= d <= ceiling for d in delays)
        assert len(set(delays)) > 1  # jittered: listeners do not reconnect in lockstep


def test_fair_share() -> None:
    assert fair_share(1000, 1) == 1000
    assert fair_share(1000, 3) == 334
    assert fair_share(5, 2) == 3
    assert fair_share(0, 2) == 0
    assert fair_share(7, 0) == 7


def test_settings_refuse_a_renewal_slower_than_half_the_lease() -> None:
    with pytest.raises(ValueError, match="lease_renew_s"):
        ListenerSettings(lease_ttl_s=10, lease_renew_s=6)
    assert ListenerSettings().lease_ttl_s == 15.0
