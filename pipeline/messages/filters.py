"""The filters of a message list (:class:`MessageFilter`: those of ``GET /messages``, and of
threads, applied to their messages) as conditions on a message (:func:`message_conditions`),
each written so that an index can serve it (:mod:`pipeline.messages.queries` lists them), and
the participant keys of the address filters (the expression of migration 0303's GIN index)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Text,
    cast,
    collate,
    exists,
    false,
    func,
    literal_column,
    select,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB

from pipeline.messages import metadata
from pipeline.messages.repository import text_key
from pipeline.models import Folder, Placement
from pipeline.pages import is_uuid
from pipeline.search.store import StoreCondition


@dataclass
class MessageFilter:
    """The list filters of ``GET /messages`` (and of threads, applied to their messages)."""

    folder_ids: list[str] | None = None
    # folder_ids taken from the request without a lookup (ids as the API gives them): the page
    # statement counts those of the grant (a ``folders_found`` column), and the caller looks
    # them up (a 404 for an unknown one) only when that count says one is not the grant's
    folders_unchecked: bool = False
    unread: bool | None = None
    starred: bool | None = None
    subject: str | None = None
    from_: list[str] = field(default_factory=list)
    to: list[str] = field(default_factory=list)
    cc: list[str] = field(default_factory=list)
    bcc: list[str] = field(default_factory=list)
    any_email: list[str] = field(default_factory=list)
    thread_id: str | None = None
    received_before: datetime | None = None
    received_after: datetime | None = None
    has_attachment: bool | None = None
    # messages held in no folder of the grant with this role (the messages list leaves drafts
    # out this way: a subquery, not a lookup before the page query, which cost a round trip)
    not_in_role: str | None = None
    metadata_pair: tuple[str, str] | None = None  # (key1..key5, value)
    # search_query_native, as a condition on the message entity (pipeline.api.search)
    search: Callable[[Any], ColumnElement[bool]] | None = None


_EMAILS_PATH: ColumnElement[Any] = literal_column("'$[*].email'::jsonpath")


def _emails(addresses: Any) -> ColumnElement[Any]:
    """Lower-cased addresses of a JSONB participants column, as a JSONB array of strings."""
    return func.jsonb_path_query_array(  # type: ignore[no-any-return]
        cast(func.lower(cast(addresses, Text)), JSONB), _EMAILS_PATH
    )


def participant_keys(m: Any) -> ColumnElement[Any]:
    """``<grant>:md5(<address>)`` of everyone in From, To, Cc and Bcc: the GIN-indexed
    expression of migrations 0303 and 0501 (keep the two identical)."""
    people = m.from_.op("||")(m.to).op("||")(m.cc).op("||")(m.bcc)
    return func.api_participant_keys(m.grant_id, people)  # type: ignore[no-any-return]


# A thread's participants are its addresses each once, the first spelling kept, compared with
# the ASCII letters folded and nothing else: the rule Python (threads._participants) and
# Postgres (_thread_json_parts) can both apply exactly. Postgres' lower() follows the
# database's locale and Python's str.lower() all of Unicode, and the two differ past ASCII
# ('İ' is 'i' to one, 'i̇' to the other); an address's local part is the server's to compare
# (RFC 5321), and its domain is ASCII (IDNA) or compared by the receiving system.
_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")


def participant_key(address: str) -> str:
    """The key two spellings of one participant share: ``address`` with ASCII letters
    lowercased (:func:`participant_key_sql` in Postgres)."""
    return address.translate(_ASCII_LOWER)


def participant_key_sql(address: ColumnElement[Any]) -> ColumnElement[str]:
    """:func:`participant_key` in Postgres: lower() in the "C" collation folds ASCII only."""
    return func.lower(collate(address, "C"))  # type: ignore[no-any-return]


def address_lower(address: str) -> str:
    """``address`` lowercased as Postgres' ``lower()`` lowers the stored addresses (the GIN
    keys of ``api_participant_keys``, the JSONB address filters): one character at a time, by
    Unicode's simple mapping. ``str.lower()`` differs in two places: it maps 'İ' to 'i' plus a
    combining dot (the full mapping) and a word's final capital sigma to U+03C2 (context), where
    Postgres gives 'i' and U+03C3; an address asked for in Python's lowering missed its own
    message."""
    return "".join("i" if ch == "\u0130" else ch.lower() for ch in address)


def _lowered(emails: Sequence[str]) -> list[str]:
    return sorted({address_lower(e.strip()) for e in emails if e.strip()})


# The address filters: the field of :class:`MessageFilter`, and the participants column each
# checks (None: any of From, To, Cc and Bcc)
ADDRESS_FILTERS: tuple[tuple[str, str | None], ...] = (
    ("any_email", None),
    ("from_", "from_"),
    ("to", "to"),
    ("cc", "cc"),
    ("bcc", "bcc"),
)


def address_values(grant_id: str, emails: Sequence[str]) -> tuple[list[str], list[str]]:
    """What an address filter asking for ``emails`` binds: the participant keys it looks up in
    the GIN index, and the lowered addresses its header is checked for."""
    lowered = _lowered(emails)
    return [f"{grant_id}:{text_key(e)}" for e in lowered], lowered


def address_conditions(
    m: Any, column: str | None, keys: Any, emails: Any
) -> list[ColumnElement[bool]]:
    """The conditions of an address filter on the message entity ``m``, with its values
    (:func:`address_values`) as lists or as bound parameters: the indexed keys narrow the rows
    to the grant's matches, and the header ``column`` (None: any) is checked after."""
    conds: list[ColumnElement[bool]] = [participant_keys(m).op("&&")(cast(keys, ARRAY(Text)))]
    if column is not None:
        # COALESCE hides the check from the planner's default estimate for `?|` (0.5 % of
        # rows, which made it read and sort every match of a frequent address, 1.5 s at a
        # million messages, rather than walk the date index to the first page, 20 ms)
        header = _emails(getattr(m, column)).op("?|")(cast(emails, ARRAY(Text)))
        conds.append(func.coalesce(header, false()))
    return conds


