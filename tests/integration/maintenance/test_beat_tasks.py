"""The periodic tasks, run in this process against the test services; what they enqueue is
read back from the broker's queues in Redis."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta

import kombu.pools
import pytest
import redis
from celery import Celery
from sqlalchemy import text

from pipeline.config import Settings, reset_settings
from pipeline.db import session_scope, sessionmaker_for
from pipeline.dev.dovecot import LocalDovecot
from pipeline.grants.schemas import GrantRequest
from pipeline.grants.service import create_grant
from pipeline.maintenance.sweep import STOPPED_DETAIL, UIDVALIDITY_STOP_AFTER
from pipeline.models import Folder, Grant
from pipeline.redis import lease_key, listener_status_key
from pipeline.sync.run import sync_grant_inline
from tests.support.fake_imap import FakeFolder, FakeImapConfig, FakeImapServer, sample_message
from tests.support.grants import connect
from tests.support.mail import append, create_folder, imap_login, make_message, move
from tests.support.services import MailUser
from tests.support.worker_resources import worker_resources as pointed_at

pytestmark = pytest.mark.services

QUEUE = "sync.generic"


def _drop_broker_pools(app: Celery) -> None:
    """Forget every broker connection and producer pool of this process (kombu keeps them in
    global registries keyed by URL): a later test that closes "its" pool must not leave a
    producer pool behind that still points at the closed one."""
    kombu.pools.reset()
    app._pool = None
    app.amqp._producer_pool = None


@pytest.fixture
def in_process_worker(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Point this process's Celery app and worker resources at the test services."""
    import workers.tasks.beat  # noqa: F401  (registers the tasks)
    from workers.app import app

    with pointed_at(settings, monkeypatch):
        app.conf.broker_url = settings.require_redis_url()
        _drop_broker_pools(app)
        yield
        _drop_broker_pools(app)


def queued(redis_url: str, queue: str) -> list[tuple[str, list[object]]]:
    """``(task name, args)`` of every message waiting in a queue."""
    client = redis.Redis.from_url(redis_url, socket_timeout=5)
    out = []
    for raw in client.lrange(queue, 0, -1):
        message = json.loads(raw)
        body = json.loads(base64.b64decode(message["body"]))
        out.append((message["headers"]["task"], body[0]))
    return out


def synced_grant(settings: Settings, user: MailUser) -> str:
    append(user.server, user.name, user.password, make_message("hello"))
    grant_id = connect(settings, user)
    sync_grant_inline(sessionmaker_for(settings.require_database_url()), settings, grant_id)
    return grant_id


@pytest.mark.usefixtures("in_process_worker")
def test_the_sweep_plans_once_per_interval_on_the_provider_queue(
    settings: Settings, mail_user: MailUser
) -> None:
    from workers.tasks.beat import sweep_uidvalidity_task

    grant_id = synced_grant(settings, mail_user)
    assert sweep_uidvalidity_task.apply().get() == {"planned": 1, "tasks": 1}
    assert sweep_uidvalidity_task.apply().get() == {"skipped": "already planned this interval"}
    assert queued(settings.require_redis_url(), QUEUE) == [
        ("pipeline.maintenance.check_grants", [[grant_id]])
    ]


