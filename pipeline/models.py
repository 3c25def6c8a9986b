"""ORM models: the schema of the truth.

Identity: a message's ``id`` never changes. Where it sits on the server is a *placement*
(``folder_id, uidvalidity, uid``), a cache that a move or a UIDVALIDITY change rewrites. Messages
are keyed per grant by ``identity_key`` (Message-ID plus a header hash, or a content hash for mail
without a Message-ID), which is what lets a reindex or a move find the same message again.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB, UUID
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def new_id() -> str:
    """A new object id (UUID4 as text, the form the API shows)."""
    return str(uuid.uuid4())


class Base(DeclarativeBase):
    """Declarative base; every domain's models share its metadata."""

    metadata = MetaData(naming_convention=NAMING)
    type_annotation_map = {dict[str, Any]: JSONB, list[str]: ARRAY(Text)}


def _uuid_pk() -> Mapped[str]:
    return mapped_column(UUID(as_uuid=False), primary_key=True, default=new_id)


def _created() -> Mapped[datetime]:
    return mapped_column(DateTime(timezone=True), server_default=func.now(), nullable=False)


def _updated() -> Mapped[datetime]:
    return mapped_column(
        DateTime(timezone=True), server_default=func.now(), onupdate=func.now(), nullable=False
    )


class Grant(Base):
    """A connected IMAP account."""

    __tablename__ = "grants"

    id: Mapped[str] = _uuid_pk()
    email: Mapped[str] = mapped_column(String(320), nullable=False)
    provider: Mapped[str] = mapped_column(String(32), nullable=False)  # preset name
    imap_host: Mapped[str] = mapped_column(String(255), nullable=False)
    imap_port: Mapped[int] = mapped_column(Integer, nullable=False)
    imap_tls: Mapped[str] = mapped_column(String(16), nullable=False)  # ssl | starttls | plain
    imap_username: Mapped[str] = mapped_column(String(320), nullable=False)
    verify_tls: Mapped[bool] = mapped_column(Boolean, nullable=False, default=True)
    smtp_host: Mapped[str | None] = mapped_column(String(255))
    smtp_port: Mapped[int | None] = mapped_column(Integer)
    smtp_tls: Mapped[str | None] = mapped_column(String(16))
    smtp_username: Mapped[str | None] = mapped_column(String(320))
    # Fernet token of {"imap_password": ..., "smtp_password": ...}; never logged or shown.
    secrets_sealed: Mapped[str] = mapped_column(Text, nullable=False)
    grant_status: Mapped[str] = mapped_column(String(16), nullable=False, default="valid")
    status_detail: Mapped[str | None] = mapped_column(Text)
    # GrantSyncState (pipeline.grants.state, drawn there; spelled out: the models sit below it)
    sync_state: Mapped[str] = mapped_column(String(16), nullable=False, default="pending")
    capabilities: Mapped[list[str]] = mapped_column(ARRAY(Text), nullable=False, default=list)
    initial_sync_completed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # Selectable folders the server lists that are not synced: over the folder cap
    # (IMAP_PIPELINE_MAX_FOLDERS_PER_GRANT) or with a name too long to keep.
    folders_skipped: Mapped[int] = mapped_column(
        Integer, nullable=False, default=0, server_default="0"
    )
    created_at: Mapped[datetime] = _created()
    updated_at: Mapped[datetime] = _updated()

    folders: Mapped[list[Folder]] = relationship(
        back_populates="grant", cascade="all, delete-orphan", passive_deletes=True
    )

    __table_args__ = (UniqueConstraint("email", name="uq_grants_email"),)


