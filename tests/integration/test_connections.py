"""The account's connection manager against real Redis and Dovecot: who gets a slot, who waits,
who gives way (pipeline.imap.connections)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest
import redis

from pipeline.config import Settings
from pipeline.grants.repository import GrantRepository
from pipeline.imap import ImapSession
from pipeline.imap.connections import (
    BULK_LOGIN_SPARE,
    BULK_LOGIN_SPARE_UNWATCHED,
    INTERACTIVE_WAIT_S,
    REAPER_TICK_S,
    NoSlot,
    SessionPool,
)
from pipeline.limits import (
    ConnectionSlots,
    Priority,
    RateLimited,
    RateLimiter,
    idle_holder,
    new_holder,
)
from pipeline.redis import LISTENERS_KEY
from pipeline.sync.run import sync_folder
from tests.support.grants import connect, open_with_folders, sessions_for
from tests.support.mail import append, make_message
from tests.support.services import MailUser
from tests.support.settings import section_changed
from tests.support.waiting import wait_for
from tests.support.worker_resources import worker_resources as pointed_at

pytestmark = pytest.mark.services

IDLE, API, BULK = Priority.IDLE, Priority.INTERACTIVE, Priority.BULK


@pytest.fixture
def slots(redis_url: str) -> Iterator[ConnectionSlots]:
    client = redis.Redis.from_url(redis_url, socket_timeout=5)
    yield ConnectionSlots(client)
    client.close()


@pytest.fixture
def worker_resources(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """This process's worker resources point at the test services."""
    with pointed_at(settings, monkeypatch):
        yield


def bulk_session(grant_id: str) -> ImapSession:
    """What a sync task starts with: a session from this process's BULK pool."""
    from workers.resources import imap_for, sessions

    with sessions().begin() as db:
        grant = GrantRepository(db).get(grant_id)
        assert grant is not None
        return imap_for(db, grant)


def listener_alive(redis_url: str) -> None:
    """A listener is alive (its heartbeat): the grant's IDLE reservation is kept, not lent."""
    with redis.Redis.from_url(redis_url, socket_timeout=5) as client:
        client.zadd(LISTENERS_KEY, {"listener-1": int(time.time() * 1000) + 60_000})


def test_idle_slots_are_reserved_and_bulk_sync_uses_what_is_left(
    slots: ConnectionSlots, redis_url: str
) -> None:
    cap = 5
    listener_alive(redis_url)
    bulk = [new_holder(BULK) for _ in range(3)]
    assert slots.acquire("g", bulk[0], cap, 60)
    assert slots.acquire("g", bulk[1], cap, 60)
    assert not slots.acquire("g", bulk[2], cap, 60)  # 2 for IDLE, 1 for the API
    first_api = new_holder(API)
    assert slots.acquire("g", first_api, cap, 60)  # the API's own, at once
    assert not slots.acquire("g", new_holder(API), cap, 60)  # the rest is IDLE's
    assert slots.acquire("g", idle_holder("L", "inbox"), cap, 60)
    assert slots.acquire("g", idle_holder("L", "sent"), cap, 60)
    assert not slots.acquire("g", idle_holder("L", "third"), cap, 60)  # two are reserved
    assert slots.held("g") == {IDLE: 2, API: 1, BULK: 2}
    assert slots.acquire("g", bulk[0], cap, 60)  # a holder renews its own
    # an API request may use a work slot bulk sync does not hold
    slots.release("g", bulk[0])
    slots.release("g", bulk[1])
    assert slots.acquire("g", new_holder(API), cap, 60)


