"""A grant's IMAP session for work a person waits on (the API's write-back, drafts, attachments,
raw MIME, searches on the server, a scheduled send's Drafts copy).

The session comes from the account's connection manager at INTERACTIVE priority
(:mod:`pipeline.imap.connections`): it gets a connection slot within a second (a reserved one,
or one bulk sync makes room for), a new login takes a login token, and the work takes its
operation tokens up front (:mod:`pipeline.limits`, the buckets the workers and the listener
use). A short wait for a token is absorbed; no slot within ``INTERACTIVE_WAIT_S``, a longer
wait for a token, or a throttling answer of the provider, is a :class:`RateLimited` with the
seconds to wait (the API answers 429 with Retry-After). The session stays pooled for the next
piece of work while nobody else needs its slot.

Whoever calls :func:`grant_imap` passes an :class:`Interactive`: the settings, the limiter,
the session pool and a way to have the webhook outbox dispatched (the API's state is one).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import time
from collections.abc import Callable, Iterator
from typing import NoReturn, Protocol

from sqlalchemy.orm import Session

from pipeline.config import Settings
from pipeline.errors import (
    ImapAuthError,
    ImapProtocolError,
    ImapThrottledError,
    InvalidRequest,
    RequestError,
)
from pipeline.grants.schemas import ResolvedGrant
from pipeline.grants.service import open_grant_session
from pipeline.imap import ImapSession
from pipeline.imap.connections import INTERACTIVE_WAIT_S, NoSlot, SessionPool
from pipeline.limits import RateLimited, RateLimiter
from pipeline.models import Grant

log = logging.getLogger(__name__)

MAX_TOKEN_WAIT_S = 3.0  # work a person waits on waits this long for a token, then is refused
NO_SLOT_RETRY_S = 5  # the wait suggested when every connection of the account is in use


class Interactive(Protocol):
    """What interactive IMAP work needs (:class:`pipeline.api.deps.ApiState` is one)."""

    @property
    def settings(self) -> Settings: ...

    @property
    def limiter(self) -> RateLimiter | None: ...  # None without Redis: nothing is limited

    @property
    def imap_pool(self) -> SessionPool: ...

    @property
    def kick_webhooks(self) -> Callable[[], None]: ...  # after a commit that wrote outbox rows


def kick_webhooks(access: Interactive) -> None:
    """Have the webhook outbox dispatched soon; a broker failure leaves it to the sweep."""
    try:
        access.kick_webhooks()
    except Exception as exc:  # any broker/config failure: the outbox rows wait for the sweep
        log.warning("webhook dispatch not kicked (%s); the sweep will send", type(exc).__name__)


def take(take_token: Callable[[], float], what: str) -> None:
    """Take a token, waiting up to ``MAX_TOKEN_WAIT_S``.

    Raises:
        RateLimited: The token comes later than that.
    """
    deadline = time.monotonic() + MAX_TOKEN_WAIT_S
    while True:
        wait = take_token()
        if wait <= 0:
            return
        if time.monotonic() + wait > deadline:
            raise RateLimited(f"Too many {what} for this account right now; retry later.", wait)
        time.sleep(wait)


def take_login(
    limiter: RateLimiter | None, provider: str, imap_host: str, account: str, what: str
) -> None:
    """Take a login token of ``account`` and of its provider; wait for its turn if that comes
    within ``MAX_TOKEN_WAIT_S``.

    Raises:
        RateLimited: The turn would come later (nothing is taken then).
    """
    if limiter is None:
        return
    turn = limiter.reserve_login(provider, imap_host, account, max_wait_s=MAX_TOKEN_WAIT_S)
    if not turn.granted:
        raise RateLimited(
            f"Too many {what} for this account right now; retry later.", turn.retry_after_s
        )
    if turn.wait_s > 0:
        time.sleep(turn.wait_s)


def _login(db: Session, access: Interactive, grant: Grant) -> ImapSession:
    """A new session under the account's connection cap and login rate."""
    limiter = access.limiter
    pool = access.imap_pool
    cap = limiter.limits(grant.provider).max_connections if limiter is not None else 1
    try:
        holder = pool.slot(grant.id, cap, wait_s=INTERACTIVE_WAIT_S)
    except NoSlot as exc:
        raise RateLimited(
            f"All {exc.cap} IMAP connections of this account are in use; retry shortly.",
            NO_SLOT_RETRY_S,
        ) from exc
    try:
        take_login(limiter, grant.provider, grant.imap_host, grant.id, "logins")
        try:
            imap = open_grant_session(
                db, access.settings, grant, access.settings.mail_address_policy
            )
        except ImapAuthError:
            db.commit()  # keep the grant marked invalid (and its grant.expired event)
            kick_webhooks(access)
            raise
    except BaseException:
        pool.unslot(grant.id, holder)
        raise
    if limiter is not None:
        limiter.recovered(grant.id)
    return pool.admit(grant.id, holder, imap)


