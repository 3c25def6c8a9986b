"""The one connection manager of an IMAP account's sessions: every session of the listener, the
workers and the API holds a slot of the account (:mod:`pipeline.limits.slots`: how a provider's
cap is shared between IDLE, API requests and bulk sync, with priorities and pre-emption), and
the sessions of a worker or an API process live here, in a :class:`SessionPool`.

A session's life in a pool::

    slot() ── login ──► admit() ── busy ──► give_back(healthy)
                          ▲                     │ nobody waits for the slot, none pooled yet
                          │                     ▼
                        take() ◄──────────── pooled (slot still counted, renewed for
                                                │     linger_s + LINGER_GRACE_S)
                                                ▼ linger over, or a want of the account
                                             closed by the reaper: the slot is released

A bulk task holds its slot only while it runs: its session goes back to this process's pool
when the task ends, where it may stay open, still counted, for at most ``BULK_LINGER_S`` (the
next chunk of the same grant reuses it without a new login) and only while neither the
listener nor the API asks for a slot of that account; an API session stays up to
``INTERACTIVE_LINGER_S``. Bulk sync also leaves the account's last login tokens
(``BULK_LOGIN_SPARE``) to the listener's and the API's next logins.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from dataclasses import dataclass

from pipeline.errors import ImapError, ServiceError
from pipeline.imap.client import ImapSession
from pipeline.limits.slots import ConnectionSlots, Priority, new_holder

log = logging.getLogger(__name__)

INTERACTIVE_WAIT_S = 5.0  # an API request waits this long for a slot, then gets a 429
REAPER_TICK_S = 0.25  # how often a process checks whether its pooled sessions are wanted
CHECK_AFTER_S = 15.0  # a pooled session idle longer than this gets a NOOP before reuse
BULK_LINGER_S = 5.0  # a sync task's session stays pooled this long for the next chunk
INTERACTIVE_LINGER_S = 30.0  # an API session stays pooled this long for the next request
BULK_SLOT_TTL_S = 180.0  # renewed at every batch (a batch is far shorter); lapses after a crash
INTERACTIVE_SLOT_TTL_S = 120.0  # one request's IMAP work (bounded by its commands' deadlines)
LINGER_GRACE_S = 5.0  # a pooled slot outlives the linger by this much if its process dies
# login tokens bulk sync leaves while a listener is alive: the listener's two IDLE logins (Inbox
# and Sent, at once) and an API login. With 2, a listener that logged in after the sync's last
# chunks took both and the API's next download waited a token's refill (6 s on generic) past its
# 3 s wait: 429 (seen in CI, test_connection_priorities)
BULK_LOGIN_SPARE = 3.0
BULK_LOGIN_SPARE_UNWATCHED = 1.0  # no listener is alive: an API login only


# --- pooled sessions of a worker or API process ---------------------------------------------


@dataclass
class _Pooled:
    imap: ImapSession
    holder: str
    since: float


class NoSlot(Exception):
    """Every slot of the account this priority may use is taken (the want flag is raised)."""

    def __init__(self, cap: int) -> None:
        super().__init__(f"no IMAP connection of the account is free now (cap {cap})")
        self.cap = cap


class SessionPool:
    """The sessions of one process (a worker or the API) for one priority, with their slots.

    A session is *busy* from :meth:`take` or :meth:`admit` until :meth:`give_back` (or its
    close), then *pooled* for up to ``linger_s`` while its slot stays counted; a reaper thread
    closes a pooled session (releasing its slot) at the end of the linger or as soon as
    somebody waits for a slot of its account. Thread-safe; the reaper starts in the process
    that first pools a session (so it survives Celery's fork).

    Without ``slots`` (no Redis) nothing is counted.
    """

    def __init__(
        self, slots: ConnectionSlots | None, priority: Priority, *, linger_s: float
    ) -> None:
        self._slots = slots
        self.priority = priority
        self.linger_s = linger_s
        self._busy_ttl_s = BULK_SLOT_TTL_S if priority is Priority.BULK else INTERACTIVE_SLOT_TTL_S
        # A pooled bulk session is not closed for another bulk task of the account: that task
        # comes back later anyway (rescheduled), by when the linger has ended, and closing it
        # only made the next chunk here log in again (with the login budget, seconds).
        self._gives_way_above = Priority.BULK if priority is Priority.BULK else None
        self._lock = threading.Lock()
        self._pooled: dict[str, _Pooled] = {}
        self._busy: dict[int, tuple[str, str]] = {}  # id(imap) -> (grant id, holder)
        self._reaper_pid: int | None = None
        self._stop = threading.Event()

    # --- a session's life -------------------------------------------------------------------
    def take(self, grant_id: str) -> ImapSession | None:
        """The account's pooled session if it still answers (NOOP after a quiet spell), busy
        again; None when there is none."""
        with self._lock:
            pooled = self._pooled.pop(grant_id, None)
            if pooled is not None:
                self._busy[id(pooled.imap)] = (grant_id, pooled.holder)
        if pooled is None:
            return None
        try:
            if time.monotonic() - pooled.since >= CHECK_AFTER_S:
                pooled.imap.noop()
            if self._slots is not None:
                self._slots.renew(grant_id, pooled.holder, self._busy_ttl_s)
        except (ImapError, ServiceError):
            pooled.imap.close()
            return None
        return pooled.imap

    def slot(self, grant_id: str, cap: int, *, wait_s: float = 0.0) -> str:
        """A new slot for a session about to log in; returns its holder id.

        Raises:
            NoSlot: None free for this priority within ``wait_s`` (the want flag is raised,
                so pooled sessions and lower priorities make room).
            ServiceError: Redis failed.
        """
        holder = new_holder(self.priority)
        if self._slots is not None and not self._slots.wait(
            grant_id, holder, cap, self._busy_ttl_s, wait_s
        ):
            raise NoSlot(cap)
        return holder

    def unslot(self, grant_id: str, holder: str) -> None:
        """Give back a slot from :meth:`slot` whose login did not happen."""
        if self._slots is not None:
            with contextlib.suppress(ServiceError):
                self._slots.release(grant_id, holder)

    def admit(self, grant_id: str, holder: str, imap: ImapSession) -> ImapSession:
        """Tie a freshly logged-in session to its slot: busy now, the slot goes when it closes."""
        with self._lock:
            self._busy[id(imap)] = (grant_id, holder)
        imap.on_close = lambda: self._closed(imap)
        return imap

    def keep_alive(self, imap: ImapSession) -> bool:
        """Renew a busy session's slot; True when a higher priority waits for a slot of its
        account (a bulk task should stop at this point and continue in a new task)."""
        with self._lock:
            entry = self._busy.get(id(imap))
        if entry is None or self._slots is None:
            return False
        grant_id, holder = entry
        self._slots.renew(grant_id, holder, self._busy_ttl_s)
        return self.priority is Priority.BULK and self._slots.preempted(grant_id)

    def give_back(self, imap: ImapSession, *, healthy: bool) -> None:
        """End a session's use: pooled (a healthy one, if the account has none pooled and
        nobody waits for its slot), else closed."""
        with self._lock:
            entry = self._busy.get(id(imap))
        if entry is None or not healthy or imap.broken or self.linger_s <= 0:
            imap.close()
            return
        grant_id, holder = entry
        try:
            if self._slots is not None:
                if self._slots.wanted([grant_id], self._gives_way_above):
                    imap.close()
                    return
                self._slots.renew(grant_id, holder, self.linger_s + LINGER_GRACE_S)
        except ServiceError:
            imap.close()
            return
        with self._lock:
            if grant_id in self._pooled:
                spare: ImapSession | None = imap
            else:
                spare = None
                self._busy.pop(id(imap), None)
                self._pooled[grant_id] = _Pooled(imap, holder, time.monotonic())
        if spare is not None:
            spare.close()
            return
        self._ensure_reaper()

    def forget(self, grant_id: str) -> None:
        """Close the account's pooled session (its settings changed, or it was deleted)."""
        with self._lock:
            pooled = self._pooled.pop(grant_id, None)
        if pooled is not None:
            self._close_pooled(grant_id, pooled)

    def close_all(self) -> None:
        """Close every pooled session (process shutdown) and stop the reaper."""
        self._stop.set()
        with self._lock:
            pooled, self._pooled = self._pooled, {}
        for grant_id, entry in pooled.items():
            self._close_pooled(grant_id, entry)

    def pooled(self) -> list[str]:
        """Grant ids with a pooled session (for tests and status)."""
        with self._lock:
            return sorted(self._pooled)

    # --- plumbing ---------------------------------------------------------------------------
    def _closed(self, imap: ImapSession) -> None:
        with self._lock:
            entry = self._busy.pop(id(imap), None)
        if entry is not None:
            self.unslot(*entry)

    def _close_pooled(self, grant_id: str, pooled: _Pooled) -> None:
        with self._lock:
            self._busy[id(pooled.imap)] = (grant_id, pooled.holder)  # so close releases it
        pooled.imap.close()

    def reap(self) -> None:
        """Close pooled sessions past their linger or wanted by somebody (the reaper's tick)."""
        with self._lock:
            grants = list(self._pooled)
        if not grants:
            return
        wanted: set[str] = set()
        if self._slots is not None:
            try:
                wanted = self._slots.wanted(grants, self._gives_way_above)
            except ServiceError:
                wanted = set(grants)  # cannot tell: do not keep a slot someone may need
        now = time.monotonic()
        for grant_id in grants:
            with self._lock:
                pooled = self._pooled.get(grant_id)
                if pooled is None or (
                    grant_id not in wanted and now - pooled.since < self.linger_s
                ):
                    continue
                del self._pooled[grant_id]
            self._close_pooled(grant_id, pooled)

    def _ensure_reaper(self) -> None:
        pid = os.getpid()
        with self._lock:
            if self._reaper_pid == pid:
                return
            self._reaper_pid = pid
        self._stop.clear()
        thread = threading.Thread(target=self._reaper, name="imap-pool-reaper", daemon=True)
        thread.start()

    def _reaper(self) -> None:
        while not self._stop.wait(REAPER_TICK_S):
            try:
                self.reap()
            except Exception:  # the reaper must outlive a bug in one tick
                log.exception("closing pooled IMAP sessions failed")