@pytest.mark.usefixtures("in_process_worker")
def test_the_checks_of_many_grants_share_tasks(
    settings: Settings, _mail_user_pool: Iterator[MailUser]
) -> None:
    """A batch checks each grant as its own task would: a renumbered folder is counted and its
    sync queued; a grant without a connection slot gets a check task of its own, later."""
    import workers.resources
    from pipeline.limits import ConnectionSlots, Priority, new_holder
    from pipeline.redis import job_key
    from workers.tasks.beat import check_grants_task

    users = [next(_mail_user_pool) for _ in range(3)]
    grants = [synced_grant(settings, user) for user in users]
    first = check_grants_task.apply(args=[grants]).get()
    with session_scope(settings.require_database_url()) as db:
        third = db.scalar(
            text("SELECT count(*) FROM folders WHERE grant_id = :g AND uidvalidity IS NOT NULL"),
            {"g": grants[2]},
        )
    assert third >= 1
    assert first == {"grants": 3, "asked": 3 * third, "changed": 0}  # nobody saw any folder
    users[0].server.doveadm(
        "mailbox", "update", "-u", users[0].name, "--uid-validity", "4000000", "INBOX"
    )
    slots = ConnectionSlots(redis.Redis.from_url(settings.require_redis_url(), socket_timeout=5))
    workers.resources.close_all_imap()  # the pooled sessions of the first round
    taken = 0  # every slot of the third account that may be given is someone else's
    while taken < 10 and slots.wait(grants[2], new_holder(Priority.INTERACTIVE), 5, 60.0, 0.0):
        taken += 1
    assert taken >= 1
    assert check_grants_task.apply(args=[grants], routing_key=QUEUE).get() == {
        "grants": 3,
        "asked": 2 * third,
        "changed": 1,
    }
    with session_scope(settings.require_database_url()) as db:
        inbox = db.scalars(
            text("SELECT id FROM folders WHERE raw_name = 'INBOX' AND grant_id = :g"),
            {"g": grants[0]},
        ).one()
    assert sorted(queued(settings.require_redis_url(), QUEUE)) == [
        ("pipeline.maintenance.check_uidvalidity", [grants[2]]),
        ("pipeline.sync.folder", [grants[0], str(inbox)]),
    ]
    # the check task sent for later finds no lock of the batch in its way
    assert slots.held(grants[2])[Priority.BULK] == 0
    assert not redis.Redis.from_url(settings.require_redis_url()).exists(
        job_key(f"sweep:{grants[2]}")
    )


@pytest.mark.usefixtures("in_process_worker")
def test_the_check_enqueues_a_sync_of_a_renumbered_folder(
    settings: Settings, mail_user: MailUser
) -> None:
    from workers.tasks.beat import check_uidvalidity_task

    grant_id = synced_grant(settings, mail_user)
    assert check_uidvalidity_task.apply(args=[grant_id]).get()["changed"] == 0
    mail_user.server.doveadm(
        "mailbox", "update", "-u", mail_user.name, "--uid-validity", "4000000", "INBOX"
    )
    assert check_uidvalidity_task.apply(args=[grant_id]).get()["changed"] == 1
    with session_scope(settings.require_database_url()) as db:
        inbox = db.scalars(text("SELECT id FROM folders WHERE raw_name = 'INBOX'")).one()
    assert queued(settings.require_redis_url(), QUEUE) == [
        ("pipeline.sync.folder", [grant_id, str(inbox)])
    ]


@pytest.mark.usefixtures("in_process_worker")
def test_the_check_asks_only_folders_nobody_saw_lately(
    settings: Settings, mail_user: MailUser
) -> None:
    """The minute's polls see the polled folders' UIDVALIDITY and the listener holds Inbox
    and Sent: the five-minute check then asks nothing and opens no session; it still asks a
    folder nobody saw, and one whose changes are counted (issue 11: IMAP commands of an idle
    grant no more than its polls and IDLE renewals)."""
    import workers.resources
    from workers.tasks.beat import check_uidvalidity_task, poll_grant_task

    # the checks here log in more often than an account's default budget allows
    workers.resources.limiter_for_process().set_limits("generic", {"account_logins_per_min": 1000})
    server, name, pw = mail_user.server, mail_user.name, mail_user.password
    create_folder(server, name, pw, "Work")
    append(server, name, pw, make_message("work"), folder="Work")
    grant_id = synced_grant(settings, mail_user)
    with session_scope(settings.require_database_url()) as db:
        ids = dict(db.execute(text("SELECT raw_name, id::text FROM folders")).all())
    inbox, work = ids["INBOX"], ids["Work"]
    logins = _count_logins(server)

    assert check_uidvalidity_task.apply(args=[grant_id]).get()["asked"] == 2  # nobody looked
    assert poll_grant_task.apply(args=[grant_id]).get() == {"changed": 0}  # sees Work
    assert check_uidvalidity_task.apply(args=[grant_id]).get()["asked"] == 1  # the Inbox
    client = redis.Redis.from_url(settings.require_redis_url(), socket_timeout=5)
    client.set(lease_key(grant_id), "listener-a", ex=60)  # as a live listener writes them
    entry = {"state": "idling", "listener": "listener-a", "at": time.time()}
    client.hset(listener_status_key(grant_id), inbox, json.dumps(entry))
    before = logins()
    assert check_uidvalidity_task.apply(args=[grant_id]).get() == {
        "changed": 0,
        "stopped": 0,
        "resumed": 0,
        "polled": 0,
        "asked": 0,
    }
    assert logins() == before  # no session at all

    # a change the poll saw counts, and a folder with changes counted is asked (fresh session)
    mail_user.server.doveadm("mailbox", "update", "-u", name, "--uid-validity", "4100000", "Work")
    poll_grant_task.apply(args=[grant_id]).get()
    assert _changes(settings, work) == 1
    assert check_uidvalidity_task.apply(args=[grant_id]).get()["asked"] == 1
    assert _changes(settings, work) == 1  # the same change, its reindex not done yet
    # past the interval a look is stale: the folder is asked again
    client.delete(f"imap-pipeline:uidvalidity-looked:{grant_id}")
    client.hdel(listener_status_key(grant_id), inbox)
    assert check_uidvalidity_task.apply(args=[grant_id]).get()["asked"] == 2


