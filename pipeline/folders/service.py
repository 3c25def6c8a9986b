"""Folders a person creates, renames (or moves) and deletes: the change is made on the IMAP server
first (CREATE, RENAME, DELETE), then recorded with its notification (``folder.created``,
``folder.updated`` for the folder and each subfolder a rename carried along, ``folder.deleted``)
as outbox rows. The API's folder routes call these; so can a task or the CLI.

The IMAP work runs on a session of :func:`pipeline.grants.interactive.grant_imap`. Nothing here
commits: the caller commits, then has the webhook outbox dispatched.

Errors: :class:`~pipeline.errors.InvalidRequest` for a name or place the folder cannot have
(its message says why) or a change the server refused; the session's own
(:class:`~pipeline.limits.RateLimited`, :class:`~pipeline.errors.ImapError`).
"""

from __future__ import annotations

from sqlalchemy.orm import Session

from pipeline import notifications
from pipeline.errors import InvalidRequest
from pipeline.folders.repository import FolderRepository
from pipeline.folders.state import FolderState
from pipeline.folders.views import stored_folder_view
from pipeline.grants.interactive import Interactive, grant_imap
from pipeline.messages.repository import MessageRepository
from pipeline.models import Folder, Grant

_NOT_IN_NAMES = "\r\n\x00*%"  # line breaks and NUL break the command; * and % are LIST wildcards


def parent_name(folder: Folder) -> str | None:
    """The full name of the folder's parent, None for a top folder."""
    if not folder.delimiter or folder.delimiter not in folder.name:
        return None
    return folder.name.rsplit(folder.delimiter, 1)[0]


def checked_name(name: str) -> str:
    """A folder name as given, without surrounding blanks.

    Raises:
        InvalidRequest: It is empty or holds ``*``, ``%``, NUL or a line break.
    """
    name = name.strip()
    if not name or any(ch in name for ch in _NOT_IN_NAMES):
        raise InvalidRequest("A folder name may not be empty or contain *, %, NUL or line breaks.")
    return name


def delimiter_of(db: Session, grant: Grant) -> str | None:
    """The server's hierarchy delimiter, as its folders were listed (None: a flat server)."""
    for folder in FolderRepository(db).listed(grant.id):
        if folder.delimiter:
            return folder.delimiter
    return None


def _refuse_taken(db: Session, grant: Grant, name: str) -> None:
    if FolderRepository(db).find(grant.id, name) is not None:
        raise InvalidRequest(f"A folder named {name!r} exists already.")


def create_folder(
    db: Session, access: Interactive, grant: Grant, name: str, parent: Folder | None
) -> Folder:
    """Create ``name`` (under ``parent``, joined with the server's delimiter) on the server,
    then record it (``folder.created``)."""
    name = checked_name(name)
    if parent is not None:
        delimiter = parent.delimiter or delimiter_of(db, grant)
        if not delimiter:
            raise InvalidRequest("This server has no folder hierarchy: create a top folder.")
        name = parent.name + delimiter + name
    _refuse_taken(db, grant, name)
    with grant_imap(db, access, grant, ops=2) as imap:
        raw_name = imap.create_folder(name)
        listed = {f.raw_name: f for f in imap.list_folders()}
    info = listed.get(raw_name)
    folder = FolderRepository(db).add_created(
        Folder(
            grant_id=grant.id,
            name=info.name if info else name,
            raw_name=raw_name,
            delimiter=info.delimiter if info else delimiter_of(db, grant),
            role=info.role if info else None,
            attributes=list(info.attributes) if info else [],
            state=FolderState.PENDING,
        ),
    )
    notifications.folder(db, "folder.created", stored_folder_view(db, folder))
    return folder


def new_name(
    db: Session, grant: Grant, folder: Folder, name: str | None, parent: Folder | None
) -> str:
    """The full name a rename/move asks for. ``name`` renames the folder where it is (a name
    holding the hierarchy delimiter is a full path, as on create); ``parent`` puts it under
    that folder, joined with the server's delimiter."""
    delimiter = folder.delimiter or delimiter_of(db, grant)
    current_parent = parent_name(folder)
    leaf = (
        folder.name
        if current_parent is None
        else folder.name[len(current_parent) + len(folder.delimiter or "") :]
    )
    new_leaf = leaf if name is None else checked_name(name)
    if parent is not None:
        if not delimiter:
            raise InvalidRequest("This server has no folder hierarchy: folders cannot nest.")
        if parent.id == folder.id or parent.name.startswith(folder.name + delimiter):
            raise InvalidRequest("A folder cannot be moved into itself or its subfolders.")
        return parent.name + delimiter + new_leaf
    if current_parent is not None and delimiter and delimiter not in new_leaf:
        return current_parent + delimiter + new_leaf
    return new_leaf


def check_rename(folder: Folder, name: str | None) -> None:
    """Refuse a rename of the Inbox, or to a name no folder can have (before the new parent is
    looked up: these errors come first).

    Raises:
        InvalidRequest: Which of the two.
    """
    if folder.role == "inbox":
        raise InvalidRequest("The Inbox cannot be renamed or moved.")
    if name is not None:
        checked_name(name)


def rename_folder(
    db: Session,
    access: Interactive,
    grant: Grant,
    folder: Folder,
    name: str | None,
    parent: Folder | None,
) -> bool:
    """Rename and/or move the folder on the server (RENAME), then record it with its subfolders
    (``folder.updated`` each); False when the name stays the same (nothing is sent)."""
    check_rename(folder, name)
    full_name = new_name(db, grant, folder, name, parent)
    if full_name == folder.name:
        return False
    _refuse_taken(db, grant, full_name)
    old_raw = folder.raw_name
    with grant_imap(db, access, grant, ops=1) as imap:
        new_raw = imap.rename_folder(old_raw, full_name)
    renamed = FolderRepository(db).rename_tree(grant.id, old_raw, new_raw, folder.delimiter)
    for each in renamed:
        notifications.folder(db, "folder.updated", stored_folder_view(db, each))
    return True


def delete_folder(db: Session, access: Interactive, grant: Grant, folder: Folder) -> None:
    """Delete the folder on the server (DELETE), then forget it, its placements and the
    messages no other folder holds (``folder.deleted``)."""
    if folder.role == "inbox":
        raise InvalidRequest("The Inbox cannot be deleted.")
    with grant_imap(db, access, grant, ops=1) as imap:
        imap.delete_folder(folder.raw_name)
    notifications.folder(db, "folder.deleted", stored_folder_view(db, folder))
    MessageRepository(db).lock_grant(grant.id)
    FolderRepository(db).delete(folder.id)