def test_idle_slots_are_lent_to_bulk_sync_while_no_listener_is_alive(
    slots: ConnectionSlots, redis_url: str
) -> None:
    cap = 5
    bulk = [new_holder(BULK) for _ in range(5)]
    for holder in bulk[:4]:  # no listener is alive: Inbox's and Sent's slots are lent
        assert slots.acquire("g", holder, cap, 60)
    assert not slots.acquire("g", bulk[4], cap, 60)  # never the API's own
    assert not slots.preempted("g")
    api = new_holder(API)
    assert slots.acquire("g", api, cap, 60)  # at once
    slots.release("g", api)
    listener_alive(redis_url)  # a listener starts: the Inbox takes the free slot
    assert slots.acquire("g", idle_holder("L", "inbox"), cap, 60)
    assert not slots.acquire("g", idle_holder("L", "sent"), cap, 60)
    assert slots.preempted("g")  # Sent asks: the borrowing tasks stop at their next batch
    slots.release("g", bulk[0])
    slots.release("g", bulk[1])
    assert not slots.acquire("g", new_holder(BULK), cap, 60)  # nothing is lent any more
    assert slots.acquire("g", idle_holder("L", "sent"), cap, 60)
    assert slots.held("g") == {IDLE: 2, API: 0, BULK: 2}
    assert not slots.preempted("g")  # the listener has both: its want is gone at once
    assert slots.acquire("g", new_holder(API), cap, 60)  # the API's own is free again


def test_bulk_sync_takes_no_slot_while_the_api_waits_for_one(
    slots: ConnectionSlots, redis_url: str
) -> None:
    listener_alive(redis_url)
    cap = 3  # no slot of its own for the API: it shares the one work slot with bulk sync
    running = new_holder(BULK)
    assert slots.acquire("g", running, cap, 60)
    assert not slots.acquire("g", new_holder(API), cap, 60)  # raises the API's want
    assert slots.preempted("g")  # the running task is asked to stop at its next batch
    assert slots.wanted(["g", "other"]) == {"g"}
    slots.release("g", running)
    assert not slots.acquire("g", new_holder(BULK), cap, 60)  # the freed slot is the API's
    assert slots.acquire("g", new_holder(API), cap, 60)


def test_a_crashed_holders_slot_lapses(slots: ConnectionSlots, redis_url: str) -> None:
    listener_alive(redis_url)
    cap = 5
    assert slots.acquire("g", new_holder(BULK), cap, ttl_s=0.3)  # then its process dies
    assert slots.acquire("g", new_holder(BULK), cap, ttl_s=0.3)
    assert not slots.acquire("g", new_holder(BULK), cap, 60)
    time.sleep(0.4)  # the crashed holders' 0.3 s TTL runs out
    assert slots.acquire("g", new_holder(BULK), cap, 60)
    assert slots.held("g")[BULK] == 1


def test_an_operator_cap_override_is_shared_by_the_same_rule(
    slots: ConnectionSlots, redis_url: str
) -> None:
    limiter = RateLimiter(redis.Redis.from_url(redis_url, socket_timeout=5))
    limiter.set_limits("generic", {"max_connections": 2})
    cap = limiter.limits("generic").max_connections
    assert slots.acquire("g", idle_holder("L", "inbox"), cap, 60)
    assert not slots.acquire("g", idle_holder("L", "sent"), cap, 60)  # Sent is polled
    assert slots.acquire("g", new_holder(BULK), cap, 60)
    limiter.set_limits("generic", {"max_connections": 0})  # a pause: nobody new connects
    cap = limiter.limits("generic").max_connections
    assert not slots.acquire("g", new_holder(API), cap, 60)
    assert not slots.acquire("g", idle_holder("L", "inbox2"), cap, 60)


