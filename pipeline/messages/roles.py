"""The folder a role names: the one query every caller asks "which folder is the grant's
Trash (Sent, Drafts)?" through, so they all choose the same folder.

When several folders claim one role (a server's special-use flags, or a name guessed from a
preset, can give two), the first by name, then by id, wins. The query lives here, in the lowest
package that reads folder rows: :mod:`pipeline.messages` sits below :mod:`pipeline.folders` (the
folder routes' service deletes a folder's messages), and the Trash a deleted message moves to
is looked up here; :meth:`pipeline.folders.repository.FolderRepository.by_role` and the Sent
copy (:mod:`pipeline.outbound.sent_copy`) ask the same function, and the listener's one query
over every grant (:meth:`pipeline.listener.repository.WatchRepository.watched`) orders by
:data:`ROLE_PREFERENCE`. Nothing here commits.
"""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from pipeline.models import Folder

TRASH_ROLE = "trash"  # where a deleted message goes (pipeline.messages.service)
SENT_ROLE = "sent"  # where the copy of a sent message is filed (pipeline.outbound.sent_copy)
DRAFTS_ROLE = "drafts"  # what holds drafts (pipeline.drafts) and a use_draft send's copy


# Of the folders that claim one role, the first in this order is the role's folder.
ROLE_PREFERENCE = (Folder.name, Folder.id)


def folder_with_role(session: Session, grant_id: str, role: str) -> Folder | None:
    """The grant's folder with ``role`` (the first by name, then id, if several claim it)."""
    return session.scalar(
        select(Folder)
        .where(Folder.grant_id == grant_id, Folder.role == role)
        .order_by(*ROLE_PREFERENCE)
        .limit(1)
    )
