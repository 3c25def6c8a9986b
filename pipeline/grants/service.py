"""Grant life cycle: connect an account (a real login first), open sessions for it, remove it.

Who may change a grant (the takeover rule). A grant is the account at one IMAP server and
username; its address is a label users type. A sign-in (hosted page, ``/v3/connect/custom``,
the CLI, the Celery task) that names an address which already has a grant:

- with the same IMAP server (host name in any case, and port) and username, re-authenticates
  that grant after a successful login to it (how Nylas users re-connect an account whose
  password changed);
- with another server or username, changes nothing and is refused with :class:`GrantConflict`
  before any connection is made: the grant, its credentials and its mail stay as they were, and
  its id is never handed out. (The refusal does tell the person signing in that the address is
  connected here; answering with a second grant for the same address instead would break every
  client that looks grants up by address.)

Moving a grant to another server or username is an operator's act: ``PATCH /v3/grants/{id}``
with the API key (``grant=`` below), ``imap-pipeline grants add --replace``, or removing the
grant first.

Hosts named by users (API, hosted page) are checked by :mod:`pipeline.netguard` (``policy=``):
the IMAP login goes to the address that was checked, and a refused host and one that cannot be
reached get the same answer (:data:`UNREACHABLE`), so the check cannot be used to map what
listens on internal networks.
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Protocol

from sqlalchemy.orm import Session

from pipeline import notifications
from pipeline.config import ImapSettings, Settings
from pipeline.crypto import SecretBox
from pipeline.errors import (
    ConfigurationError,
    GrantConflict,
    GrantNotFound,
    HostError,
    ImapAuthError,
    ImapConnectError,
    ImapError,
    ImapThrottledError,
    ImapTlsError,
)
from pipeline.grants.repository import GrantRepository
from pipeline.grants.schemas import GrantRequest, ResolvedGrant
from pipeline.grants.tlsprobe import NoStartTls, ProbeFailed, probe_tls
from pipeline.imap import Endpoint, ImapLimits, ImapSession, open_session
from pipeline.imap.connections import NoSlot, SessionPool
from pipeline.limits import ConnectionSlots, Priority, RateLimited, RateLimiter
from pipeline.models import Grant
from pipeline.netguard import AddressPolicy, IpAddress, Resolver, check_host, resolve
from pipeline.tls import client_context

log = logging.getLogger(__name__)

NO_SLOT_RETRY_S = 5.0  # a session refused a connection slot is asked for again after this

# One answer for a host the guard refused and one that could not be reached or is not an IMAP
# server: which of the two it was would tell what listens where.
UNREACHABLE = (
    "Could not reach an IMAP server at {where} that this service may connect to. Check the "
    "server name, the port and the TLS mode (993 is usually ssl, 143 starttls)."
)
SMTP_UNREACHABLE = (
    "The SMTP server {where} cannot be used: it does not resolve to an address this service "
    "may connect to. Check the SMTP server name."
)
GUARD_KEY, USER_NAMED = "host_guard", "user-named"  # in the sealed secrets of a grant

CONFLICT = (
    "{email} is already connected here with another IMAP server or username, and this sign-in "
    "changed nothing. Sign in with the server and username it was connected with, or ask the "
    "application to remove or update the existing connection first."
)


@dataclass(frozen=True)
class CreatedGrant:
    """The outcome of :func:`create_grant`."""

    grant: Grant
    created: bool  # False when an existing grant for the address was re-authenticated


class ImapAccount(Protocol):
    """What :func:`endpoint_for` reads: a grant row, a resolved request, a listener's row."""

    @property
    def imap_host(self) -> str: ...
    @property
    def imap_port(self) -> int: ...
    @property
    def imap_tls(self) -> str: ...
    @property
    def imap_username(self) -> str: ...
    @property
    def verify_tls(self) -> bool: ...


def endpoint_for(grant: ImapAccount, imap: ImapSettings) -> Endpoint:
    """How to reach a grant's IMAP server, with the session bounds of ``Settings.imap``."""
    return Endpoint(
        host=grant.imap_host,
        port=grant.imap_port,
        tls=grant.imap_tls,  # type: ignore[arg-type]
        username=grant.imap_username,
        verify_tls=grant.verify_tls,
        timeout_s=imap.timeout_s,
        ca_file=imap.ca_file,
        limits=imap_limits(imap),
    )


