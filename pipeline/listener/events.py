""" "Folder changed" events: from an IDLE notice to a durable, coalesced sync request.

The design, and why:

1. **The broker is the durable queue.** A change becomes a Celery message
   (:meth:`pipeline.jobs.Jobs.sync_folder`: ``grant_id, folder_id, provider``) on the
   provider's queue (``sync.<provider>``). An event sent while no worker runs waits in the
   broker until one starts; nothing in the listener has to remember it. The sync task itself
   coalesces (a per-folder lock and a "dirty" flag: :class:`pipeline.coalesce.Coalesced`), so
   a duplicate enqueue costs one cheap task.
2. **Coalesced per folder before it reaches the broker.** The first change of a folder is sent
   at once (no added latency); changes within the next ``debounce_s`` (default 1 s) are folded
   into one more send at the end of that window. A burst of 500 APPENDs over a few seconds
   becomes a handful of enqueues, never 500. This debounce is kept in memory, not in Redis
   like the other coalescing (:mod:`pipeline.coalesce`): one listener process owns a folder's
   connection, so there is no one to share it with, and a Redis round trip per notice is what
   it exists to save.
3. **The broker's message is the only record.** A change whose enqueue is lost with its
   process (killed before the send) is found again from Postgres, the truth: the folder's
   next connect, in whichever listener takes the grant's lease, compares its EXAMINE
   snapshot with what the last sync stored and publishes "reconnect" when they differ.
4. **Failures retry.** A failed enqueue is retried with a growing delay (up to
   :data:`RETRY_MAX_S`); the folder stays marked pending meanwhile.

Enqueues run in one worker thread (Celery's producer is blocking), so the event loop that holds
thousands of IDLE connections never waits on the broker.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
from collections.abc import Callable
from dataclasses import dataclass, field

from pipeline.redis import BROKER_TIMEOUT_S

log = logging.getLogger(__name__)

ENQUEUE_TIMEOUT_S = BROKER_TIMEOUT_S  # one send_task: as long as the broker's own socket timeout
RETRY_BASE_S = 1.0  # first retry of a failed enqueue
RETRY_MAX_S = 60.0  # retries of a failed enqueue never wait longer than this

Enqueue = Callable[[str, str, str], None]
"""``(grant_id, folder_id, provider)`` -> None; raises on failure. Blocking is fine."""


@dataclass(frozen=True)
class FolderRef:
    """Which folder changed, and where its sync work goes."""

    grant_id: str
    folder_id: str
    provider: str


@dataclass
class _FolderState:
    last_sent: float = float("-inf")  # loop time of the last send that started
    queued: bool = False  # waiting in the send queue: covers any change seen now
    timer: asyncio.TimerHandle | None = None  # a send scheduled for the end of the window
    failures: int = 0


@dataclass
class PublisherStats:
    """Counters for tests, benchmarks and the status line."""

    changes: int = 0  # folder-changed notices received
    enqueued: int = 0  # sync requests handed to the broker
    failed: int = 0  # enqueue attempts that failed (and were retried)
    by_reason: dict[str, int] = field(default_factory=dict)


class ChangePublisher:
    """Turns folder-changed notices into coalesced sync enqueues.

    Call :meth:`folder_changed` from the event loop (it never blocks); run :meth:`run` as a
    task; call :meth:`flush` on shutdown to send what is still waiting for its window.
    """

    def __init__(
        self,
        enqueue: Enqueue,
        *,
        debounce_s: float,
        on_enqueued: Callable[[FolderRef], None] | None = None,
    ) -> None:
        self._enqueue = enqueue
        self._debounce_s = debounce_s
        self._on_enqueued = on_enqueued
        self._states: dict[FolderRef, _FolderState] = {}
        self._ready: asyncio.Queue[FolderRef] = asyncio.Queue()
        self._executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="listener-enqueue"
        )
        self.stats = PublisherStats()

    # --- intake -------------------------------------------------------------------------------
    def folder_changed(self, ref: FolderRef, reason: str) -> None:
        """Note that ``ref`` changed (``reason``: exists, expunge, flags, reconnect...)."""
        self.stats.changes += 1
        self.stats.by_reason[reason] = self.stats.by_reason.get(reason, 0) + 1
        state = self._states.setdefault(ref, _FolderState())
        if state.queued or state.timer is not None:
            return  # a send is already due and will cover this change
        loop = asyncio.get_running_loop()
        wait = state.last_sent + self._debounce_s - loop.time()
        if wait <= 0:
            self._queue(ref, state)
        else:
            state.timer = loop.call_later(wait, self._window_closed, ref)

    def forget(self, grant_id: str) -> None:
        """Drop the debounce state of a grant no longer watched here (pending sends still go)."""
        for ref in [r for r in self._states if r.grant_id == grant_id]:
            state = self._states[ref]
            if not state.queued and state.timer is None:
                del self._states[ref]

    def _window_closed(self, ref: FolderRef) -> None:
        state = self._states.setdefault(ref, _FolderState())
        state.timer = None
        self._queue(ref, state)

    def _queue(self, ref: FolderRef, state: _FolderState) -> None:
        state.queued = True
        self._ready.put_nowait(ref)

    # --- sending ------------------------------------------------------------------------------
    async def run(self) -> None:
        """Send queued folders, one at a time, until cancelled."""
        try:
            while True:
                ref = await self._ready.get()
                await self._send_one(ref)
        finally:
            self._executor.shutdown(wait=False, cancel_futures=True)

    async def flush(self, timeout_s: float) -> None:
        """Send every folder that is due or waiting for its window (shutdown), within time."""
        for ref, state in list(self._states.items()):
            if state.timer is not None:
                state.timer.cancel()
                state.timer = None
                self._queue(ref, state)
        try:
            async with asyncio.timeout(timeout_s):
                while not self._ready.empty():
                    await self._send_one(self._ready.get_nowait())
        except TimeoutError:
            log.warning("listener shutdown: %d folder changes not enqueued", self._ready.qsize())

    async def _send_one(self, ref: FolderRef) -> None:
        loop = asyncio.get_running_loop()
        state = self._states.setdefault(ref, _FolderState())
        state.queued = False
        state.last_sent = loop.time()
        try:
            await asyncio.wait_for(
                loop.run_in_executor(
                    self._executor, self._enqueue, ref.grant_id, ref.folder_id, ref.provider
                ),
                ENQUEUE_TIMEOUT_S,
            )
        except Exception as exc:  # the broker's errors are many; all mean "retry later"
            self.stats.failed += 1
            state.failures += 1
            delay = min(RETRY_MAX_S, RETRY_BASE_S * 2 ** (state.failures - 1))
            log.warning(
                "sync enqueue failed for grant=%s folder=%s (%s); retrying in %.0f s",
                ref.grant_id,
                ref.folder_id,
                type(exc).__name__,
                delay,
                extra={"grant_id": ref.grant_id, "folder_id": ref.folder_id},
            )
            if state.timer is None:
                state.timer = loop.call_later(delay, self._window_closed, ref)
            return
        state.failures = 0
        self.stats.enqueued += 1
        log.debug(
            "sync enqueued for grant=%s folder=%s",
            ref.grant_id,
            ref.folder_id,
            extra={"grant_id": ref.grant_id, "folder_id": ref.folder_id},
        )
        if self._on_enqueued is not None:
            self._on_enqueued(ref)