def _changes(settings: Settings, folder_id: str) -> int:
    with session_scope(settings.require_database_url()) as db:
        return int(
            db.scalar(
                text("SELECT uidvalidity_changes FROM folders WHERE id = :f"), {"f": folder_id}
            )
        )


def _count_logins(server: LocalDovecot) -> Callable[[], int]:
    """A counter of the successful logins the test Dovecot logged so far."""
    return lambda: server.log_path.read_text(errors="replace").count("Login: user=")


@pytest.mark.usefixtures("in_process_worker")
def test_reconcile_re_enqueues_stalled_work_once_per_interval(
    settings: Settings, mail_user: MailUser, _mail_user_pool: Iterator[MailUser]
) -> None:
    from workers.tasks.beat import reconcile_task

    stalled = connect(settings, mail_user)  # created, its sync never enqueued
    failed_grant = synced_grant(settings, next(_mail_user_pool))
    long_ago = datetime.now(UTC) - timedelta(hours=1)
    with session_scope(settings.require_database_url()) as db:
        db.execute(
            text("UPDATE grants SET updated_at = :t WHERE id = :g"), {"t": long_ago, "g": stalled}
        )
        db.execute(
            text("UPDATE folders SET state = 'failed', updated_at = :t WHERE grant_id = :g"),
            {"t": long_ago, "g": failed_grant},
        )
        folder = db.scalars(text("SELECT id FROM folders WHERE grant_id = :g"), {"g": failed_grant})
        failed_folder = str(folder.one())
    assert reconcile_task.apply().get() == {"grants": 1, "folders": 1, "busy": 0, "deleted": 0}
    assert reconcile_task.apply().get() == {"skipped": "already ran this interval"}
    assert sorted(queued(settings.require_redis_url(), QUEUE)) == [
        ("pipeline.sync.folder", [failed_grant, failed_folder]),
        ("pipeline.sync.grant", [stalled]),
    ]


@pytest.mark.usefixtures("in_process_worker")
def test_reconcile_leaves_a_folder_that_is_being_synced_alone(
    settings: Settings, mail_user: MailUser
) -> None:
    from pipeline.redis import folder_lock_key
    from workers.tasks.beat import reconcile_task

    grant_id = synced_grant(settings, mail_user)
    with session_scope(settings.require_database_url()) as db:
        folder = db.query(Folder).filter(Folder.grant_id == grant_id).one()
        db.execute(
            text("UPDATE folders SET state = 'syncing', updated_at = :t WHERE id = :f"),
            {"t": datetime.now(UTC) - timedelta(hours=1), "f": folder.id},
        )
        folder_id = folder.id
    client = redis.Redis.from_url(settings.require_redis_url(), socket_timeout=5)
    client.set(folder_lock_key(folder_id), "someone", ex=60)
    assert reconcile_task.apply().get() == {"grants": 0, "folders": 0, "busy": 1, "deleted": 0}