def imap_limits(imap: ImapSettings) -> ImapLimits:
    """The bounds every IMAP session keeps, from the ``IMAP_PIPELINE_IMAP_*`` settings."""
    return ImapLimits(
        max_line_bytes=imap.max_line_bytes,
        max_literal_bytes=imap.max_literal_bytes,
        max_untagged=imap.max_untagged,
        max_command_bytes=imap.max_command_bytes,
        command_deadline_s=imap.command_deadline_s,
        login_deadline_s=imap.login_deadline_s,
    )


def grant_secrets(grant: Grant, settings: Settings) -> dict[str, str]:
    """The grant's decrypted secrets. Keep the result in a local; never log it."""
    return SecretBox(settings.encryption_key_list).open_json(grant.secrets_sealed)


def _host_key(host: str) -> str:
    return host.strip().strip("[]").rstrip(".").lower()


def same_account(grant: Grant, resolved: ResolvedGrant) -> bool:
    """Whether a sign-in names the account ``grant`` was made for: the same IMAP server (host
    name in any case, and port: whoever may run a server on another port of a shared host
    could otherwise accept any password there) and the same username (any case)."""
    return (
        _host_key(grant.imap_host) == _host_key(resolved.imap_host)
        and grant.imap_port == resolved.imap_port
        and grant.imap_username.casefold() == resolved.imap_username.casefold()
    )


def checked_address(
    host: str,
    port: int,
    policy: AddressPolicy,
    unreachable: str,
    resolver: Resolver = resolve,
) -> IpAddress:
    """The address of ``host`` that :mod:`pipeline.netguard` allows, to connect to.

    Raises:
        ImapConnectError: refused or unresolvable, with the one message ``unreachable``.
    """
    try:
        return check_host(host, port, policy, resolver=resolver)[0]
    except HostError as exc:
        log.info("user-named host refused: %s", exc)  # the reason stays in the log
        raise ImapConnectError(unreachable.format(where=f"{host}:{port}")) from exc


def guarded(
    endpoint: Endpoint, policy: AddressPolicy | None, resolver: Resolver = resolve
) -> Endpoint:
    """``endpoint`` pinned to the checked address of its host (unchanged without a policy).

    Raises:
        ImapConnectError: the host is refused or does not resolve (:data:`UNREACHABLE`).
    """
    if policy is None:
        return endpoint
    address = checked_address(endpoint.host, endpoint.port, policy, UNREACHABLE, resolver)
    return replace(endpoint, address=str(address))


def verify_login(
    resolved: ResolvedGrant,
    password: str,
    settings: Settings,
    policy: AddressPolicy | None = None,
    deadline_s: float | None = None,
    resolver: Resolver = resolve,
) -> list[str]:
    """Log in for real and return the server's capabilities.

    With a ``policy`` (a host named by a user) the host is checked first and the connection goes
    to the checked address; every failure short of an answer from an IMAP server (refused,
    unreachable, not IMAP, TLS handshake, a bound broken) is the same :data:`UNREACHABLE`
    message. ``deadline_s`` shortens the total time of connect, greeting and login, and
    ``resolver`` is the sign-ins' own (public sign-ins answer within the deadline, and names
    whose DNS never answers tie up their resolver threads only).

    Raises:
        ImapError: The login failed; the message is one clear line for the user.
    """
    endpoint = guarded(endpoint_for(resolved, settings.imap), policy, resolver)
    if deadline_s is not None:
        limits = endpoint.limits
        endpoint = replace(
            endpoint,
            timeout_s=min(endpoint.timeout_s, deadline_s),
            limits=replace(limits, login_deadline_s=min(limits.login_deadline_s, deadline_s)),
        )
    try:
        with open_session(endpoint, password) as imap:
            return sorted(imap.capabilities)
    except (ImapAuthError, ImapThrottledError):
        raise
    except ImapError as exc:
        if policy is None or _certificate_problem(exc):
            raise
        log.info("user-named IMAP host failed: %s", type(exc).__name__)
        where = f"{endpoint.host}:{endpoint.port}"
        raise ImapConnectError(UNREACHABLE.format(where=where)) from exc


