"""Logins made by the API take tokens of the shared login budget (pipeline.limits).

With an account's (or the provider's) login budget used up, a request that would log in gets a
429 ``rate_limit_error`` with ``Retry-After`` and the server is not asked; with budget it works.
The budget is used up the way other processes use it: ``RateLimiter.try_login`` on the same
Redis, after ``set_limits`` made it small.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

import httpx
import pytest
import redis
from api_support import ApiServer, append_many, connect_and_sync, connect_body, now
from sqlalchemy import func, select

from pipeline.db import session_scope
from pipeline.limits import RateLimiter
from pipeline.models import Grant
from tests.support.mail import flags_of, make_message
from tests.support.services import MailUser

pytestmark = pytest.mark.services

HOST = "127.0.0.1"  # every test grant's IMAP host (provider "generic")
SLOW = 1.0  # logins per minute: a used-up budget refills only after ~60 s
PLENTY = 6000.0


@pytest.fixture
def limiter(api: ApiServer) -> Iterator[RateLimiter]:
    """A rate limiter on the API's Redis (another process's view of the same buckets)."""
    client = redis.Redis.from_url(api.settings.require_redis_url(), socket_timeout=5)
    yield RateLimiter(client)
    client.close()


def use_up_logins(limiter: RateLimiter, account: str, field: str) -> None:
    """Make the login budget (``field``) small and take what is left of it for ``account``."""
    limiter.set_limits("generic", {field: SLOW})
    for _ in range(10):
        if limiter.try_login("generic", HOST, account) > 0:
            return
    pytest.fail("the login budget did not run out")


def assert_429(response: httpx.Response) -> None:
    assert response.status_code == 429, response.text
    assert response.json()["error"]["type"] == "rate_limit_error"
    assert 30 <= int(response.headers["retry-after"]) <= 61  # about a minute for one token


def grants(api: ApiServer) -> int:
    with session_scope(api.settings.require_database_url()) as db:
        return int(db.scalar(select(func.count()).select_from(Grant)) or 0)


def test_write_back_waits_for_the_accounts_login_budget(
    api: ApiServer, mail_user: MailUser, limiter: RateLimiter
) -> None:
    t = now()
    append_many(mail_user, [(make_message("budget", date=t), "", t)])
    grant_id = connect_and_sync(api, mail_user)
    (message,) = api.nylas().messages.list(grant_id).data
    use_up_logins(limiter, grant_id, "account_logins_per_min")
    path = f"/v3/grants/{grant_id}/messages/{message.id}"
    with api.http() as http:
        assert_429(http.put(path, json={"unread": False}))
        (server_flags,) = flags_of(mail_user.server, mail_user.name, mail_user.password)
        assert "\\Seen" not in server_flags

        limiter.set_limits("generic", {"account_logins_per_min": PLENTY})
        done = http.put(path, json={"unread": False})
    assert done.status_code == 200, done.text
    (server_flags,) = flags_of(mail_user.server, mail_user.name, mail_user.password)
    assert "\\Seen" in server_flags


def test_connect_and_reauthentication_take_login_tokens(
    api: ApiServer, mail_user: MailUser, limiter: RateLimiter
) -> None:
    with api.http() as http:
        # a new account: the provider's budget
        use_up_logins(limiter, "someone-else", "provider_logins_per_min")
        assert_429(http.post("/v3/connect/custom", json=connect_body(mail_user)))
        assert grants(api) == 0
        limiter.set_limits("generic", {"provider_logins_per_min": PLENTY})
        created = http.post("/v3/connect/custom", json=connect_body(mail_user))
        assert created.status_code == 201, created.text
        grant_id = created.json()["data"]["id"]

        # the same address again, and PATCH with new credentials: the grant's own budget
        use_up_logins(limiter, grant_id, "account_logins_per_min")
        assert_429(http.post("/v3/connect/custom", json=connect_body(mail_user)))
        patch = {"settings": {"imap_password": mail_user.password}}
        assert_429(http.patch(f"/v3/grants/{grant_id}", json=patch))
        limiter.set_limits("generic", {"account_logins_per_min": PLENTY})
        patched = http.patch(f"/v3/grants/{grant_id}", json=patch)
        assert patched.status_code == 200, patched.text


def test_repeated_attempts_at_one_new_account_are_limited(
    api: ApiServer, mail_user: MailUser, limiter: RateLimiter
) -> None:
    limiter.set_limits("generic", {"account_logins_per_min": SLOW})
    wrong = connect_body(mail_user, password="guess-1")
    with api.http() as http:
        first = http.post("/v3/connect/custom", json=wrong)
        assert first.status_code == 401, first.text  # the server said no: that used the token
        assert_429(http.post("/v3/connect/custom", json=connect_body(mail_user, "guess-2")))
        assert_429(http.post("/v3/connect/custom", json=connect_body(mail_user)))
    assert grants(api) == 0


def test_hosted_sign_in_takes_a_login_token(
    api: ApiServer, mail_user: MailUser, limiter: RateLimiter
) -> None:
    callback = "http://localhost:8765/callback"
    client = api.nylas()
    client.applications.redirect_uris.create({"url": callback, "platform": "web"})
    params = {
        "client_id": client.applications.info().data.application_id,
        "redirect_uri": callback,
        "provider": "imap",
    }
    with httpx.Client(base_url=api.url, timeout=30, follow_redirects=False) as browser:
        page = browser.get("/v3/connect/auth", params=params)
        flow = re.search(r"name='flow' value='([^']+)'", page.text)
        assert flow is not None
        form = {
            "flow": flow[1],
            "email": mail_user.email,
            "password": mail_user.password,
            "imap_username": mail_user.name,
            "imap_host": HOST,
            "imap_port": str(mail_user.server.port),
        }
        use_up_logins(limiter, "someone-else", "provider_logins_per_min")
        refused = browser.post("/v3/connect/auth", data=form)
        assert refused.status_code == 429
        assert 30 <= int(refused.headers["retry-after"]) <= 61
        assert "retry later" in refused.text  # the form again, with the reason
        assert mail_user.password not in refused.text
        assert grants(api) == 0
        limiter.set_limits("generic", {"provider_logins_per_min": PLENTY})
        done = browser.post("/v3/connect/auth", data=form)
    assert done.status_code == 303, done.text
    assert grants(api) == 1