@pytest.mark.usefixtures("in_process_worker")
def test_the_purge_task_runs_once_at_a_time(settings: Settings, mail_user: MailUser) -> None:
    from workers.tasks.beat import purge_task

    # received 90 days ago minus 10 s: inside the window at sync, past it 10 s later
    old = datetime.now(UTC) - timedelta(days=89, hours=23, minutes=59, seconds=50)
    append(mail_user.server, mail_user.name, mail_user.password, make_message("old"), when=old)
    grant_id = synced_grant(settings, mail_user)
    client = redis.Redis.from_url(settings.require_redis_url(), socket_timeout=5)
    client.set("imap-pipeline:job:purge", "someone", ex=60)
    assert purge_task.apply().get() == {"skipped": "a purge is running"}
    client.delete("imap-pipeline:job:purge")
    # until the message is past 90 days by the clock
    time.sleep(max(0.0, (old + timedelta(days=90) - datetime.now(UTC)).total_seconds()) + 0.5)
    result = purge_task.apply().get()
    assert result["messages"] == 1 and result["complete"]
    with session_scope(settings.require_database_url()) as db:
        grant = db.get(Grant, grant_id)
        assert grant is not None
        assert db.scalar(text("SELECT count(*) FROM messages")) == 1  # "hello" stays


@pytest.mark.usefixtures("in_process_worker")
def test_reconcile_finishes_the_delete_of_a_quiet_grant(
    settings: Settings, mail_user: MailUser
) -> None:
    """A message expunged on a grant where nothing else happens: the sync that saw the expunge
    only marks it orphaned (a move may re-place it); reconciliation deletes it, with its
    message.deleted, once the orphan grace is over (issue 11)."""
    from workers.tasks.beat import reconcile_task

    append(mail_user.server, mail_user.name, mail_user.password, make_message("gone"))
    grant_id = synced_grant(settings, mail_user)  # also "hello"
    with session_scope(settings.require_database_url()) as db:
        gone_id = str(db.scalar(text("SELECT id FROM messages WHERE subject = 'gone'")))
    conn = imap_login(mail_user.server, mail_user.name, mail_user.password)
    try:
        conn.select("INBOX")
        assert conn.uid("STORE", "1", "+FLAGS.SILENT", "(\\Deleted)")[0] == "OK"
        assert conn.expunge()[0] == "OK"
    finally:
        conn.logout()
    # the listener's sync of Inbox sees the expunge (default grace: nothing deleted yet)
    sync_grant_inline(sessionmaker_for(settings.require_database_url()), settings, grant_id)
    client = redis.Redis.from_url(settings.require_redis_url(), socket_timeout=5)

    def deleted_events() -> list[str]:
        with session_scope(settings.require_database_url()) as db:
            query = "SELECT object FROM webhook_outbox WHERE type = 'message.deleted'"
            rows = db.execute(text(query))
            return [str(o["id"]) for (o,) in rows]

    assert reconcile_task.apply().get()["deleted"] == 0  # still within the grace
    assert deleted_events() == []
    with session_scope(settings.require_database_url()) as db:  # the grace passes
        db.execute(
            text("UPDATE messages SET orphaned_at = :t WHERE id = :m"),
            {
                "t": datetime.now(UTC) - timedelta(seconds=settings.sync.orphan_grace_s + 1),
                "m": gone_id,
            },
        )
    client.delete("imap-pipeline:job:reconcile")  # the next interval's run
    assert reconcile_task.apply().get() == {"grants": 0, "folders": 0, "busy": 0, "deleted": 1}
    assert deleted_events() == [gone_id]
    with session_scope(settings.require_database_url()) as db:
        assert list(db.scalars(text("SELECT subject FROM messages"))) == ["hello"]


