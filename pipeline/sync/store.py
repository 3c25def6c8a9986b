"""Normalize fetched messages and write a batch of them: messages, placements, attachments,
threads and failures, in the caller's transaction.

Parsing (CPU) happens in :func:`parse_batch`, outside any transaction; :func:`write_batch` holds
the grant's advisory lock only for the short write.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

from sqlalchemy.orm import Session

from pipeline.errors import MessageParseError
from pipeline.imap import FetchedMessage
from pipeline.messages.repository import MessageRepository
from pipeline.mime import ParsedMessage, normalize_subject, parse_message
from pipeline.models import new_id

log = logging.getLogger(__name__)

ERROR_TEXT_LIMIT = 500  # characters of a parse error kept in sync_failures


@dataclass(frozen=True)
class ParsedItem:
    """A fetched message and its normalized form."""

    uid: int
    flags: tuple[str, ...]
    internaldate: datetime
    size: int
    modseq: int | None
    parsed: ParsedMessage


@dataclass(frozen=True)
class FailedItem:
    """A fetched message that could not be normalized."""

    uid: int
    error: str


@dataclass
class WriteResult:
    """What a batch write did."""

    new_message_ids: list[str] = field(default_factory=list)
    existing_message_ids: list[str] = field(default_factory=list)
    failed: int = 0


def parse_batch(fetched: Sequence[FetchedMessage]) -> tuple[list[ParsedItem], list[FailedItem]]:
    """Normalize messages; one that cannot be parsed is reported, never raised."""
    items: list[ParsedItem] = []
    failures: list[FailedItem] = []
    for message in fetched:
        try:
            parsed = parse_message(message.raw)
        except MessageParseError as exc:
            failures.append(FailedItem(message.uid, str(exc)[:ERROR_TEXT_LIMIT]))
            continue
        except Exception as exc:  # a parser bug must cost one message, not the folder
            log.exception("unexpected parser failure", extra={"uid": message.uid})
            failures.append(
                FailedItem(message.uid, f"{type(exc).__name__}: {exc}"[:ERROR_TEXT_LIMIT])
            )
            continue
        items.append(
            ParsedItem(
                uid=message.uid,
                flags=message.flags,
                # a server that garbled INTERNALDATE: the Date header, else the time we saw it
                internaldate=message.internaldate or parsed.date or datetime.now(UTC),
                size=message.size,
                modseq=message.modseq,
                parsed=parsed,
            )
        )
    return items, failures


def _clean(value: str) -> str:
    # Postgres text and JSONB cannot hold NUL characters; broken mail sometimes carries them.
    return value.replace("\x00", "\ufffd") if "\x00" in value else value


def _people(values: Sequence[object]) -> list[dict[str, str]]:
    out: list[dict[str, str]] = []
    for p in values:
        d = p.as_dict()  # type: ignore[attr-defined]
        out.append({k: _clean(v) for k, v in d.items()})
    return out


def _is_reply(parsed: ParsedMessage) -> bool:
    if parsed.in_reply_to or parsed.references:
        return True
    plain = " ".join(parsed.subject.split()).casefold()
    return bool(plain) and normalize_subject(parsed.subject) != plain


def message_columns(item: ParsedItem) -> dict[str, object]:
    """The stored columns of a message taken from its fetched, normalized form (all but
    ``id``, ``grant_id`` and ``thread_id``)."""
    p = item.parsed
    return {
        "identity_key": p.identity_key,
        "header_hash": p.header_hash,
        "message_id_header": _clean(p.message_id) if p.message_id else None,
        "in_reply_to": _clean(p.in_reply_to) if p.in_reply_to else None,
        "references": [_clean(r) for r in p.references],
        "subject": _clean(p.subject),
        "from_": _people(p.from_),
        "to": _people(p.to),
        "cc": _people(p.cc),
        "bcc": _people(p.bcc),
        "reply_to": _people(p.reply_to),
        "date": p.date or item.internaldate,
        "received_at": item.internaldate,
        "snippet": _clean(p.snippet),
        "body": _clean(p.body),
        "headers": [{"name": _clean(n), "value": _clean(v)} for n, v in p.headers],
        "size": item.size,
        "unread": "\\Seen" not in item.flags,
        "starred": "\\Flagged" in item.flags,
        "flags": list(item.flags),
        "has_attachments": any(not a.is_inline for a in p.attachments),
    }


def attachment_columns(
    parsed: ParsedMessage, *, message_id: str, grant_id: str
) -> list[dict[str, object]]:
    """The attachment rows of a normalized message."""
    return [
        {
            "id": new_id(),
            "message_id": message_id,
            "grant_id": grant_id,
            "filename": _clean(a.filename) if a.filename else None,
            "content_type": _clean(a.content_type)[:255],
            "size": a.size,
            "content_id": _clean(a.content_id) if a.content_id else None,
            "is_inline": a.is_inline,
            "part_path": a.part_path,
        }
        for a in parsed.attachments
    ]


def write_batch(
    session: Session,
    *,
    grant_id: str,
    folder_id: str,
    uidvalidity: int,
    items: Sequence[ParsedItem],
    failures: Sequence[FailedItem],
) -> WriteResult:
    """Store a batch of normalized messages found in one folder. Idempotent; never commits.

    A message already known by identity (a copy in another folder, a move, a re-run) keeps its
    id and only gains a placement.
    """
    repo = MessageRepository(session)
    result = WriteResult(failed=len(failures))
    repo.lock_grant(grant_id)
    repo.record_failures(
        [
            {
                "grant_id": grant_id,
                "folder_id": folder_id,
                "uidvalidity": uidvalidity,
                "uid": f.uid,
                "error": _clean(f.error),
            }
            for f in failures
        ]
    )
    if not items:
        return result
    known = repo.ids_by_identity(grant_id, (i.parsed.identity_key for i in items))
    fresh: dict[str, ParsedItem] = {}
    for item in items:
        if item.parsed.identity_key not in known:
            fresh.setdefault(item.parsed.identity_key, item)
    threads = _assign_threads(repo, grant_id, list(fresh.values()))
    message_rows = []
    attachment_rows = []
    ids: dict[str, str] = {key: mid for key, (mid, _) in known.items()}
    for key, item in fresh.items():
        mid = new_id()
        ids[key] = mid
        message_rows.append(
            {"id": mid, "grant_id": grant_id, "thread_id": threads[key], **message_columns(item)}
        )
        attachment_rows.extend(attachment_columns(item.parsed, message_id=mid, grant_id=grant_id))
    repo.insert_messages(message_rows)
    repo.insert_attachments(attachment_rows)
    repo.upsert_placements(
        [
            {
                "folder_id": folder_id,
                "uid": i.uid,
                "uidvalidity": uidvalidity,
                "message_id": ids[i.parsed.identity_key],
                "flags": list(i.flags),
                "modseq": i.modseq,
            }
            for i in items
        ]
    )
    result.new_message_ids = [ids[k] for k in fresh]
    result.existing_message_ids = sorted({mid for mid, _ in known.values()})
    # A copy of a known message (or a second copy within this batch) may change what the
    # message-level flags are (unread if any copy is unseen, starred if any is flagged).
    counts: dict[str, int] = {}
    for item in items:
        counts[item.parsed.identity_key] = counts.get(item.parsed.identity_key, 0) + 1
    again = [k for k, n in counts.items() if n > 1 and k in fresh]
    repo.refresh_flags([*result.existing_message_ids, *(ids[k] for k in again)])
    return result


def _assign_threads(
    repo: MessageRepository, grant_id: str, fresh: list[ParsedItem]
) -> dict[str, str]:
    """Pick a thread for each new message: References / In-Reply-To first, then subject."""
    if not fresh:
        return {}
    fresh = sorted(fresh, key=lambda i: i.parsed.date or i.internaldate)
    own_ids = {i.parsed.message_id for i in fresh if i.parsed.message_id}
    refs: set[str] = set()
    for i in fresh:
        refs.update(i.parsed.references)
        if i.parsed.in_reply_to:
            refs.add(i.parsed.in_reply_to)
    by_msgid = repo.threads_by_message_ids(grant_id, refs | own_ids)
    by_child = repo.threads_referencing(grant_id, own_ids)
    by_subject = repo.threads_by_subject(
        grant_id, (normalize_subject(i.parsed.subject) for i in fresh)
    )
    assigned: dict[str, str] = {}
    new_threads: dict[str, dict[str, object]] = {}
    latest: dict[str, datetime] = {}
    merges: list[tuple[str, list[str]]] = []
    for item in fresh:
        p = item.parsed
        when = p.date or item.internaldate
        subject_key = normalize_subject(p.subject)
        linked = [p.in_reply_to, *reversed(p.references), p.message_id]
        candidates: list[str] = []
        for ref in linked:
            if ref and ref in by_msgid and by_msgid[ref] not in candidates:
                candidates.append(by_msgid[ref])
        if p.message_id and p.message_id in by_child and by_child[p.message_id] not in candidates:
            candidates.append(by_child[p.message_id])
        if candidates:
            thread_id = candidates[0]
            merged = [c for c in candidates[1:] if c not in new_threads]
            if merged:
                merges.append((thread_id, merged))
                for mapping in (by_msgid, by_child, by_subject, assigned):
                    for key, tid in list(mapping.items()):
                        if tid in merged:
                            mapping[key] = thread_id
                for tid in merged:
                    latest.pop(tid, None)
        elif subject_key and _is_reply(p) and subject_key in by_subject:
            thread_id = by_subject[subject_key]
        else:
            thread_id = new_id()
            new_threads[thread_id] = {
                "id": thread_id,
                "grant_id": grant_id,
                "subject_key": _clean(subject_key),
                "subject": _clean(p.subject),
                "latest_message_at": when,
            }
        assigned[p.identity_key] = thread_id
        if p.message_id:
            by_msgid[p.message_id] = thread_id
        if subject_key:
            by_subject.setdefault(subject_key, thread_id)
        if thread_id not in new_threads:
            latest[thread_id] = max(latest.get(thread_id, when), when)
        else:
            current = new_threads[thread_id]["latest_message_at"]
            assert isinstance(current, datetime)
            new_threads[thread_id]["latest_message_at"] = max(current, when)
    repo.insert_threads(list(new_threads.values()))
    for into, others in merges:  # after the insert: ``into`` may be a thread made just now
        repo.merge_threads(into, others)
    repo.touch_threads(latest)
    return assigned