def _like_escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def folders_in_search(flt: MessageFilter) -> MessageFilter:
    """``flt`` without ``folder_ids`` when its store-answered search already asks for a copy in
    those folders (of their current UIDVALIDITY: stricter than the ``in`` filter's EXISTS).
    The second EXISTS changed no row, but Postgres took it for another 1 in 5 and hashed every
    copy in the folder (SUBJECT invoice + in=Archive: 20,000 placements for 206 matches)."""
    search = flt.search
    if (
        flt.folder_ids is not None
        and isinstance(search, StoreCondition)
        and search.folder_ids is not None
        and set(search.folder_ids) == set(flt.folder_ids)
    ):
        return replace(flt, folder_ids=None)
    return flt


def message_conditions(m: Any, grant_id: str, flt: MessageFilter) -> list[ColumnElement[bool]]:
    """WHERE conditions of a filter, on the message entity (or alias) ``m`` of ``grant_id``."""
    conds: list[ColumnElement[bool]] = []
    flt = folders_in_search(flt)
    if flt.folder_ids is not None:
        conds.append(
            exists().where(Placement.message_id == m.id, Placement.folder_id.in_(flt.folder_ids))
        )
    if flt.not_in_role is not None:
        role_folders = select(Folder.id).where(
            Folder.grant_id == grant_id, Folder.role == flt.not_in_role
        )
        conds.append(
            ~exists().where(Placement.message_id == m.id, Placement.folder_id.in_(role_folders))
        )
    if flt.unread is not None:
        conds.append(m.unread == flt.unread)  # `= true` (not IS TRUE) proves partial indexes
    if flt.starred is not None:
        conds.append(m.starred == flt.starred)
    if flt.has_attachment is not None:
        conds.append(m.has_attachments == flt.has_attachment)
    if flt.subject:
        conds.append(m.subject.ilike("%" + _like_escape(flt.subject) + "%", escape="\\"))
    if flt.thread_id is not None:
        conds.append(m.thread_id == flt.thread_id if is_uuid(flt.thread_id) else false())
    if flt.metadata_pair is not None:
        conds.extend(metadata.pair_condition(m, *flt.metadata_pair))
    if flt.received_before is not None:
        conds.append(m.date < flt.received_before)
    if flt.received_after is not None:
        conds.append(m.date > flt.received_after)
    if flt.search is not None:
        conds.append(flt.search(m))
    for name, column in ADDRESS_FILTERS:
        emails = getattr(flt, name)
        if emails:
            conds.extend(address_conditions(m, column, *address_values(grant_id, emails)))
    return conds