@pytest.mark.usefixtures("worker_resources")
def test_an_api_request_gets_a_slot_within_a_second_while_bulk_sync_holds_all_the_rest(
    settings: Settings, mail_user: MailUser, slots: ConnectionSlots
) -> None:
    from workers.resources import imap_pool, keep_alive, limiter_for_process, release_imap

    grant_id = connect(settings, mail_user)
    limiter_for_process().set_limits("generic", {"max_connections": 3})
    for folder in ("inbox", "sent"):  # the listener watches both
        assert slots.acquire(grant_id, idle_holder("L", folder), 3, 60)
    imap = bulk_session(grant_id)  # a sync task holds the one work slot
    assert slots.held(grant_id) == {IDLE: 2, API: 0, BULK: 1}
    batches = 0

    def task() -> None:  # commits a batch every 0.2 s until asked to stop, then ends
        nonlocal batches
        while not keep_alive(imap):
            imap.noop()
            batches += 1
            time.sleep(0.2)
        release_imap(grant_id, imap, healthy=True)

    worker = threading.Thread(target=task)
    worker.start()
    wait_for(lambda: batches >= 2, "the task to work", timeout_s=5)
    api = SessionPool(slots, API, linger_s=30)
    started = time.monotonic()
    holder = api.slot(grant_id, 3, wait_s=INTERACTIVE_WAIT_S)
    waited = time.monotonic() - started
    worker.join(5)
    assert waited < 1.0, f"the API waited {waited:.2f} s for a connection"
    assert slots.held(grant_id) == {IDLE: 2, API: 1, BULK: 0}
    assert imap_pool().pooled() == []  # the task's session closed: its slot was wanted
    with pytest.raises(RateLimited):
        bulk_session(grant_id)  # the next task waits for its turn (rescheduled)
    api.unslot(grant_id, holder)
    assert slots.held(grant_id)[API] == 0


@pytest.mark.usefixtures("worker_resources")
def test_with_the_generic_cap_the_api_never_waits_for_bulk_sync(
    settings: Settings, mail_user: MailUser, slots: ConnectionSlots
) -> None:
    grant_id = connect(settings, mail_user)
    from workers.resources import imap_pool

    listener_alive(settings.require_redis_url())
    busy = [bulk_session(grant_id)]
    # a second task of this grant in another process: a second BULK slot
    other = new_holder(BULK)
    assert slots.acquire(grant_id, other, 5, 60)
    with pytest.raises(RateLimited):  # the third is not bulk sync's
        busy.append(bulk_session(grant_id))
    api = SessionPool(slots, API, linger_s=30)
    api.slot(grant_id, 5, wait_s=0.0)  # the reserved one, without waiting
    for folder in ("inbox", "sent"):
        assert slots.acquire(grant_id, idle_holder("L", folder), 5, 60)
    assert slots.held(grant_id) == {IDLE: 2, API: 1, BULK: 2}
    assert imap_pool().keep_alive(busy[0]) is False  # nobody waits: the task goes on
    with pytest.raises(NoSlot):
        api.slot(grant_id, 5, wait_s=0.2)  # a second concurrent request waits, then 429
    busy[0].close()


@pytest.mark.usefixtures("worker_resources")
def test_a_task_gives_its_slot_back_at_its_end_or_lingers_only_while_nobody_needs_it(
    settings: Settings, mail_user: MailUser, slots: ConnectionSlots
) -> None:
    from workers.resources import imap_pool, release_imap

    grant_id = connect(settings, mail_user)
    pool = imap_pool()
    pool.linger_s = 0.5
    release_imap(grant_id, bulk_session(grant_id), healthy=True)  # task end
    assert pool.pooled() == [grant_id]  # kept for the next chunk, still counted
    assert slots.held(grant_id)[BULK] == 1
    wait_for(lambda: slots.held(grant_id)[BULK] == 0, "the linger to end", timeout_s=0.5 + 1.0)
    assert pool.pooled() == []

    release_imap(grant_id, bulk_session(grant_id), healthy=False)  # a failed task
    assert pool.pooled() == [] and slots.held(grant_id)[BULK] == 0

    pool.linger_s = 30.0
    imap = bulk_session(grant_id)  # a new login
    release_imap(grant_id, imap, healthy=True)
    assert pool.pooled() == [grant_id]
    # a chunk task of the same grant in another process finds bulk sync's share taken: it is
    # sent back, and this process's session stays for the next chunk that lands here
    listener_alive(settings.require_redis_url())
    other = new_holder(BULK)
    assert slots.acquire(grant_id, other, 5, 60)
    assert not slots.acquire(grant_id, new_holder(BULK), 5, 60)
    time.sleep(REAPER_TICK_S * 3)  # time for the reaper to close it, which it must not
    assert pool.pooled() == [grant_id]
    slots.release(grant_id, other)
    # cap 3 with Inbox and Sent watched: an API request wants the one work slot
    for folder in ("inbox", "sent"):
        assert slots.acquire(grant_id, idle_holder("L", folder), 3, 60)
    assert not slots.acquire(grant_id, new_holder(API), 3, 60)
    wait_for(
        lambda: pool.pooled() == [], "the wanted session to close", timeout_s=REAPER_TICK_S * 4
    )
    assert slots.held(grant_id)[BULK] == 0


