"""The shared login and operation limits (:mod:`pipeline.limits`) on the API's paths.

Every login the API makes to a provider takes a login token of the account and of its provider
first, from the same buckets the workers and the listener use:

- an IMAP session for write-back, drafts, attachments and searches
  (:func:`pipeline.grants.interactive.grant_imap`, which takes the tokens itself);
- the check login of ``POST /v3/connect/custom``, ``PATCH /v3/grants/{id}`` and the hosted
  sign-in form (:func:`connect_login`); the account is the grant of that address when there is
  one, else the (server, username) pair, so repeated attempts at one new account are limited too;
- the SMTP login of a send (by the worker that sends it, :mod:`pipeline.outbound.deliver`).

A login reserves its turn in the buckets (:meth:`~pipeline.limits.RateLimiter.reserve_login`)
and waits for it when it comes within ``MAX_TOKEN_WAIT_S``; operation tokens are asked for again
until then (:func:`pipeline.grants.interactive.take_login` and ``take``). A longer wait, or a
provider that throttles us (the account then backs off), is a 429 ``rate_limit_error`` with
``Retry-After``. Without Redis (``ApiState.limiter`` is None) nothing is limited.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy.orm import Session

from pipeline.api.deps import ApiState
from pipeline.api.errors import rate_limited
from pipeline.errors import ImapThrottledError
from pipeline.grants.interactive import take_login
from pipeline.grants.repository import GrantRepository
from pipeline.grants.schemas import GrantRequest, ResolvedGrant
from pipeline.grants.service import same_account
from pipeline.limits import RateLimited
from pipeline.models import Grant


def _new_account(imap_host: str, username: str) -> str:
    # No grant id yet: a stable key for the account, without the address in Redis.
    digest = hashlib.sha256(f"{imap_host}|{username}".lower().encode()).hexdigest()
    return f"connect:{digest[:32]}"


@contextmanager
def connect_login(
    db: Session, api: ApiState, request: GrantRequest, *, grant: Grant | None = None
) -> Iterator[None]:
    """Around the check login of a connect: take its login token; a throttling answer puts the
    account in back-off. The account is ``grant`` (a PATCH), else the address's grant when the
    request names its server and username, else the (server, username) pair: a sign-in with
    another server cannot spend an existing grant's login budget.

    Raises:
        ConfigurationError: The request names no usable server (as ``create_grant`` would).
        ApiError: 429 with ``Retry-After`` when no login token comes in time or the provider
            throttled the login.
    """
    if api.limiter is None:
        yield
        return
    resolved = request.resolve()
    if grant is None:
        grant = GrantRepository(db).get_by_email(resolved.email)
        if grant is not None and not same_account(grant, resolved):
            grant = None
    with login_turn(api, resolved, grant.id if grant is not None else None):
        yield


@contextmanager
def login_turn(api: ApiState, resolved: ResolvedGrant, grant_id: str | None) -> Iterator[None]:
    """Around one check login: take a login token of the account (``grant_id``, or the (server,
    username) pair of a new one) and its provider; a throttling answer backs the account off.

    Raises:
        ApiError: 429 with ``Retry-After`` when no login token comes in time or the provider
            throttled the login.
    """
    limiter = api.limiter
    if limiter is None:
        yield
        return
    account = grant_id or _new_account(resolved.imap_host, resolved.imap_username)
    try:
        take_login(limiter, resolved.provider, resolved.imap_host, account, "logins")
    except RateLimited as exc:
        raise rate_limited(str(exc), exc.retry_after_s) from exc
    try:
        yield
    except ImapThrottledError as exc:
        backoff = limiter.throttled(resolved.provider, resolved.imap_host, account)
        raise rate_limited(
            "The mail provider is limiting logins to this account; retry later.", backoff
        ) from exc
