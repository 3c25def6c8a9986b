"""When a poll last saw each folder's UIDVALIDITY, in Redis, so the sweep need not ask again.

``imap-pipeline:uidvalidity-looked:<grant_id>``  (hash)
    field: folder id; value: unix seconds of the poll's STATUS (which carries UIDVALIDITY, and
    counted it for the stop rule: :func:`pipeline.maintenance.sweep.count_seen_uidvalidity`).
    Expires ``LOOK_TTL_FACTOR`` sweep intervals after the last write.

A poll batch writes the looks of all its grants in one pipelined round trip. Best effort: a
look that Redis lost only means the sweep asks that folder itself (:func:`recent_looks` then
says "not looked at"), never that a folder goes unchecked.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence

import redis
from redis.exceptions import RedisError

from pipeline.redis import uidvalidity_looked_key

log = logging.getLogger(__name__)

LOOK_TTL_FACTOR = 2  # a look is kept two sweep intervals: the sweep asks about one interval


def record_looks(
    client: redis.Redis[bytes],
    looks: Mapping[str, Sequence[str]],
    *,
    interval_s: float,
    at: float | None = None,
) -> None:
    """Note that the folders ``looks[grant_id]`` had their UIDVALIDITY seen at ``at`` (now)."""
    stamp = f"{time.time() if at is None else at:.0f}"
    ttl = max(1, int(interval_s * LOOK_TTL_FACTOR))
    pipe = client.pipeline(transaction=False)
    for grant_id, folder_ids in looks.items():
        if folder_ids:
            pipe.hset(uidvalidity_looked_key(grant_id), mapping=dict.fromkeys(folder_ids, stamp))
            pipe.expire(uidvalidity_looked_key(grant_id), ttl)
    try:
        pipe.execute()
    except (RedisError, OSError) as exc:
        log.warning("could not record %d grants' UIDVALIDITY looks (%s)", len(looks), exc)


def recent_looks(client: redis.Redis[bytes], grant_id: str, since: float) -> frozenset[str]:
    """The folders of a grant whose UIDVALIDITY a poll saw at ``since`` (unix seconds) or later;
    empty when Redis does not answer."""
    return recent_looks_of(client, [grant_id], since)[grant_id]


def recent_looks_of(
    client: redis.Redis[bytes], grant_ids: Sequence[str], since: float
) -> dict[str, frozenset[str]]:
    """:func:`recent_looks` of several grants in one round trip, by grant id."""
    pipe = client.pipeline(transaction=False)
    for grant_id in grant_ids:
        pipe.hgetall(uidvalidity_looked_key(grant_id))
    try:
        replies: list[dict[bytes, bytes]] = pipe.execute()
    except (RedisError, OSError):
        return dict.fromkeys(grant_ids, frozenset())
    return {g: _since(raw, since) for g, raw in zip(grant_ids, replies, strict=True)}


def _since(raw: dict[bytes, bytes], since: float) -> frozenset[str]:
    out = set()
    for folder_id, value in raw.items():
        try:
            if float(value) >= since:
                out.add(folder_id.decode())
        except ValueError:
            continue
    return frozenset(out)