def find_tls_modes(
    resolved: ResolvedGrant,
    imap: ImapSettings,
    policy: AddressPolicy | None = None,
    deadline_s: float | None = None,
    resolver: Resolver = resolve,
) -> ResolvedGrant:
    """``resolved`` with the TLS mode of each port that was given without one found by probing
    (:mod:`pipeline.grants.tlsprobe`); unchanged when every mode is known.

    With a ``policy`` the hosts are checked first and probed at the checked address; a refused
    host gets the same message as before (:data:`UNREACHABLE`, :data:`SMTP_UNREACHABLE`), and a
    failed probe says what it tried.

    Raises:
        ImapConnectError: The IMAP port neither greeted nor completed a TLS handshake.
        ImapTlsError: Implicit TLS, but the certificate did not verify.
        ConfigurationError: The same for the SMTP port.
    """
    budget = imap.timeout_s if deadline_s is None else min(imap.timeout_s, deadline_s)
    context = client_context(resolved.verify_tls, imap.ca_file)
    # SMTP first: its host is not otherwise checked at sign-in, and a refusal costs nothing
    if resolved.smtp_tls_probe and resolved.smtp_host and resolved.smtp_port:
        host, port = resolved.smtp_host, resolved.smtp_port
        where = f"{host}:{port}"
        address = (
            str(checked_address(host, port, policy, SMTP_UNREACHABLE, resolver)) if policy else host
        )
        try:
            found = probe_tls(host, address, port, context, deadline_s=budget, smtp=True)
        except NoStartTls as exc:
            raise ConfigurationError(
                f"The SMTP server {where} greets in plaintext but does not offer STARTTLS, so "
                "the password could only be sent in the clear: give its TLS port (465, or 587 "
                "with STARTTLS) or settings.smtp_tls."
            ) from exc
        except ProbeFailed as exc:
            detail = (
                f"its certificate did not verify ({exc.certificate})"
                if exc.certificate
                else f"tried {exc.tried}"
            )
            raise ConfigurationError(
                f"Could not find how to talk to the SMTP server {where}: {detail}. Check the "
                "SMTP server name and port, or give settings.smtp_tls (ssl or starttls)."
            ) from exc
        log.info("SMTP TLS mode found by probing: %s", found.tls)
        resolved = replace(resolved, smtp_tls=found.tls, smtp_tls_probe=False)
    if resolved.imap_tls_probe:
        host, port = resolved.imap_host, resolved.imap_port
        where = f"{host}:{port}"
        address = (
            str(checked_address(host, port, policy, UNREACHABLE, resolver)) if policy else host
        )
        try:
            found = probe_tls(host, address, port, context, deadline_s=budget)
        except ProbeFailed as exc:
            if exc.certificate:
                raise ImapTlsError(
                    f"The certificate of {where} could not be verified ({exc.certificate}). "
                    "Check the host name, or allow an unverified certificate for this grant."
                ) from exc
            raise ImapConnectError(
                f"{UNREACHABLE.format(where=where)} Tried {exc.tried}."
                if policy
                else f"Could not talk to an IMAP server at {where}: tried {exc.tried}."
            ) from exc
        log.info("IMAP TLS mode found by probing: %s", found.tls)
        resolved = replace(resolved, imap_tls=found.tls, imap_tls_probe=False)
    return resolved


def _certificate_problem(exc: ImapError) -> bool:
    # A certificate that does not verify came from a TLS server at an allowed address: saying
    # so helps the user (a private CA, a wrong host name) and maps nothing internal.
    return isinstance(exc, ImapTlsError) and isinstance(exc.__cause__, ssl.SSLCertVerificationError)


def refuse_takeover(existing: Grant | None, resolved: ResolvedGrant) -> None:
    """The takeover rule: an address's grant is only re-authenticated by its own account.

    Raises:
        GrantConflict: ``existing`` is on another IMAP server or username.
    """
    if existing is not None and not same_account(existing, resolved):
        log.warning(
            "sign-in for an existing grant's address with another server or username refused",
            extra={"grant_id": existing.id},
        )
        raise GrantConflict(CONFLICT.format(email=resolved.email))