class Folder(Base):
    """A mailbox on the server and our sync checkpoint for it.

    States: ``pending`` (discovered, not synced) -> ``syncing`` (initial sync running) ->
    ``synced``; ``reindexing`` while a new UIDVALIDITY is being indexed beside the old view;
    ``failed`` after an error the next run retries; ``stopped`` when we gave up on purpose
    (``state_detail`` says why). Drawn in :mod:`pipeline.folders.state`.
    """

    __tablename__ = "folders"

    id: Mapped[str] = _uuid_pk()
    grant_id: Mapped[str] = mapped_column(
        UUID(as_uuid=False), ForeignKey("grants.id", ondelete="CASCADE"), nullable=False
    )
    name: Mapped[str] = mapped_column(Text, nullable=False)  # decoded display name
    raw_name: Mapped[str] = mapped_column(Text, nullable=False)  # as the server spells it
    delimiter: Mapped[str | None] = mapped_column(String(4))
    role: Mapped[str | None] = mapped_column(String(16))  # inbox, sent, drafts, trash, ...
    attributes: Mapped[list[str]] = mapped_column(ARRAY(Text), nullable=False, default=list)
    uidvalidity: Mapped[int | None] = mapped_column(BigInteger)
    reindex_uidvalidity: Mapped[int | None] = mapped_column(BigInteger)
    uidnext: Mapped[int | None] = mapped_column(BigInteger)
    highestmodseq: Mapped[int | None] = mapped_column(BigInteger)
    # Without CONDSTORE: STATUS MESSAGES and UNSEEN as the last sync saw them (before its
    # SELECT); the poll compares them to notice expunges and \Seen changes (migration 0504).
    status_messages: Mapped[int | None] = mapped_column(BigInteger)
    status_unseen: Mapped[int | None] = mapped_column(BigInteger)
    # FolderState (pipeline.folders.state; spelled out: the models sit below it)
    state: Mapped[str] = mapped_column(String(16), nullable=False, default="pending")
    state_detail: Mapped[str | None] = mapped_column(Text)
    # UIDVALIDITY stop rule (pipeline.maintenance.sweep): consecutive changes seen by sweeps,
    # the value the last sweep saw, and when a stopped folder is tried again.
    uidvalidity_changes: Mapped[int] = mapped_column(
        Integer, nullable=False, default=0, server_default="0"
    )
    swept_uidvalidity: Mapped[int | None] = mapped_column(BigInteger)
    retry_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    synced_uid: Mapped[int] = mapped_column(BigInteger, nullable=False, default=0)
    to_sync: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    last_synced_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    created_at: Mapped[datetime] = _created()
    updated_at: Mapped[datetime] = _updated()

    grant: Mapped[Grant] = relationship(back_populates="folders")

    __table_args__ = (UniqueConstraint("grant_id", "raw_name", name="uq_folders_grant_raw_name"),)


class Thread(Base):
    """A conversation: messages linked by References / In-Reply-To, then by subject."""

    __tablename__ = "threads"

    id: Mapped[str] = _uuid_pk()
    grant_id: Mapped[str] = mapped_column(
        UUID(as_uuid=False), ForeignKey("grants.id", ondelete="CASCADE"), nullable=False
    )
    subject_key: Mapped[str] = mapped_column(Text, nullable=False, default="")
    subject: Mapped[str] = mapped_column(Text, nullable=False, default="")
    latest_message_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    created_at: Mapped[datetime] = _created()
    updated_at: Mapped[datetime] = _updated()

    # Looked up by (grant_id, md5(subject_key)): an expression index of migration 0501, so a
    # subject of any length is stored (a plain B-tree entry must stay under ~2.7 KB).


class Message(Base):
    """A normalized message; one row however many folders hold a copy of it."""

    __tablename__ = "messages"

    id: Mapped[str] = _uuid_pk()
    grant_id: Mapped[str] = mapped_column(
        UUID(as_uuid=False), ForeignKey("grants.id", ondelete="CASCADE"), nullable=False
    )
    identity_key: Mapped[str] = mapped_column(String(80), nullable=False)
    header_hash: Mapped[str] = mapped_column(String(64), nullable=False)
    message_id_header: Mapped[str | None] = mapped_column(Text)
    in_reply_to: Mapped[str | None] = mapped_column(Text)
    references: Mapped[list[str]] = mapped_column(ARRAY(Text), nullable=False, default=list)
    thread_id: Mapped[str | None] = mapped_column(
        UUID(as_uuid=False), ForeignKey("threads.id", ondelete="SET NULL")
    )
    subject: Mapped[str] = mapped_column(Text, nullable=False, default="")
    from_: Mapped[list[dict[str, str]]] = mapped_column("from", JSONB, nullable=False, default=list)
    to: Mapped[list[dict[str, str]]] = mapped_column(JSONB, nullable=False, default=list)
    cc: Mapped[list[dict[str, str]]] = mapped_column(JSONB, nullable=False, default=list)
    bcc: Mapped[list[dict[str, str]]] = mapped_column(JSONB, nullable=False, default=list)
    reply_to: Mapped[list[dict[str, str]]] = mapped_column(JSONB, nullable=False, default=list)
    date: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)
    received_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)
    snippet: Mapped[str] = mapped_column(Text, nullable=False, default="")
    body: Mapped[str] = mapped_column(Text, nullable=False, default="")
    headers: Mapped[list[dict[str, str]]] = mapped_column(JSONB, nullable=False, default=list)
    size: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    unread: Mapped[bool] = mapped_column(Boolean, nullable=False, default=True)
    starred: Mapped[bool] = mapped_column(Boolean, nullable=False, default=False)
    flags: Mapped[list[str]] = mapped_column(ARRAY(Text), nullable=False, default=list)
    has_attachments: Mapped[bool] = mapped_column(Boolean, nullable=False, default=False)
    # Nylas metadata set through the API (pipeline.messages.metadata); never on the server
    metadata_: Mapped[dict[str, str]] = mapped_column(
        "metadata", JSONB, nullable=False, default=dict, server_default=text("'{}'::jsonb")
    )
    # Set when the last placement vanished; a move re-places it within the grace period,
    # otherwise it is deleted (message.deleted). See pipeline.sync.run.
    orphaned_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    created_at: Mapped[datetime] = _created()
    updated_at: Mapped[datetime] = _updated()

    placements: Mapped[list[Placement]] = relationship(
        back_populates="message", cascade="all, delete-orphan", passive_deletes=True
    )
    attachments: Mapped[list[Attachment]] = relationship(
        back_populates="message", cascade="all, delete-orphan", passive_deletes=True
    )

    __table_args__ = (
        UniqueConstraint("grant_id", "identity_key", name="uq_messages_grant_identity"),
        Index("ix_messages_grant_date", "grant_id", "date", "id"),
        Index("ix_messages_grant_received", "grant_id", "received_at"),
        Index("ix_messages_thread", "thread_id"),
        # Message-ID and References are looked up through expression indexes on their MD5
        # (migration 0501), so values of any length are stored.
        Index("ix_messages_received_at", "received_at"),  # the retention purge walks it
        # reconciliation finds the orphans past their grace (migration 0503); few rows
        Index(
            "ix_messages_orphaned_at",
            "orphaned_at",
            "grant_id",
            postgresql_where=text("orphaned_at IS NOT NULL"),
        ),
    )


