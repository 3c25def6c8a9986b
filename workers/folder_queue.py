"""How many folder syncs one grant has queued at once: a sliding window per grant.

A grant's folder discovery (and reconciliation) used to enqueue one task per folder at once: a
server listing 10,000 folders put 10,009 tasks ahead of every other grant's new mail. Now at
most ``IMAP_PIPELINE_MAX_FOLDER_TASKS_PER_GRANT`` are queued; the others wait, most important
first, in a Redis list of the grant (:func:`pipeline.redis.folders_waiting_key`), and every
folder sync that ends its folder's run queues the next one::

    discovery ──► first N folder syncs ──► queue        (Inbox, Sent, roles first)
             └──► the rest ──► Redis list of the grant
    a folder sync ends ──► LPOP one ──► queue

The list is only an order of work: losing it (Redis flushed, a task lost) delays folders,
never loses them. Reconciliation finds folders still ``pending`` after its stall time and
queues them again, at most N per grant and run; the next discovery rebuilds the list. The
folders a poll or a UIDVALIDITY check finds changed go the same way (N now, the rest after the
waiting ones).
"""

from __future__ import annotations

from collections.abc import Sequence

import redis

from pipeline.redis import folders_waiting_key
from workers import enqueue

WAITING_TTL_S = 24 * 3600  # a list nobody drains (grant removed, worker fleet gone) expires


def queue_folders(
    r: redis.Redis[bytes],
    grant_id: str,
    provider: str,
    folder_ids: Sequence[str],
    at_once: int,
    *,
    replace: bool = True,
) -> int:
    """Queue syncs of ``folder_ids`` (most important first), at most ``at_once`` now; the rest
    replace the grant's waiting list (a discovery: the complete plan), or join its end
    (``replace=False``: folders a poll found changed). Returns how many were queued now."""
    now, later = list(folder_ids[:at_once]), list(folder_ids[at_once:])
    key = folders_waiting_key(grant_id)
    pipe = r.pipeline(transaction=True)
    if replace:
        pipe.delete(key)
    if later:
        pipe.rpush(key, *later)
        pipe.expire(key, WAITING_TTL_S)
    pipe.execute()
    for folder_id in now:
        enqueue.sync_folder(grant_id, folder_id, provider)
    return len(now)


def queue_next(r: redis.Redis[bytes], grant_id: str, provider: str) -> str | None:
    """A folder sync of the grant ended: queue the next waiting folder, if any."""
    waiting = r.lpop(folders_waiting_key(grant_id))
    if not isinstance(waiting, bytes):
        return None
    folder_id = waiting.decode()
    enqueue.sync_folder(grant_id, folder_id, provider)
    return folder_id


def waiting(r: redis.Redis[bytes], grant_id: str) -> int:
    """How many folders of the grant wait for a slot."""
    return int(r.llen(folders_waiting_key(grant_id)))
