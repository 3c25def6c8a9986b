"""Flag changes, expunges and moves of an already synced folder.

An incremental run reads what changed since the modseq its stored flags are current as of:
with QRESYNC one ``CHANGEDSINCE ... VANISHED`` fetch gives both flags and expunges; otherwise
CONDSTORE ``CHANGEDSINCE`` (or, without it, a bounded refresh of the most recent UIDs) gives
the flags and a UID diff the expunges. A message whose last placement vanished is only marked
orphaned: a move shows up as an expunge in one folder and an arrival in another, and keeps
its id; :func:`pipeline.messages.orphans.finalize_orphans` deletes what stayed in no folder
past the grace.
"""

from __future__ import annotations

from pipeline import notifications
from pipeline.messages.repository import MessageRepository
from pipeline.messages.views import stored_message_views
from pipeline.sync.plan import FolderRun, Opened

FLAG_REFRESH_LIMIT = 2000  # without CONDSTORE, re-read the flags of this many recent UIDs


def apply_changes(run: FolderRun, opened: Opened) -> int:
    """Bring flags and expunges of an already synced folder up to date.

    With QRESYNC, one ``CHANGEDSINCE ... VANISHED`` fetch gives both and nothing else is read.
    Otherwise flags: CONDSTORE ``CHANGEDSINCE`` where the server has it, else a bounded refresh
    of the most recent UIDs; expunges: the stored UIDs the server no longer has. A message
    whose last placement vanished is only marked orphaned: a move shows up as an expunge here
    and an arrival elsewhere, and must keep its id (see
    :func:`pipeline.messages.orphans.finalize_orphans`).

    Returns:
        How many notifications were written to the webhook outbox.
    """
    imap, sessions, folder_id = run.imap, run.sessions, run.folder_id
    uidvalidity, server_modseq = opened.info.uidvalidity, opened.info.highestmodseq
    # the modseq the stored flags are known to be current as of (None: unknown)
    since = opened.stored_modseq if server_modseq is not None else None
    changes = None
    if since is not None and imap.qresync_enabled:
        # QRESYNC: HIGHESTMODSEQ moves with every flag change and expunge, and one command
        # lists both; only the placements they touch are read (not the whole folder).
        if server_modseq is not None and server_modseq <= since:
            return 0
        changes = imap.fetch_changes_since(since)
    if changes is not None:
        metas, vanished = changes
        with sessions.begin() as db:
            current = MessageRepository(db).placements_of(
                folder_id, uidvalidity, {m.uid for m in metas} | vanished
            )
        gone = vanished & current.keys()
    else:
        with sessions.begin() as db:
            current = MessageRepository(db).placements_of(folder_id, uidvalidity)
        if not current:
            return 0
        if since is not None and imap.condstore_enabled:
            moved = server_modseq is not None and server_modseq > since
            metas = imap.fetch_changed_since(since) if moved else []
        else:
            metas = imap.fetch_meta(sorted(current)[-FLAG_REFRESH_LIMIT:])
        gone = set(current) - imap.present_uids(sorted(current))
    with sessions.begin() as db:
        repo = MessageRepository(db)
        updated: list[str] = []
        for meta in metas:
            if meta.uid not in current or meta.uid in gone:
                continue
            message_id, flags = current[meta.uid]
            if sorted(meta.flags) != sorted(flags):
                repo.set_placement_flags(folder_id, uidvalidity, meta.uid, meta.flags, meta.modseq)
                updated.append(message_id)
        left = repo.drop_placements(folder_id, uidvalidity, gone)
        orphans = repo.unplaced(left)
        repo.mark_orphaned(orphans, run.now)
        updated.extend(m for m in left if m not in orphans)  # still held by another folder
        # the message-level flags follow every copy (combined_flags), not this folder's alone
        repo.refresh_flags(updated)
        if opened.live and opened.notify:
            return notifications.messages(
                db, run.grant_id, "message.updated", stored_message_views(db, updated)
            )
    return 0
