"""Grant life cycle: connect an account (a real login first), open sessions for it, remove it."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Protocol

from sqlalchemy.orm import Session

from pipeline.config import Settings
from pipeline.crypto import SecretBox
from pipeline.errors import GrantNotFound, ImapAuthError
from pipeline.grants.repository import GrantRepository
from pipeline.grants.schemas import GrantRequest, ResolvedGrant
from pipeline.imap import Endpoint, ImapSession, open_session
from pipeline.models import Grant
from pipeline.sync import events

log = logging.getLogger(__name__)


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


def endpoint_for(grant: ImapAccount, settings: Settings) -> Endpoint:
    """How to reach a grant's IMAP server."""
    return Endpoint(
        host=grant.imap_host,
        port=grant.imap_port,
        tls=grant.imap_tls,  # type: ignore[arg-type]
        username=grant.imap_username,
        verify_tls=grant.verify_tls,
        timeout_s=settings.imap_timeout_s,
        ca_file=settings.imap_ca_file,
    )


def grant_secrets(grant: Grant, settings: Settings) -> dict[str, str]:
    """The grant's decrypted secrets. Keep the result in a local; never log it."""
    return SecretBox(settings.encryption_key_list).open_json(grant.secrets_sealed)


def verify_login(resolved: ResolvedGrant, password: str, settings: Settings) -> list[str]:
    """Log in for real and return the server's capabilities.

    Raises:
        ImapError: The login failed; the message is one clear line for the user.
    """
    with open_session(endpoint_for(resolved, settings), password) as imap:
        return sorted(imap.capabilities)


def create_grant(session: Session, settings: Settings, request: GrantRequest) -> CreatedGrant:
    """Connect an account: resolve presets, log in, then store the grant (or re-authenticate it).

    Nothing is stored unless the login succeeds. The caller commits, then enqueues the sync.

    Raises:
        ConfigurationError: The request cannot be resolved to a server.
        ImapError: The login failed (wrong password, unreachable host, TLS failure).
    """
    resolved = request.resolve()
    password = request.password.get_secret_value()
    capabilities = verify_login(resolved, password, settings)
    secrets = {"imap_password": password}
    if request.smtp_password is not None:
        secrets["smtp_password"] = request.smtp_password.get_secret_value()
    sealed = SecretBox(settings.encryption_key_list).seal_json(secrets)
    repo = GrantRepository(session)
    grant = repo.get_by_email(resolved.email)
    created = grant is None
    if grant is None:
        grant = Grant(email=resolved.email, sync_state="pending")
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
    events.grant(session, "grant.created" if created else "grant.updated", grant)
    log.info(
        "grant %s",
        "created" if created else "re-authenticated",
        extra={"grant_id": grant.id, "provider": grant.provider},
    )
    return CreatedGrant(grant=grant, created=created)


def open_grant_session(session: Session, settings: Settings, grant: Grant) -> ImapSession:
    """Log in to a grant's server. A refused login marks the grant invalid (caller commits).

    Raises:
        ImapAuthError: The credentials no longer work; the grant is now ``invalid``.
        ImapError: Any other failure, the grant untouched.
    """
    password = grant_secrets(grant, settings)["imap_password"]
    try:
        return open_session(endpoint_for(grant, settings), password)
    except ImapAuthError as exc:
        was_valid = grant.grant_status == "valid"
        GrantRepository(session).set_status(grant.id, "invalid", str(exc))
        grant.grant_status = "invalid"
        grant.status_detail = str(exc)
        if was_valid:
            events.grant(session, "grant.expired", grant)
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
    events.grant(session, "grant.expired", grant)
    return True


def remove_grant(session: Session, grant: Grant) -> None:
    """Delete a grant with all its data and notify ``grant.deleted`` (caller commits)."""
    events.grant(session, "grant.deleted", grant)
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