class Placement(Base):
    """Where a message sits on the server: folder, UIDVALIDITY and UID (a cache).

    Placements of a UIDVALIDITY other than the folder's current one belong to a reindex in
    progress (see ``Folder.reindex_uidvalidity``): readers join on the folder's current
    UIDVALIDITY and keep seeing the old view until the new one is complete.
    """

    __tablename__ = "placements"

    folder_id: Mapped[str] = mapped_column(
        UUID(as_uuid=False), ForeignKey("folders.id", ondelete="CASCADE"), primary_key=True
    )
    uidvalidity: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    uid: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    message_id: Mapped[str] = mapped_column(
        UUID(as_uuid=False), ForeignKey("messages.id", ondelete="CASCADE"), nullable=False
    )
    flags: Mapped[list[str]] = mapped_column(ARRAY(Text), nullable=False, default=list)
    modseq: Mapped[int | None] = mapped_column(BigInteger)

    message: Mapped[Message] = relationship(back_populates="placements")

    __table_args__ = (Index("ix_placements_message", "message_id"),)


class Attachment(Base):
    """Attachment metadata; the bytes are fetched from the server on demand."""

    __tablename__ = "attachments"

    id: Mapped[str] = _uuid_pk()
    message_id: Mapped[str] = mapped_column(
        UUID(as_uuid=False), ForeignKey("messages.id", ondelete="CASCADE"), nullable=False
    )
    grant_id: Mapped[str] = mapped_column(UUID(as_uuid=False), nullable=False)
    filename: Mapped[str | None] = mapped_column(Text)
    content_type: Mapped[str] = mapped_column(String(255), nullable=False)
    size: Mapped[int] = mapped_column(Integer, nullable=False)
    content_id: Mapped[str | None] = mapped_column(Text)
    is_inline: Mapped[bool] = mapped_column(Boolean, nullable=False, default=False)
    part_path: Mapped[str] = mapped_column(Text, nullable=False)  # IMAP section number

    message: Mapped[Message] = relationship(back_populates="attachments")

    __table_args__ = (Index("ix_attachments_message", "message_id"),)


class SyncFailure(Base):
    """A message that could not be fetched or normalized: recorded, skipped, never fatal."""

    __tablename__ = "sync_failures"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    grant_id: Mapped[str] = mapped_column(
        UUID(as_uuid=False), ForeignKey("grants.id", ondelete="CASCADE"), nullable=False
    )
    folder_id: Mapped[str] = mapped_column(
        UUID(as_uuid=False), ForeignKey("folders.id", ondelete="CASCADE"), nullable=False
    )
    uidvalidity: Mapped[int] = mapped_column(BigInteger, nullable=False)
    uid: Mapped[int] = mapped_column(BigInteger, nullable=False)
    error: Mapped[str] = mapped_column(Text, nullable=False)
    recorded_at: Mapped[datetime] = _created()

    __table_args__ = (
        UniqueConstraint("folder_id", "uidvalidity", "uid", name="uq_sync_failures_place"),
        Index("ix_sync_failures_recorded_at", "recorded_at"),
    )
