"""IMAP SEARCH criteria the store cannot answer, asked of the server folder by folder.

``UID SEARCH`` runs in each folder (the request's ``in`` folders, else every synced folder of
the grant) on one session, under one total deadline; the UIDs found are mapped to the stored
messages placed there under the UIDVALIDITY the server reported, so the answer is the server's
within the synced window (mail the store does not hold is not listed). At most
:data:`MAX_MATCHES` UIDs in all are taken: a broader search is refused with a message that says
to narrow it, never cut silently.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from pipeline.errors import ImapFolderError
from pipeline.imap import ImapSession
from pipeline.models import Folder, Placement
from pipeline.search.criteria import Node, needs_utf8, to_imap

MAX_MATCHES = 100_000  # UIDs one search may return across its folders
SEARCH_DEADLINE_S = 20.0  # SELECT + UID SEARCH of every folder, in all
MAX_FOLDERS = 200  # folders one search visits


class TooManyMatches(Exception):
    """The server matched more messages than one search may list."""


@dataclass(frozen=True)
class FolderRef:
    """A folder to search: id and the name the server knows it by."""

    id: str
    raw_name: str


def folders_to_search(
    session: Session, grant_id: str, folder_ids: Sequence[str] | None
) -> list[FolderRef]:
    """The grant's folders a search visits: those named, else every folder with mail stored."""
    query = select(Folder.id, Folder.raw_name).where(
        Folder.grant_id == grant_id, Folder.uidvalidity.is_not(None)
    )
    if folder_ids is not None:
        query = query.where(Folder.id.in_(list(folder_ids)))
    rows = session.execute(query.order_by(Folder.raw_name).limit(MAX_FOLDERS + 1)).all()
    return [FolderRef(str(i), str(n)) for i, n in rows]


def command(imap: ImapSession, node: Node) -> list[bytes]:
    """The ``UID SEARCH`` arguments for ``node`` on this server (CHARSET when not ASCII)."""
    literals = imap.has("LITERAL+") or imap.has("LITERAL-")
    criteria = to_imap(node, literals=literals)
    return [b"CHARSET", b"UTF-8", criteria] if needs_utf8(node) else [criteria]


def search_uids(
    imap: ImapSession, folders: Sequence[FolderRef], node: Node, *, deadline_s: float
) -> dict[str, tuple[int, list[int]]]:
    """``folder id -> (UIDVALIDITY, UIDs)`` the server matches, folder by folder.

    A folder the server no longer has (SELECT answered NO) matches nothing.

    Raises:
        TooManyMatches: more than :data:`MAX_MATCHES` UIDs in all.
        ImapError: the server refused, failed or ran past the deadline (the session is then
            not reusable).
    """
    args = command(imap, node)
    found: dict[str, tuple[int, list[int]]] = {}
    total = 0
    with imap.raw.total_deadline(deadline_s, setting=f"the search's total of {deadline_s:g} s"):
        for folder in folders:
            try:
                info = imap.select(folder.raw_name, readonly=True)
            except ImapFolderError:
                continue  # gone from the server since the last sync: nothing of it matches
            uids = imap.search_uids(*args)  # type: ignore[arg-type]
            total += len(uids)
            if total > MAX_MATCHES:
                raise TooManyMatches(f"more than {MAX_MATCHES} matches")
            found[folder.id] = (info.uidvalidity, uids)
    return found


def message_ids(session: Session, found: dict[str, tuple[int, list[int]]]) -> list[str]:
    """Stored message ids placed at the UIDs found (each id once)."""
    ids: set[str] = set()
    for folder_id, (uidvalidity, uids) in found.items():
        for start in range(0, len(uids), 10_000):
            chunk = uids[start : start + 10_000]
            rows = session.scalars(
                select(Placement.message_id).where(
                    Placement.folder_id == folder_id,
                    Placement.uidvalidity == uidvalidity,
                    Placement.uid.in_(chunk),
                )
            )
            ids.update(str(r) for r in rows)
    return sorted(ids)