def _run_queued_syncs(redis_url: str) -> int:
    """Run the folder syncs waiting in the broker in this process, each on a session of its
    own (as on another worker process), until none waits. Returns how many ran."""
    import workers.resources
    from workers.tasks.sync import sync_folder_task

    client = redis.Redis.from_url(redis_url, socket_timeout=5)
    for ran in range(50):  # a cap: a loop of syncs queuing syncs fails the test, never hangs it
        raw = client.rpop(QUEUE)  # kombu pushes on the left
        if raw is None:
            return ran
        message = json.loads(raw)
        assert message["headers"]["task"] == "pipeline.sync.folder"
        args = json.loads(base64.b64decode(message["body"]))[0]
        workers.resources.close_all_imap()
        sync_folder_task.apply(args=args).get()
    raise AssertionError("folder syncs kept queuing more folder syncs")


@pytest.mark.usefixtures("in_process_worker")
def test_a_folder_renumbered_every_session_is_stopped_by_the_minute_polls(
    settings: Settings,
) -> None:
    """A server giving every session a new UIDVALIDITY (a Courier folder whose uid db is
    lost): the every-minute poll and the syncs it queues count the changes, so the folder is
    stopped after UIDVALIDITY_STOP_AFTER of them with the documented status, not reindexed
    every minute with a folder.updated each time (issue 11)."""
    import workers.resources
    from workers.tasks.beat import poll_grant_task

    folders = [
        FakeFolder(b"INBOX", [sample_message(1)]),
        FakeFolder(b"Sent", [], ("\\HasNoChildren", "\\Sent")),
        FakeFolder(b"Archive", [sample_message(2), sample_message(3)], ("\\Archive",)),
    ]
    redis_url = settings.require_redis_url()
    # every look here is a new login (that is the point): more than an account's default budget
    workers.resources.limiter_for_process().set_limits("generic", {"account_logins_per_min": 1000})
    with FakeImapServer(FakeImapConfig(folders=folders, uidvalidity_per_session=True)) as server:
        request = GrantRequest(
            email="renumbered@fake.test",
            password="any",  # type: ignore[arg-type]
            imap_host="127.0.0.1",
            imap_port=server.port,
            imap_tls="plain",
            allow_plaintext=True,
            imap_username="renumbered",
        )
        with session_scope(settings.require_database_url()) as db:
            grant_id = create_grant(db, settings, request).grant.id
        sync_grant_inline(sessionmaker_for(settings.require_database_url()), settings, grant_id)
        with session_scope(settings.require_database_url()) as db:
            archive = db.query(Folder).filter(Folder.name == "Archive").one()
            archive_id = archive.id
            assert archive.state == "synced"

        def archive_state() -> tuple[str, str | None]:
            with session_scope(settings.require_database_url()) as db:
                folder = db.get(Folder, archive_id)
                assert folder is not None
                return folder.state, folder.state_detail

        minutes = 0
        while archive_state()[0] != "stopped" and minutes < 2 * UIDVALIDITY_STOP_AFTER:
            minutes += 1
            # a minute apart: the pooled session was closed (BULK_LINGER_S), a new one polls
            workers.resources.close_all_imap()
            poll_grant_task.apply(args=[grant_id]).get()
            _run_queued_syncs(redis_url)
        assert archive_state() == ("stopped", STOPPED_DETAIL)
        with session_scope(settings.require_database_url()) as db:
            updated = db.scalar(
                text(
                    "SELECT count(*) FROM webhook_outbox WHERE type = 'folder.updated' "
                    "AND object->>'id' = :f"
                ),
                {"f": archive_id},
            )
        assert updated < UIDVALIDITY_STOP_AFTER  # each reindex was one of the counted changes
        # stopped means quiet: the next minutes' polls sync nothing
        workers.resources.close_all_imap()
        assert poll_grant_task.apply(args=[grant_id]).get() == {"changed": 0}
        assert _run_queued_syncs(redis_url) == 0
        with session_scope(settings.require_database_url()) as db:
            grant = db.get(Grant, grant_id)
            assert grant is not None and grant.sync_state != "stopped"  # only Archive is


def _delete_folder(user: MailUser, raw_name: str) -> None:
    conn = imap_login(user.server, user.name, user.password)
    try:
        typ, data = conn.delete(f'"{raw_name}"')
        assert typ == "OK", data
    finally:
        conn.logout()


def _outbox(settings: Settings, kind: str) -> list[dict[str, object]]:
    with session_scope(settings.require_database_url()) as db:
        rows = db.execute(
            text("SELECT object FROM webhook_outbox WHERE type = :t ORDER BY seq"), {"t": kind}
        )
        return [dict(o) for (o,) in rows]


