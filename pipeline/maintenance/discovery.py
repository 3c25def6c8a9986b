"""When a poll last ran a grant's folder discovery, in Redis, so no separate task logs in for it.

``imap-pipeline:folders-discovered:<grant_id>``  (string)
    unix seconds of the last folder discovery a poll ran on its session (a ``LIST`` on the
    session the poll logged in for anyway). Expires ``DISCOVERED_TTL_FACTOR`` discovery
    intervals after the last write.

A minute's poll of an idle grant holds a logged-in session; the discovery every
``folder_discovery_interval_s`` needs one for a single LIST. So the poll runs the discovery
when it is due (:func:`claim_discovery`: at most one poll per interval wins the claim), and the
planner and the per-grant discovery task skip grants a poll discovered within the interval
(:func:`discovered_since`): an idle grant's discovery costs one LIST on the poll's session
instead of a task, a login and a logout. A grant that is not polled (its polls fail, Redis lost
the stamp) gets the per-grant discovery task as before. Best effort both ways: when Redis does
not answer, the poll does not discover and the task does.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

import redis
from redis.exceptions import RedisError

from pipeline.redis import folders_discovered_key

log = logging.getLogger(__name__)

DISCOVERED_TTL_FACTOR = 2  # a stamp is kept two intervals: readers look back one
MGET_BATCH = 1000  # stamps read per round trip (a planner reads every grant's)

# KEYS: the grant's stamp. ARGV: now (s), due after (s), ttl (s). 1: claimed (stamp written).
CLAIM_LUA = """
local last = tonumber(redis.call('GET', KEYS[1]))
if last and tonumber(ARGV[1]) - last < tonumber(ARGV[2]) then
  return 0
end
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[3])
return 1
"""


def due_after_s(interval_s: float, poll_interval_s: float) -> float:
    """How old a poll's last discovery must be for the next poll to run one: the interval less
    half a poll interval, so the poll nearest each interval's end wins (polls of a grant run at
    a fixed offset: every ``interval_s`` when it is a multiple of ``poll_interval_s``)."""
    return max(interval_s - poll_interval_s / 2, poll_interval_s / 2)


def claim_discovery(
    client: redis.Redis[bytes],
    grant_id: str,
    *,
    interval_s: float,
    poll_interval_s: float,
    now: float | None = None,
) -> bool:
    """True when a poll of ``grant_id`` should run its folder discovery now (stamped now);
    False when a poll ran one lately, or Redis does not answer (the discovery task does it)."""
    at = time.time() if now is None else now
    ttl = max(1, int(interval_s * DISCOVERED_TTL_FACTOR))
    try:
        claimed = client.register_script(CLAIM_LUA)(
            keys=[folders_discovered_key(grant_id)],
            args=[f"{at:.3f}", f"{due_after_s(interval_s, poll_interval_s):.3f}", ttl],
        )
    except (RedisError, OSError) as exc:
        log.warning("could not claim the folder discovery of grant %s (%s)", grant_id, exc)
        return False
    return bool(claimed)


def discoveries_due(
    client: redis.Redis[bytes],
    grant_ids: Sequence[str],
    *,
    interval_s: float,
    poll_interval_s: float,
    now: float | None = None,
) -> frozenset[str]:
    """The grants among ``grant_ids`` whose polls may run a folder discovery now (no poll ran
    one lately), read in one round trip: a batch of polls calls :func:`claim_discovery` (which
    decides, atomically) only for these. Empty when Redis does not answer."""
    at = time.time() if now is None else now
    try:
        stamps = _stamps(client, grant_ids)
    except (RedisError, OSError) as exc:
        log.warning("could not read %d grants' discovery stamps (%s)", len(grant_ids), exc)
        return frozenset()
    due_after = due_after_s(interval_s, poll_interval_s)
    return frozenset(
        grant_id
        for grant_id, stamp in zip(grant_ids, stamps, strict=True)
        if stamp is None or at - stamp >= due_after
    )


def _stamps(client: redis.Redis[bytes], grant_ids: Sequence[str]) -> list[float | None]:
    """The discovery stamps of ``grant_ids`` (None: none, or unreadable), a round trip per
    ``MGET_BATCH`` grants.

    Raises:
        RedisError, OSError: Redis did not answer.
    """
    raw: list[bytes | None] = []
    for start in range(0, len(grant_ids), MGET_BATCH):
        batch = grant_ids[start : start + MGET_BATCH]
        raw.extend(client.mget([folders_discovered_key(g) for g in batch]))
    stamps: list[float | None] = []
    for stamp in raw:
        try:
            stamps.append(None if stamp is None else float(stamp))
        except ValueError:
            stamps.append(None)
    return stamps


def unclaim_discovery(client: redis.Redis[bytes], grant_id: str) -> None:
    """Drop a claim whose discovery failed: the next poll (or the task) tries again."""
    try:
        client.delete(folders_discovered_key(grant_id))
    except (RedisError, OSError) as exc:
        log.warning("could not drop the discovery claim of grant %s (%s)", grant_id, exc)


def discovered_since(
    client: redis.Redis[bytes], grant_ids: Sequence[str], since: float
) -> frozenset[str]:
    """The grants among ``grant_ids`` a poll discovered at ``since`` (unix seconds) or later;
    empty when Redis does not answer (a round trip per ``MGET_BATCH`` grants)."""
    try:
        stamps = _stamps(client, grant_ids)
    except (RedisError, OSError):
        return frozenset()
    return frozenset(
        grant_id
        for grant_id, stamp in zip(grant_ids, stamps, strict=True)
        if stamp is not None and stamp >= since
    )