def create_grant(
    session: Session,
    settings: Settings,
    request: GrantRequest,
    *,
    policy: AddressPolicy | None = None,
    grant: Grant | None = None,
) -> CreatedGrant:
    """Connect an account: resolve presets, log in, then store the grant (or re-authenticate it).

    Nothing is stored unless the login succeeds. The caller commits, then enqueues the sync.

    Args:
        session: The caller's transaction.
        settings: Timeouts, CA file, encryption keys.
        request: What the user gave.
        policy: Check the IMAP host with :mod:`pipeline.netguard` and log in at the checked
            address (hosts named by users: the API and the hosted page). None: hosts named by
            the operator (CLI, the Celery task), not checked. (The SMTP host is checked when a
            send connects to it, :meth:`pipeline.outbound.smtp.SmtpConnection.open`.)
        grant: The grant to change (``PATCH /v3/grants/{id}`` with the API key,
            ``grants add --replace``): it takes the request's settings whatever they are.
            None: the address's grant, if any, is re-authenticated only when the request names
            its server and username (see the module docstring).

    Raises:
        ConfigurationError: The request cannot be resolved to a server.
        GrantConflict: The address has a grant on another server or username (nothing changed).
        ImapError: The login failed (wrong password, unreachable host, TLS failure).
    """
    resolved = request.resolve()
    repo = GrantRepository(session)
    if grant is None:
        refuse_takeover(repo.get_by_email(resolved.email), resolved)  # before any connection
    password = request.password.get_secret_value()
    resolved = find_tls_modes(resolved, settings.imap, policy)
    capabilities = verify_login(resolved, password, settings, policy)
    return store_grant(
        session, settings, request, resolved, capabilities, grant=grant, user_named=bool(policy)
    )


def store_grant(
    session: Session,
    settings: Settings,
    request: GrantRequest,
    resolved: ResolvedGrant,
    capabilities: list[str],
    *,
    grant: Grant | None = None,
    user_named: bool = False,
) -> CreatedGrant:
    """Store what a successful login (:func:`verify_login`) proved: a new grant, or the address's
    grant re-authenticated (``grant``: that one, whatever its settings). The caller commits.

    ``user_named``: the server was named by a user (API, hosted page); every later session of
    the grant, in any process, checks its host again (:func:`open_grant_session`).

    Raises:
        GrantConflict: Meanwhile the address got a grant on another server or username.
    """
    repo = GrantRepository(session)
    reauthentication = grant is None  # a sign-in again, not the operator moving a grant
    password = request.password.get_secret_value()
    secrets = {"imap_password": password}
    if request.smtp_password is not None:
        secrets["smtp_password"] = request.smtp_password.get_secret_value()
    if user_named:
        # Sealed with the credentials it governs (how they may be used), so no process can use
        # them without the check, and no migration was needed.
        secrets[GUARD_KEY] = USER_NAMED
    sealed = SecretBox(settings.encryption_key_list).seal_json(secrets)
    # Sign-ins for one address are serialized from here to the commit: a concurrent sign-in
    # that created the grant meanwhile is seen, and judged by the same rule.
    repo.lock_address(resolved.email)
    if grant is None:
        grant = repo.get_by_email(resolved.email)
        refuse_takeover(grant, resolved)
    created = grant is None
    if grant is None:
        grant = Grant(email=resolved.email)  # sync_state: the column's default, PENDING
        session.add(grant)
    grant.provider = resolved.provider
    grant.imap_host = resolved.imap_host
    grant.imap_port = resolved.imap_port
    grant.imap_tls = resolved.imap_tls
    grant.imap_username = resolved.imap_username
    grant.verify_tls = resolved.verify_tls
    grant.smtp_host = resolved.smtp_host
    grant.smtp_port = resolved.smtp_port
    grant.smtp_tls = resolved.smtp_tls
    grant.smtp_username = resolved.smtp_username
    grant.secrets_sealed = sealed
    grant.grant_status = "valid"
    grant.status_detail = None
    grant.capabilities = capabilities
    session.flush()
    session.refresh(grant)  # server-side timestamps for the notification
    if created:
        notifications.grant(session, "grant.created", grant)
    else:
        notifications.grant(session, "grant.updated", grant, reauthenticated=reauthentication)
    log.info(
        "grant %s",
        "created" if created else "re-authenticated",
        extra={"grant_id": grant.id, "provider": grant.provider},
    )
    return CreatedGrant(grant=grant, created=created)


def _login_of(grant: Grant) -> tuple[object, ...]:
    """What a login to the grant's server is made of (its server, username and secrets)."""
    return (
        grant.imap_host,
        grant.imap_port,
        grant.imap_tls,
        grant.imap_username,
        grant.secrets_sealed,
    )