def test_a_sync_asked_to_give_way_stops_after_its_committed_batch_and_resumes_later(
    settings: Settings, mail_user: MailUser, slots: ConnectionSlots
) -> None:
    for i in range(25):
        append(mail_user.server, mail_user.name, mail_user.password, make_message(f"m{i}"))
    grant_id = connect(settings, mail_user)
    imap, inbox = open_with_folders(settings, grant_id)
    small = section_changed(settings, "sync", batch_size=10)
    sessions = sessions_for(settings)
    holder = new_holder(BULK)
    assert slots.acquire(grant_id, holder, 3, 60)
    for folder in ("inbox", "sent"):
        assert slots.acquire(grant_id, idle_holder("L", folder), 3, 60)
    assert not slots.acquire(grant_id, new_holder(API), 3, 60)  # an API request waits

    def between_batches() -> bool:
        slots.renew(grant_id, holder, 60)
        return slots.preempted(grant_id)

    try:
        first = sync_folder(sessions, small, imap, grant_id, inbox, on_batch=between_batches)
        assert first.more and first.stored == 10  # one batch, then the connection went
        rest = sync_folder(sessions, small, imap, grant_id, inbox, on_batch=lambda: False)
    finally:
        imap.close()
    assert not rest.more and first.stored + rest.stored == 25


def test_bulk_sync_leaves_the_accounts_last_login_token_to_the_api_and_the_listener(
    redis_url: str,
) -> None:
    limiter = RateLimiter(redis.Redis.from_url(redis_url, socket_timeout=5))
    host = "mail.example.test"
    burst = limiter.limits("generic").max_connections  # 5 logins at once, 10 a minute
    for _ in range(burst - int(BULK_LOGIN_SPARE)):
        assert limiter.try_login("generic", host, "g", spare=BULK_LOGIN_SPARE) == 0.0
    assert limiter.try_login("generic", host, "g", spare=BULK_LOGIN_SPARE) > 0.0  # sync waits
    for _ in range(int(BULK_LOGIN_SPARE)):  # the listener's two and the API's logins, at once
        assert limiter.try_login("generic", host, "g") == 0.0
    assert limiter.try_login("generic", host, "g") > 0.0


@pytest.mark.usefixtures("worker_resources")
def test_a_worker_filing_a_sent_message_gets_a_slot_bulk_sync_cannot_take(
    settings: Settings, mail_user: MailUser, slots: ConnectionSlots
) -> None:
    from workers.resources import interactive_imap_for, release_imap, sessions

    grant_id = connect(settings, mail_user)
    listener_alive(settings.require_redis_url())
    for _ in range(2):  # sync tasks hold everything bulk sync may hold
        assert slots.acquire(grant_id, new_holder(BULK), 5, 60)
    with pytest.raises(RateLimited):
        bulk_session(grant_id)
    with sessions().begin() as db:
        grant = GrantRepository(db).get(grant_id)
        assert grant is not None
        imap = interactive_imap_for(db, grant)  # the send drain's Sent copy
    assert slots.held(grant_id) == {IDLE: 0, API: 1, BULK: 2}
    imap.select("INBOX")
    release_imap(grant_id, imap, healthy=True)
    assert slots.held(grant_id) == {IDLE: 0, API: 0, BULK: 2}


