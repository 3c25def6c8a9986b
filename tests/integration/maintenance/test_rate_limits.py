"""Shared rate limits in a real Redis: token buckets, connection slots, back-off, and a global
login limit held by four worker processes against a real Dovecot."""

from __future__ import annotations

import itertools
import re
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator

import pytest
import redis
from sqlalchemy import text

from pipeline.config import Settings
from pipeline.db import session_scope
from pipeline.errors import ImapThrottledError
from pipeline.grants.repository import GrantRepository
from pipeline.limits import RateLimited, RateLimiter, capacity, scope_of
from pipeline.limits.backoff import ACCOUNT_BACKOFF_BASE_S, PROVIDER_THROTTLED_ACCOUNTS
from tests.support.fake_imap import FakeImapConfig, FakeImapServer, Hostility
from tests.support.grants import connect
from tests.support.processes import pipeline_env
from tests.support.services import MailUser
from tests.support.waiting import wait_for
from tests.support.worker_resources import worker_resources as pointed_at

pytestmark = pytest.mark.services

HAMMER_S = 10.0
WORKERS = 4
PROVIDER_LOGINS_PER_S = 2.0
LOG_SETTLE_MAX_S = 15.0  # longest wait for Dovecot's log to catch up with the logins


@pytest.fixture
def limiter(redis_url: str) -> Iterator[RateLimiter]:
    with redis.Redis.from_url(redis_url, socket_timeout=5) as client:
        yield RateLimiter(client)


def test_a_bucket_allows_its_burst_then_says_how_long_to_wait(limiter: RateLimiter) -> None:
    limiter.set_limits("yahoo", {"account_ops_per_s": 5, "provider_ops_per_s": 1000})
    granted = [limiter.try_ops("yahoo", "imap.mail.yahoo.com", "g1") for _ in range(5)]
    assert granted == [0.0] * 5
    wait = limiter.try_ops("yahoo", "imap.mail.yahoo.com", "g1")
    assert 0.0 < wait <= 0.25
    time.sleep(wait + 0.05)  # the bucket refills by the clock
    assert limiter.try_ops("yahoo", "imap.mail.yahoo.com", "g1") == 0.0
    # another account has its own bucket
    assert limiter.try_ops("yahoo", "imap.mail.yahoo.com", "g2") == 0.0


def test_a_denied_account_does_not_spend_provider_tokens(limiter: RateLimiter) -> None:
    limiter.set_limits("gmail", {"account_logins_per_min": 1, "provider_logins_per_min": 120})
    assert capacity(1 / 60) == 1.0
    assert capacity(2.0) == 3.0
    assert limiter.try_login("gmail", "imap.gmail.com", "a") == 0.0  # account a: 1 of 1 burst
    for _ in range(5):
        assert limiter.try_login("gmail", "imap.gmail.com", "a") > 0.0
    # the provider bucket (burst 3) still has two tokens for other accounts
    assert limiter.try_login("gmail", "imap.gmail.com", "b") == 0.0
    assert limiter.try_login("gmail", "imap.gmail.com", "c") == 0.0
    assert limiter.try_login("gmail", "imap.gmail.com", "d") > 0.0


def test_reserved_logins_queue_at_the_provider_rate_and_workers_wait_behind_them(
    limiter: RateLimiter, redis_url: str
) -> None:
    """A reconnect wave reserves its turns once each; nobody exceeds the bucket meanwhile."""
    limiter.set_limits("gmail", {"provider_logins_per_min": 600, "account_logins_per_min": 60})
    host = "imap.gmail.com"
    burst = capacity(10.0)  # 10 logins/s: a burst of 10
    turns = []
    # when each caller may log in: the call's wait after a moment between its start and end
    # (the thread may be descheduled for a few ms on either side of Redis's answer)
    at: list[tuple[float, float]] = []
    for n in range(int(burst) + 12):
        asked = time.monotonic()
        turns.append(limiter.reserve_login("gmail", host, f"r{n}", max_wait_s=1.0))
        at.append((asked + turns[-1].wait_s, time.monotonic() + turns[-1].wait_s))
    assert all(t.granted and t.wait_s == 0.0 for t in turns[: int(burst)])
    # behind the burst, one turn per 0.1 s, up to the longest wait the callers accept
    assert all(t.granted for t in turns[int(burst) : int(burst) + 10])
    queued = at[int(burst) : int(burst) + 10]
    for (a_early, a_late), (b_early, b_late) in itertools.pairwise(queued):
        assert b_early - a_late - 0.01 <= 0.1 <= b_late - a_early + 0.01, (queued, turns)
    assert not turns[-1].granted and turns[-1].wait_s > 1.0  # too long a queue: not reserved
    assert not turns[-1].backing_off
    # a worker asking now waits for the queue too, rather than jumping it
    assert limiter.try_login("gmail", host, "worker-grant") > 0.9
    # the debt (10 turns) is kept until refilled: full in (10 + burst) / 10 s, not burst / 10
    client = redis.Redis.from_url(redis_url, socket_timeout=5)
    with client:
        assert client.pttl("imap-pipeline:rl:login:p:gmail") > (10 + burst) / 10 * 1000