@pytest.mark.usefixtures("in_process_worker")
def test_folder_discovery_finds_folders_made_and_removed_by_another_client(
    settings: Settings, mail_user: MailUser
) -> None:
    """Folders made or removed by another client, on a grant where nothing else happens: the
    periodic discovery announces and syncs the new one, removes the vanished one, and the mail
    only the vanished one held is orphaned (issue 11)."""
    from workers.tasks.beat import discover_folders_task, discover_grant_task
    from workers.tasks.sync import sync_folder_task

    user, redis_url = mail_user, settings.require_redis_url()
    create_folder(user.server, user.name, user.password, "Old")
    append(user.server, user.name, user.password, make_message("old mail"), folder="Old")
    grant_id = synced_grant(settings, user)
    assert discover_grant_task.apply(args=[grant_id]).get() == {"created": 0, "deleted": 0}

    with session_scope(settings.require_database_url()) as db:
        hello_id = str(db.scalar(text("SELECT id FROM messages WHERE subject = 'hello'")))
        inbox_id = str(db.scalar(text("SELECT id FROM folders WHERE raw_name = 'INBOX'")))
    create_folder(user.server, user.name, user.password, "Projects")
    append(user.server, user.name, user.password, make_message("plan"), folder="Projects")
    move(user.server, user.name, user.password, 1, "Projects")  # "hello", from Inbox
    _delete_folder(user, "Old")
    # the listener's Inbox sync sees "hello" go (orphaned: it may have moved)
    sync_folder_task.apply(args=[grant_id, inbox_id]).get()
    assert discover_folders_task.apply().get() == {"planned": 1}
    assert discover_folders_task.apply().get() == {"skipped": "already planned this interval"}
    assert queued(redis_url, QUEUE) == [("pipeline.maintenance.discover_grant", [grant_id])]
    redis.Redis.from_url(redis_url, socket_timeout=5).delete(QUEUE)  # run here instead
    assert discover_grant_task.apply(args=[grant_id]).get() == {"created": 1, "deleted": 1}

    with session_scope(settings.require_database_url()) as db:
        projects = db.query(Folder).filter(Folder.name == "Projects").one()
        projects_id = projects.id
        assert db.query(Folder).filter(Folder.name == "Old").count() == 0
        orphaned = db.scalar(text("SELECT orphaned_at FROM messages WHERE subject = 'old mail'"))
        assert orphaned is not None  # message.deleted follows after the grace (reconcile)
    assert [o["id"] for o in _outbox(settings, "folder.created")] == [projects_id]
    assert [o["name"] for o in _outbox(settings, "folder.deleted")] == ["Old"]
    assert queued(redis_url, QUEUE) == [("pipeline.sync.folder", [grant_id, projects_id])]
    assert _run_queued_syncs(redis_url) == 1
    with session_scope(settings.require_database_url()) as db:
        projects = db.get(Folder, projects_id)
        assert projects is not None and projects.state == "synced"
        plan_id = str(db.scalar(text("SELECT id FROM messages WHERE subject = 'plan'")))
        hello = db.execute(
            text("SELECT orphaned_at FROM messages WHERE id = :m"), {"m": hello_id}
        ).one()
        assert hello.orphaned_at is None  # found again: it keeps its id, no delete follows
    assert [o["id"] for o in _outbox(settings, "message.created")] == [plan_id]
    moved = [o for o in _outbox(settings, "message.updated") if o["id"] == hello_id]
    assert moved and moved[-1]["folders"] == [projects_id]
    assert _outbox(settings, "message.deleted") == []