def open_grant_session(
    session: Session, settings: Settings, grant: Grant, policy: AddressPolicy | None = None
) -> ImapSession:
    """Log in to a grant's server. A refused login marks the grant invalid (caller commits).

    The host is checked again and the session goes to the checked address when a ``policy`` is
    given (the API process) or the grant's server was named by a user (the workers, with
    ``settings.mail_address_policy``): a name that resolved to a public address when the grant
    was made cannot lead any process to an internal one later.

    Raises:
        ImapAuthError: The credentials no longer work; the grant is now ``invalid``.
        ImapError: Any other failure, the grant untouched.
    """
    secrets = grant_secrets(grant, settings)
    if policy is None and secrets.get(GUARD_KEY) == USER_NAMED:
        policy = settings.mail_address_policy
    tried = _login_of(grant)
    try:
        return open_session(
            guarded(endpoint_for(grant, settings.imap), policy), secrets["imap_password"]
        )
    except ImapAuthError as exc:
        # ``grant`` may have been read a while ago (a poll batch reads its grants once): a
        # refusal of credentials replaced meanwhile says nothing of the new ones
        current = GrantRepository(session).get_for_update(grant.id)
        if current is None or _login_of(current) != tried:
            raise ImapError(
                f"grant {grant.id}: its login settings changed during this login; the next "
                "try uses the new ones"
            ) from exc
        was_valid = current.grant_status == "valid"
        GrantRepository(session).set_status(grant.id, "invalid", str(exc))
        grant.grant_status = "invalid"
        grant.status_detail = str(exc)
        if was_valid:
            notifications.grant(session, "grant.expired", grant)
        raise


def expire_grant(session: Session, grant_id: str, reason: str) -> bool:
    """Mark a grant invalid after its server refused the login; notify ``grant.expired`` once.

    Returns:
        True when the grant was valid until now (the caller kicks webhook dispatch).
    """
    grant = GrantRepository(session).get_for_update(grant_id)
    if grant is None or grant.grant_status != "valid":
        return False
    grant.grant_status = "invalid"
    grant.status_detail = reason
    session.flush()
    notifications.grant(session, "grant.expired", grant)
    return True


def remove_grant(session: Session, grant: Grant) -> None:
    """Delete a grant with all its data and notify ``grant.deleted`` (caller commits)."""
    notifications.grant(session, "grant.deleted", grant)
    GrantRepository(session).remove(grant.id)


def get_grant(session: Session, id_or_email: str) -> Grant:
    """A grant by id or email.

    Raises:
        GrantNotFound: No such grant.
    """
    grant = GrantRepository(session).find(id_or_email)
    if grant is None:
        raise GrantNotFound(f"No grant {id_or_email!r}; `imap-pipeline grants list` shows them.")
    return grant


def open_counted_session(
    session: Session,
    settings: Settings,
    grant: Grant,
    pool: SessionPool,
    limiter: RateLimiter | None,
    *,
    wait_s: float,
) -> ImapSession:
    """:func:`open_grant_session` holding a slot of the account's connection manager
    (:mod:`pipeline.imap.connections`) at ``pool``'s priority, under the provider's cap (with
    the operator's override, read through ``limiter``); the slot goes when the session closes.
    For processes without a worker's or the API's pool (inline sync, the in-process send
    drain); without a limiter (no Redis) nothing is counted.

    Raises:
        RateLimited: no slot this priority may use came within ``wait_s``.
        ImapAuthError, ImapError: as :func:`open_grant_session`.
    """
    cap = limiter.limits(grant.provider).max_connections if limiter is not None else 0
    try:
        holder = pool.slot(grant.id, cap, wait_s=wait_s)
    except NoSlot as exc:
        raise RateLimited(f"grant {grant.id}: {exc}", NO_SLOT_RETRY_S) from exc
    try:
        imap = open_grant_session(session, settings, grant)
    except BaseException:
        pool.unslot(grant.id, holder)
        raise
    return pool.admit(grant.id, holder, imap)


def counting_pool(limiter: RateLimiter | None, priority: Priority) -> SessionPool:
    """A pool that counts its sessions in the connection manager (nothing, without a
    limiter) and keeps none open after use: for :func:`open_counted_session`."""
    slots = ConnectionSlots(limiter.redis) if limiter is not None else None
    return SessionPool(slots, priority, linger_s=0.0)


def enqueue_sync_after_commit(enqueue: Callable[[str, str], None], grant: Grant) -> None:
    """Enqueue a committed grant's sync with ``enqueue(grant_id, provider)``; never raises: a
    broker failure leaves the grant to reconciliation, which syncs it later."""
    try:
        enqueue(grant.id, grant.provider)
    except Exception as exc:  # any broker/config failure: the grant is stored, sync catches up
        log.warning(
            "could not enqueue the sync (%s); reconciliation will pick the grant up",
            type(exc).__name__,
            extra={"grant_id": grant.id},
        )