def test_a_back_off_is_never_reserved_through(limiter: RateLimiter) -> None:
    host = "imap.gmail.com"
    started = time.monotonic()
    limiter.throttled("gmail", host, "a")
    turn = limiter.reserve_login("gmail", host, "a", max_wait_s=3600.0)
    since = time.monotonic() - started  # a loaded machine may take a while between the calls
    assert not turn.granted and turn.backing_off
    assert ACCOUNT_BACKOFF_BASE_S - since - 0.01 <= turn.retry_after_s <= ACCOUNT_BACKOFF_BASE_S


def test_generic_servers_do_not_share_a_provider_bucket() -> None:
    assert scope_of("generic", "Mail.Example.org") == "generic:mail.example.org"
    assert scope_of("generic", "imap.other.test") != scope_of("generic", "mail.example.org")
    assert scope_of("yahoo", "imap.mail.yahoo.com") == "yahoo"


def test_throttling_backs_off_the_account_then_the_provider(limiter: RateLimiter) -> None:
    host = "imap.aol.com"
    assert limiter.throttled("aol", host, "a") == ACCOUNT_BACKOFF_BASE_S
    assert limiter.throttled("aol", host, "a") == 2 * ACCOUNT_BACKOFF_BASE_S
    assert limiter.try_login("aol", host, "a") > ACCOUNT_BACKOFF_BASE_S
    assert limiter.try_login("aol", host, "b") == 0.0
    status = limiter.status("aol", host, "a")
    assert status["account_backoff_s"] > ACCOUNT_BACKOFF_BASE_S
    assert status["provider_backoff_s"] == 0.0
    for n in range(PROVIDER_THROTTLED_ACCOUNTS):
        limiter.throttled("aol", host, f"other{n}")
    assert limiter.try_ops("aol", host, "fresh") > 0.0
    assert limiter.status("aol", host, "fresh")["provider_backoff_s"] > 0.0
    limiter.recovered("a")
    assert limiter.throttled("aol", host, "a") == ACCOUNT_BACKOFF_BASE_S


HAMMER = """
import sys, time
from pipeline.grants.repository import GrantRepository
from pipeline.limits import RateLimited
from workers.resources import imap_for, release_imap, sessions

grant_id = sys.argv[1]
print("ready", flush=True)  # imports done: the parent starts the clock for everybody at once
until = float(sys.stdin.readline())
logins = denied = 0
while time.time() < until:
    with sessions().begin() as db:
        grant = GrantRepository(db).get(grant_id)
        try:
            imap = imap_for(db, grant)
        except RateLimited as exc:
            denied += 1
            time.sleep(min(exc.retry_after_s, 0.05))
            continue
    logins += 1
    release_imap(grant_id, imap, healthy=False)  # closed: the next round logs in again
print(logins, denied, flush=True)
"""