@pytest.mark.usefixtures("in_process_worker")
def test_folder_discovery_respects_the_folder_cap(
    settings: Settings, mail_user: MailUser, monkeypatch: pytest.MonkeyPatch
) -> None:
    from workers.tasks.beat import discover_grant_task

    grant_id = synced_grant(settings, mail_user)
    with session_scope(settings.require_database_url()) as db:
        count = db.query(Folder).filter(Folder.grant_id == grant_id).count()
    monkeypatch.setenv("IMAP_PIPELINE_MAX_FOLDERS_PER_GRANT", str(count))
    reset_settings()
    create_folder(mail_user.server, mail_user.name, mail_user.password, "One too many")
    assert discover_grant_task.apply(args=[grant_id]).get() == {"created": 0, "deleted": 0}
    with session_scope(settings.require_database_url()) as db:
        assert db.query(Folder).filter(Folder.grant_id == grant_id).count() == count
        grant = db.get(Grant, grant_id)
        assert grant is not None and grant.folders_skipped == 1
    assert _outbox(settings, "folder.created") == []
    assert queued(settings.require_redis_url(), QUEUE) == []


@pytest.mark.usefixtures("in_process_worker")
def test_the_polls_of_many_grants_share_tasks(
    settings: Settings, _mail_user_pool: Iterator[MailUser]
) -> None:
    """Idle grants' polls go in batches (a task dispatch costs about as much as a quiet poll):
    every grant is polled, a changed folder of each is found."""
    from workers.tasks.beat import poll_folders_task, poll_grants_task

    users = [next(_mail_user_pool) for _ in range(3)]
    grants = []
    for user in users:
        create_folder(user.server, user.name, user.password, "Work")
        grants.append(synced_grant(settings, user))
    assert poll_grants_task.apply(args=[grants]).get() == {
        "grants": 3,
        "changed": 0,
        "skipped": 0,
    }
    for user in users[:2]:
        append(user.server, user.name, user.password, make_message("new"), folder="Work")
    assert poll_grants_task.apply(args=[grants]).get() == {
        "grants": 3,
        "changed": 2,
        "skipped": 0,
    }
    planned = poll_folders_task.apply().get()
    assert planned["planned"] == 3 and 1 <= planned["tasks"] <= 3
    sent = [
        args
        for name, args in queued(settings.require_redis_url(), QUEUE)
        if name.endswith("poll_grants")
    ]
    assert sorted(g for args in sent for g in args[0]) == sorted(grants)  # type: ignore[index]


@pytest.mark.usefixtures("in_process_worker")
def test_a_poll_batch_gives_slots_back_at_once_and_skips_a_grant_polled_elsewhere(
    settings: Settings, _mail_user_pool: Iterator[MailUser]
) -> None:
    """Issue 11: a quiet poll holds no connection slot after it (its session is logged out
    at once, not pooled for a sync that does not come); a poll that found a change keeps its
    session for that sync. A grant whose poll runs elsewhere (its job lock held) is skipped
    and its lock left alone; the batch's own locks are gone when it ends."""
    from pipeline.limits import ConnectionSlots, Priority
    from pipeline.redis import job_key
    from workers.resources import imap_pool
    from workers.tasks.beat import poll_grants_task

    users = [next(_mail_user_pool) for _ in range(3)]
    grants = []
    for user in users:
        create_folder(user.server, user.name, user.password, "Work")
        grants.append(synced_grant(settings, user))
    client = redis.Redis.from_url(settings.require_redis_url(), socket_timeout=5)
    slots = ConnectionSlots(client)
    client.set(job_key(f"poll:{grants[2]}"), "another worker", ex=60)

    assert poll_grants_task.apply(args=[grants]).get() == {
        "grants": 3,
        "changed": 0,
        "skipped": 1,
    }
    assert imap_pool().pooled() == []
    assert [slots.held(g)[Priority.BULK] for g in grants] == [0, 0, 0]
    assert client.get(job_key(f"poll:{grants[2]}")) == b"another worker"
    assert [client.exists(job_key(f"poll:{g}")) for g in grants[:2]] == [0, 0]

    user = users[0]
    append(user.server, user.name, user.password, make_message("new"), folder="Work")
    assert poll_grants_task.apply(args=[grants[:2]]).get() == {
        "grants": 2,
        "changed": 1,
        "skipped": 0,
    }
    assert imap_pool().pooled() == [grants[0]]  # for the sync it queued, still counted
    assert [slots.held(g)[Priority.BULK] for g in grants[:2]] == [1, 0]


