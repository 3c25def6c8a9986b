"""Grants for tests: a Dovecot user connected the way ``imap-pipeline grants add`` does it."""

from __future__ import annotations

from sqlalchemy.orm import Session, sessionmaker

from pipeline.config import Settings
from pipeline.db import session_scope, sessionmaker_for
from pipeline.grants.schemas import GrantRequest
from pipeline.grants.service import create_grant
from tests.support.services import MailUser


def grant_request(user: MailUser) -> GrantRequest:
    """What ``grants add`` would send for ``user``: STARTTLS to the test Dovecot."""
    return GrantRequest(
        email=user.email,
        password=user.password,  # type: ignore[arg-type]
        imap_host="127.0.0.1",
        imap_port=user.server.port,
        imap_tls="starttls",
        imap_username=user.name,
    )


def connect(settings: Settings, user: MailUser) -> str:
    """Create a grant for ``user`` over STARTTLS (a real login); returns its id."""
    with session_scope(settings.require_database_url()) as db:
        return create_grant(db, settings, grant_request(user)).grant.id


def sessions_for(settings: Settings) -> sessionmaker[Session]:
    """A session factory on the test's database."""
    return sessionmaker_for(settings.require_database_url())