def test_four_workers_hold_the_global_login_rate(
    settings: Settings,
    limiter: RateLimiter,
    mail_user: MailUser,
    _mail_user_pool: object,
) -> None:
    users = [mail_user, *(next(_mail_user_pool) for _ in range(WORKERS - 1))]  # type: ignore[call-overload]
    grants = [connect(settings, user) for user in users]
    limiter.set_limits(
        "generic",
        {
            "provider_logins_per_min": PROVIDER_LOGINS_PER_S * 60,
            "account_logins_per_min": 6000,  # per-account limits out of the way
            "account_ops_per_s": 1000,
            "provider_ops_per_s": 1000,
        },
    )
    log_path = mail_user.server.log_path
    offset = log_path.stat().st_size
    env = pipeline_env(settings)
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", HAMMER, grant_id],
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for grant_id in grants
    ]
    for proc in procs:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    until = time.time() + HAMMER_S
    for proc in procs:
        assert proc.stdin is not None
        proc.stdin.write(f"{until}\n")
        proc.stdin.close()
    logged_in = 0  # what the workers did, which Dovecot's log should show
    asked: list[int] = []  # each worker's tries, granted or denied
    for proc in procs:
        assert proc.wait(timeout=HAMMER_S + 60) == 0
        assert proc.stdout is not None
        granted, denied = (int(n) for n in proc.stdout.readline().split())
        logged_in += granted
        asked.append(granted + denied)
        proc.stdout.close()
    names = "|".join(re.escape(u.name) for u in users)
    pattern = re.compile(rf"^(\w+ +\d+ [\d:]+) .*Login: user=<({names})>", re.M)

    def logins() -> list[tuple[str, str]]:
        with log_path.open("rb") as log:
            log.seek(offset)
            return pattern.findall(log.read().decode(errors="replace"))

    # Dovecot writes its log asynchronously (its log process may lag on a loaded machine): read
    # until it shows every login the workers made, rather than after a fixed 0.5 s
    wait_for(
        lambda: len(logins()) >= logged_in,
        f"Dovecot's log to show the workers' {logged_in} logins",
        timeout_s=LOG_SETTLE_MAX_S,
    )
    found = logins()
    assert len(found) == logged_in, (len(found), logged_in)  # every login is in the log
    per_second = Counter(stamp for stamp, _ in found)
    per_user = Counter(user for _, user in found)
    burst = capacity(PROVIDER_LOGINS_PER_S)
    assert len(found) <= PROVIDER_LOGINS_PER_S * HAMMER_S + burst + 1, per_second
    assert len(found) >= PROVIDER_LOGINS_PER_S * HAMMER_S * 0.7, per_second  # not starved
    # any one-second window: the rate plus the burst (log stamps have one-second resolution)
    assert max(per_second.values()) <= PROVIDER_LOGINS_PER_S + burst, per_second
    # all four competed for the whole run: each asked many times more than the rate allows it.
    # Which of them wins each token is first come, first served (a worker's Celery task retries
    # at the wait it was told), so a loaded machine may hand one worker none in ten seconds: the
    # share each got is not the property under test, the global rate they held together is
    assert min(asked) >= PROVIDER_LOGINS_PER_S * HAMMER_S, asked
    assert len(per_user) >= 2, per_user  # the limit was shared, not one worker's alone


@pytest.fixture
def throttling_server() -> Iterator[FakeImapServer]:
    """An IMAP server that greets, then refuses every login the way a provider sheds load."""
    shedding = Hostility("no", b"[UNAVAILABLE] Too many connections, try again later")
    config = FakeImapConfig(capabilities="IMAP4rev1 AUTH=PLAIN", hostile={"LOGIN": shedding})
    with FakeImapServer(config) as server:
        yield server


@pytest.fixture
def worker_resources(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """This process's worker resources point at the test services."""
    with pointed_at(settings, monkeypatch):
        yield


@pytest.mark.usefixtures("worker_resources")
def test_a_throttled_login_backs_the_account_off_and_shows_in_status(
    settings: Settings,
    limiter: RateLimiter,
    mail_user: MailUser,
    throttling_server: FakeImapServer,
) -> None:
    from workers.resources import imap_for, sessions

    grant_id = connect(settings, mail_user)
    with session_scope(settings.require_database_url()) as db:
        db.execute(
            text("UPDATE grants SET imap_port = :p, imap_tls = 'plain' WHERE id = :g"),
            {"p": throttling_server.port, "g": grant_id},
        )
    with sessions().begin() as db:
        grant = GrantRepository(db).get(grant_id)
        assert grant is not None
        with pytest.raises(ImapThrottledError) as refused:
            imap_for(db, grant)
        assert not isinstance(refused.value, RateLimited)  # the provider said so
        assert grant.grant_status == "valid"  # a throttle is not a failed login
        with pytest.raises(RateLimited) as limited:
            imap_for(db, grant)  # backing off: no second login attempt
    assert throttling_server.logins == 1
    assert limited.value.retry_after_s > ACCOUNT_BACKOFF_BASE_S - 2
    status = limiter.status("generic", "127.0.0.1", grant_id)
    assert status["account_backoff_s"] > ACCOUNT_BACKOFF_BASE_S - 2
    assert status["connections"] == 0  # the refused connection gave its slot back