def test_inline_sync_and_the_in_process_send_drain_hold_slots_of_the_account(
    settings: Settings, mail_user: MailUser, slots: ConnectionSlots
) -> None:
    """No IMAP session outside the connection manager: ``sync_grant_inline`` (tools, small
    installs) holds a BULK slot and ``DirectAccess`` (the send drain without a worker's pool)
    an INTERACTIVE one, so with every slot they may use taken neither logs in."""
    from pipeline.outbound.deliver import DirectAccess
    from pipeline.sync.run import sync_grant_inline

    grant_id = connect(settings, mail_user)
    listener_alive(settings.require_redis_url())
    append(mail_user.server, mail_user.name, mail_user.password, make_message("one"))
    bulk = [new_holder(BULK) for _ in range(2)]
    for holder in bulk:  # sync tasks hold everything bulk sync may hold
        assert slots.acquire(grant_id, holder, 5, 60)
    started = time.monotonic()
    with pytest.raises(RateLimited):
        sync_grant_inline(sessions_for(settings), settings, grant_id, slot_wait_s=0.5)
    assert 0.5 <= time.monotonic() - started < 10
    assert slots.held(grant_id) == {IDLE: 0, API: 0, BULK: 2}
    slots.release(grant_id, bulk[0])
    assert sync_grant_inline(sessions_for(settings), settings, grant_id, slot_wait_s=0.5)
    assert slots.held(grant_id) == {IDLE: 0, API: 0, BULK: 1}  # its slot went with its session

    api_holder = new_holder(API)
    assert slots.acquire(grant_id, bulk[0], 5, 60)
    assert slots.acquire(grant_id, api_holder, 5, 60)  # the API's reserved slot is busy too
    client = redis.Redis.from_url(settings.require_redis_url(), socket_timeout=5)
    access = DirectAccess(settings, RateLimiter(client))
    with sessions_for(settings).begin() as db:
        grant = GrantRepository(db).get(grant_id)
        assert grant is not None
        with pytest.raises(RateLimited):
            access.imap(db, grant)  # after INTERACTIVE_WAIT_S
        slots.release(grant_id, api_holder)
        imap = access.imap(db, grant)
    assert slots.held(grant_id) == {IDLE: 0, API: 1, BULK: 2}
    imap.select("INBOX")
    access.release_imap(grant_id, imap, healthy=True)
    assert slots.held(grant_id) == {IDLE: 0, API: 0, BULK: 2}
    client.close()


@pytest.mark.usefixtures("worker_resources")
def test_without_a_listener_a_first_sync_opens_a_session_per_worker_at_once(
    settings: Settings, mail_user: MailUser, slots: ConnectionSlots
) -> None:
    """No listener runs: the 4 worker processes of a first sync each log in at once, on the
    IDLE slots and login tokens no listener uses; the API's slot and login stay free."""
    from workers.resources import interactive_imap_for, release_imap, sessions

    grant_id = connect(settings, mail_user)
    busy = [bulk_session(grant_id) for _ in range(4)]  # 4 slots, 4 logins, none refused
    assert slots.held(grant_id) == {IDLE: 0, API: 0, BULK: 4}
    with pytest.raises(RateLimited):
        bulk_session(grant_id)  # not the API's slot
    with sessions().begin() as db:
        grant = GrantRepository(db).get(grant_id)
        assert grant is not None
        imap = interactive_imap_for(db, grant)  # slot and login token at once
    release_imap(grant_id, imap, healthy=False)
    for session in busy:
        session.close()
    assert BULK_LOGIN_SPARE_UNWATCHED < BULK_LOGIN_SPARE