@pytest.mark.usefixtures("in_process_worker")
def test_the_poll_runs_the_folder_discovery_on_its_own_session(
    settings: Settings, mail_user: MailUser
) -> None:
    """An idle grant's folder discovery rides on its poll: a folder another client made is
    announced and queued by the poll that finds the discovery due, on the poll's session (no
    login of its own); the planner and the discovery task leave such a grant alone, and the
    next discovery is the first poll an interval later."""
    from pipeline.redis import folders_discovered_key, job_key
    from workers.tasks.beat import discover_folders_task, discover_grant_task, poll_grants_task

    user, redis_url = mail_user, settings.require_redis_url()
    client = redis.Redis.from_url(redis_url, socket_timeout=5)
    create_folder(user.server, user.name, user.password, "Work")
    grant_id = synced_grant(settings, user)
    logins = _count_logins(user.server)
    create_folder(user.server, user.name, user.password, "Projects")
    before = logins()
    assert poll_grants_task.apply(args=[[grant_id]]).get() == {
        "grants": 1,
        "changed": 0,
        "skipped": 0,
    }
    assert logins() == before + 1  # the poll's own
    with session_scope(settings.require_database_url()) as db:
        projects_id = db.query(Folder).filter(Folder.name == "Projects").one().id
    assert [o["id"] for o in _outbox(settings, "folder.created")] == [projects_id]
    assert queued(redis_url, QUEUE) == [("pipeline.sync.folder", [grant_id, projects_id])]
    client.delete(QUEUE)

    assert discover_folders_task.apply().get() == {"planned": 0, "covered": 1}
    assert queued(redis_url, QUEUE) == []
    assert discover_grant_task.apply(args=[grant_id]).get() == {"skipped": "discovered by a poll"}

    # within the interval the polls do not list again; once it has passed, the next one does
    _delete_folder(user, "Projects")
    assert poll_grants_task.apply(args=[[grant_id]]).get()["skipped"] == 0
    with session_scope(settings.require_database_url()) as db:
        assert db.query(Folder).filter(Folder.id == projects_id).count() == 1
    interval = settings.beat.folder_discovery_interval_s
    client.set(folders_discovered_key(grant_id), f"{time.time() - interval:.3f}")
    assert poll_grants_task.apply(args=[[grant_id]]).get()["skipped"] == 0
    with session_scope(settings.require_database_url()) as db:
        assert db.query(Folder).filter(Folder.id == projects_id).count() == 0
    assert [o["name"] for o in _outbox(settings, "folder.deleted")] == ["Projects"]

    # a grant whose polls stopped discovering is planned again after an interval and a poll
    client.set(folders_discovered_key(grant_id), f"{time.time() - interval - 61:.3f}")
    client.delete(job_key("discover"))  # the next interval's planning
    assert discover_folders_task.apply().get() == {"planned": 1}
    assert discover_grant_task.apply(args=[grant_id]).get() == {"created": 0, "deleted": 0}


@pytest.mark.usefixtures("in_process_worker")
def test_the_poll_finds_a_folder_made_elsewhere_on_every_server(
    settings: Settings, server_user: MailUser
) -> None:
    """The poll's discovery LIST on Dovecot, Cyrus (both with LIST-STATUS for the poll itself)
    and Courier (without): a folder another client made is added and queued for sync."""
    from workers.tasks.beat import poll_grants_task

    user = server_user
    # Courier keeps no uid db for an empty folder: each session would see a new UIDVALIDITY
    append(user.server, user.name, user.password, make_message("in the inbox"), flags="\\Seen")
    grant_id = connect(settings, user)
    sync_grant_inline(sessionmaker_for(settings.require_database_url()), settings, grant_id)
    projects = user.folder("Projects")
    create_folder(user.server, user.name, user.password, projects)
    assert poll_grants_task.apply(args=[[grant_id]]).get()["skipped"] == 0
    with session_scope(settings.require_database_url()) as db:
        found = db.query(Folder).filter(Folder.raw_name == projects).one()
        assert found.grant_id == grant_id and found.state == "pending"
    assert queued(settings.require_redis_url(), QUEUE) == [
        ("pipeline.sync.folder", [grant_id, found.id])
    ]