def _throttled(access: Interactive, grant: Grant, exc: ImapThrottledError) -> NoReturn:
    """The provider throttled us: the account backs off, the caller is refused for a while."""
    if access.limiter is None:
        raise exc
    backoff = access.limiter.throttled(grant.provider, grant.imap_host, grant.id)
    raise RateLimited("The mail provider is limiting this account; retry later.", backoff) from exc


def _session(db: Session, access: Interactive, grant: Grant) -> ImapSession:
    try:
        return access.imap_pool.take(grant.id) or _login(db, access, grant)
    except RateLimited:
        raise  # our own limit, not the provider's
    except ImapThrottledError as exc:
        _throttled(access, grant, exc)


@contextlib.contextmanager
def grant_imap(
    db: Session, access: Interactive, grant: Grant, *, ops: int
) -> Iterator[ImapSession]:
    """A logged-in session for the grant under the shared limits (pooled by the connection
    manager, :mod:`pipeline.imap.connections`).

    The session holds one of the account's connection slots (counted with the listener's and
    the workers', at INTERACTIVE priority); a new login takes a login token; ``ops`` operation
    tokens are taken up front.

    Raises:
        ImapAuthError: The login was refused; the grant is marked invalid (committed first).
        RateLimited: No slot or token in time, or the provider throttles the account (which
            then backs off).
        InvalidRequest: The server answered NO/BAD to a change (the message quotes it).
    """
    limiter = access.limiter
    imap = _session(db, access, grant)
    healthy = False
    try:
        if limiter is not None:
            take(
                lambda: limiter.try_ops(grant.provider, grant.imap_host, grant.id, ops),
                "IMAP commands",
            )
        try:
            yield imap
        except ImapProtocolError as exc:
            text = str(exc)
            if " answered NO" in text or " answered BAD" in text or " failed: " in text:
                healthy = True  # the server said no; the session is fine
                raise InvalidRequest(f"The IMAP server refused the change: {text}") from exc
            raise
        healthy = True
    except RateLimited:
        healthy = True
        raise
    except ImapThrottledError as exc:
        _throttled(access, grant, exc)
    except RequestError:
        healthy = True  # refused by us (a 4xx), not by a broken session
        raise
    finally:
        access.imap_pool.give_back(imap, healthy=healthy)


def _new_account(imap_host: str, username: str) -> str:
    # No grant id yet: a stable key for the account, without the address in Redis.
    digest = hashlib.sha256(f"{imap_host}|{username}".lower().encode()).hexdigest()
    return f"connect:{digest[:32]}"


@contextlib.contextmanager
def login_turn(
    limiter: RateLimiter | None, resolved: ResolvedGrant, grant_id: str | None
) -> Iterator[None]:
    """Around one check login of a sign-in: take a login token of the account (``grant_id``,
    or the (server, username) pair of a new one, so repeated attempts at one new account are
    limited too) and of its provider; a throttling answer backs the account off.

    Raises:
        RateLimited: No login token comes in time, or the provider throttled the login.
    """
    if limiter is None:
        yield
        return
    account = grant_id or _new_account(resolved.imap_host, resolved.imap_username)
    take_login(limiter, resolved.provider, resolved.imap_host, account, "logins")
    try:
        yield
    except ImapThrottledError as exc:
        backoff = limiter.throttled(resolved.provider, resolved.imap_host, account)
        raise RateLimited(
            "The mail provider is limiting logins to this account; retry later.", backoff
        ) from exc
