"""The queries of drafts; nothing here commits.

A draft is a message held in a folder whose role is ``drafts`` (what Nylas lists: "all drafts
in the user's Drafts folder"), whoever put it there: the sync stores drafts like any message,
so one saved by another mail client is a draft here too.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import delete, func, select, update
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from pipeline.messages.repository import MessageRepository, text_key
from pipeline.messages.roles import DRAFTS_ROLE as DRAFTS_ROLE  # named where drafts are
from pipeline.messages.roles import ROLE_PREFERENCE
from pipeline.models import Attachment, Folder, Message, Placement
from pipeline.sync.store import ParsedItem, attachment_columns, message_columns


def drafts_folders(session: Session, grant_id: str) -> list[Folder]:
    """The grant's folders with the drafts role, the role's folder
    (:func:`~pipeline.messages.roles.folder_with_role`) first."""
    return list(
        session.scalars(
            select(Folder)
            .where(Folder.grant_id == grant_id, Folder.role == DRAFTS_ROLE)
            .order_by(*ROLE_PREFERENCE)
        )
    )


def drafts_among(session: Session, message_ids: Sequence[str]) -> set[str]:
    """Which of these messages are drafts (held in a drafts folder, current UIDVALIDITY)."""
    if not message_ids:
        return set()
    rows = session.scalars(
        select(Placement.message_id)
        .join(Folder, Folder.id == Placement.folder_id)
        .where(
            Placement.message_id.in_(message_ids),
            Folder.role == DRAFTS_ROLE,
            Placement.uidvalidity == Folder.uidvalidity,
        )
        .distinct()
    )
    return {str(m) for m in rows}


def lock_draft(session: Session, draft_id: str, wait_s: float) -> bool:
    """Take the draft's lock for the session's transaction (a Postgres advisory lock on the
    draft's id), waiting at most ``wait_s``; False when another transaction kept it that long.
    Changes of one draft (update, send, delete) hold it from reading the server's copy to
    committing the new one, so a second change starts from what the first left."""
    session.execute(
        select(func.set_config("lock_timeout", f"{max(1, int(wait_s * 1000))}ms", True))
    )
    try:
        session.execute(
            select(func.pg_advisory_xact_lock(func.hashtextextended(f"draft:{draft_id}", 0)))
        )
    except OperationalError as exc:  # lock_timeout: SQLSTATE 55P03
        if getattr(exc.orig, "sqlstate", None) == "55P03":
            session.rollback()
            return False
        raise
    return True


def get_draft(session: Session, grant_id: str, draft_id: str) -> Message | None:
    """One draft of a grant (None when absent, not a draft, or not a UUID)."""
    try:
        uuid.UUID(draft_id)
    except ValueError:
        return None
    message = session.scalar(
        select(Message).where(Message.id == draft_id, Message.grant_id == grant_id)
    )
    if message is None or not drafts_among(session, [message.id]):
        return None
    return message


def message_with_header(session: Session, grant_id: str, message_id_header: str) -> Message | None:
    """The grant's message whose Message-ID header is ``message_id_header`` (the MD5 index of
    migration 0501 finds it), not counting drafts' own copies."""
    return session.scalar(
        select(Message)
        .where(
            Message.grant_id == grant_id,
            func.md5(Message.message_id_header) == text_key(message_id_header),
            Message.message_id_header == message_id_header,
        )
        .order_by(Message.date)
        .limit(1)
    )


def replace_content(
    session: Session,
    message: Message,
    item: ParsedItem,
    *,
    folder_id: str,
    uidvalidity: int,
) -> None:
    """The draft ``message`` is now the copy ``item`` (at its UID in ``folder_id``): its
    columns, attachments and placement become the new copy's, its id and thread stay.

    A sync that stored the new copy first (as a message of its own) loses that row to this one.
    """
    repo = MessageRepository(session)
    repo.lock_grant(message.grant_id)
    columns = message_columns(item)
    session.execute(
        delete(Message).where(
            Message.grant_id == message.grant_id,
            Message.identity_key == columns["identity_key"],
            Message.id != message.id,
        )
    )
    session.execute(update(Message).where(Message.id == message.id).values(**columns))
    session.execute(delete(Attachment).where(Attachment.message_id == message.id))
    repo.insert_attachments(
        attachment_columns(item.parsed, message_id=message.id, grant_id=message.grant_id)
    )
    session.execute(
        delete(Placement).where(
            Placement.message_id == message.id, Placement.folder_id == folder_id
        )
    )
    repo.upsert_placements(
        [
            {
                "folder_id": folder_id,
                "uid": item.uid,
                "uidvalidity": uidvalidity,
                "message_id": message.id,
                "flags": list(item.flags),
                "modseq": item.modseq,
            }
        ]
    )
    when = columns["date"]
    if message.thread_id is not None and isinstance(when, datetime):
        repo.touch_threads({message.thread_id: when})
    session.expire(message)


def forget_draft(session: Session, message_id: str) -> None:
    """Delete a draft's row (its copies were expunged from the server)."""
    MessageRepository(session).lock_grant(
        str(session.scalar(select(Message.grant_id).where(Message.id == message_id)))
    )
    session.execute(delete(Message).where(Message.id == message_id))
