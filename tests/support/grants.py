"""Grants for tests: a Dovecot user connected the way ``imap-pipeline grants add`` does it."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from pipeline.config import Settings
from pipeline.db import session_scope, sessionmaker_for
from pipeline.grants.schemas import GrantRequest
from pipeline.grants.service import create_grant, open_grant_session
from pipeline.imap import ImapSession
from pipeline.models import Folder, Grant
from pipeline.sync.plan import discover_folders
from tests.support.services import MailUser


def grant_request(user: MailUser) -> GrantRequest:
    """What ``grants add`` would send for ``user``: STARTTLS to the test Dovecot, plaintext
    (allowed explicitly) to the test Cyrus and Courier, which run without certificates."""
    if not user.starttls:
        return plaintext_request(user.server.port, user.name, user.password, user.email)
    return GrantRequest(
        email=user.email,
        password=user.password,  # type: ignore[arg-type]
        imap_host="127.0.0.1",
        imap_port=user.server.port,
        imap_tls="starttls",
        imap_username=user.name,
    )


def plaintext_request(port: int, user: str, password: str, email: str) -> GrantRequest:
    """A grant on a local Dovecot without TLS (the benchmarks', which measure sync, not TLS)."""
    return GrantRequest(
        email=email,
        password=password,  # type: ignore[arg-type]
        imap_host="127.0.0.1",
        imap_port=port,
        imap_tls="plain",
        imap_username=user,
        allow_plaintext=True,
    )


def connect(settings: Settings, user: MailUser) -> str:
    """Create a grant for ``user`` over STARTTLS (a real login); returns its id."""
    with session_scope(settings.require_database_url()) as db:
        return create_grant(db, settings, grant_request(user)).grant.id


def open_with_folders(settings: Settings, grant_id: str) -> tuple[ImapSession, str]:
    """A logged-in session of the grant and its folder rows, as a worker's first task makes
    them; returns the session (close it) and the Inbox's folder id."""
    with session_scope(settings.require_database_url()) as db:
        grant = db.get(Grant, grant_id)
        assert grant is not None
        imap = open_grant_session(db, settings, grant)
        discover_folders(
            db, grant, imap.list_folders(), max_folders=settings.sync.max_folders_per_grant
        )
        inbox = db.scalars(
            select(Folder.id).where(Folder.grant_id == grant_id, Folder.raw_name == "INBOX")
        ).one()
    return imap, inbox


def sessions_for(settings: Settings) -> sessionmaker[Session]:
    """A session factory on the test's database."""
    return sessionmaker_for(settings.require_database_url())
