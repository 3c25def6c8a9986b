"""What the message and thread endpoints share: list filters and the target folder of a change.

``GET /messages`` and ``GET /threads`` take the same filter parameters (``in``, ``unread``,
``starred``, ``subject``, ``from``/``to``/``cc``/``bcc``/``any_email``, ``has_attachment``);
:func:`list_filter` reads them once, as a FastAPI dependency, into a
:class:`~pipeline.api.queries.MessageFilter` that each endpoint completes with its own
parameters. ``PUT`` of a message and of a thread move to the one folder :func:`target_folder`
names.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

from fastapi import Depends, Query
from sqlalchemy.orm import Session

from pipeline.api import queries
from pipeline.api.deps import Db, LiveGrant
from pipeline.api.errors import invalid_request, not_found
from pipeline.models import Folder, Grant

MAX_UNIX_S = 253_402_300_799  # 9999-12-31T23:59:59Z, the last second datetime can hold
MAX_FILTER_VALUES = 50  # addresses or folders in one filter

Timestamp = Annotated[int | None, Query(ge=0, le=MAX_UNIX_S)]
AddressList = Annotated[list[str] | None, Query(max_length=MAX_FILTER_VALUES)]


def from_unix(value: int | None) -> datetime | None:
    """A unix timestamp as an aware UTC datetime."""
    return datetime.fromtimestamp(value, UTC) if value is not None else None


def _addresses(values: list[str] | None) -> list[str]:
    """Repeated parameters and comma-separated lists, flattened."""
    out = [v.strip() for raw in values or [] for v in raw.split(",") if v.strip()]
    if len(out) > MAX_FILTER_VALUES:
        raise invalid_request(f"At most {MAX_FILTER_VALUES} addresses per filter.")
    return out


def resolve_folders(db: Session, grant: Grant, values: list[str] | None) -> list[str] | None:
    """Folder ids for an ``in`` filter (ids or names).

    Raises:
        ApiError: 404 when a folder is unknown.
    """
    names = [v.strip() for raw in values or [] for v in raw.split(",") if v.strip()]
    if not names:
        return None
    if len(names) > MAX_FILTER_VALUES:
        raise invalid_request(f"At most {MAX_FILTER_VALUES} folders in `in`.")
    ids: list[str] = []
    for name in names:
        folder = queries.find_folder(db, grant.id, name)
        if folder is None:
            raise not_found(f"No folder {name!r} for this grant: GET .../folders lists them.")
        ids.append(folder.id)
    return ids


# Nylas list parameters this engine does not answer. A filter that is not applied must not be
# silently ignored (the client would take an unfiltered page for a filtered one): each is a 400
# saying why (README, HTTP API).
SEARCH_NATIVE_REFUSAL = (
    "search_query_native is not supported here yet: filter with subject, from, to, cc, bcc, "
    "any_email, in, unread, starred, has_attachment and the date parameters."
)
METADATA_REFUSAL = (
    "metadata_pair is not supported: this server does not store metadata on messages yet."
)
QUERY_IMAP_REFUSAL = (
    "query_imap=true is not supported: lists are answered from the mail this server has "
    "synced (the last 90 days of every folder), never by asking the IMAP server."
)


def refuse_unsupported(
    search_query_native: Annotated[str | None, Query(max_length=1000)] = None,
    metadata_pair: Annotated[str | None, Query(max_length=1000)] = None,
    query_imap: bool | None = None,
) -> None:
    """400 for the list parameters this engine cannot honour (never ignored)."""
    if search_query_native is not None:
        raise invalid_request(SEARCH_NATIVE_REFUSAL)
    if metadata_pair is not None:
        raise invalid_request(METADATA_REFUSAL)
    if query_imap:
        raise invalid_request(QUERY_IMAP_REFUSAL)


def list_filter(
    db: Db,
    grant: LiveGrant,
    in_: Annotated[list[str] | None, Query(alias="in", max_length=MAX_FILTER_VALUES)] = None,
    unread: bool | None = None,
    starred: bool | None = None,
    subject: Annotated[str | None, Query(max_length=998)] = None,
    from_: Annotated[list[str] | None, Query(alias="from", max_length=MAX_FILTER_VALUES)] = None,
    to: AddressList = None,
    cc: AddressList = None,
    bcc: AddressList = None,
    any_email: AddressList = None,
    has_attachment: bool | None = None,
    _unsupported: None = Depends(refuse_unsupported),
) -> queries.MessageFilter:
    """The filter parameters messages and threads share, as a MessageFilter."""
    return queries.MessageFilter(
        folder_ids=resolve_folders(db, grant, in_),
        unread=unread,
        starred=starred,
        subject=subject or None,
        from_=_addresses(from_),
        to=_addresses(to),
        cc=_addresses(cc),
        bcc=_addresses(bcc),
        any_email=_addresses(any_email),
        has_attachment=has_attachment,
    )


ListFilter = Annotated[queries.MessageFilter, Depends(list_filter)]


def target_folder(db: Session, grant: Grant, folders: list[str] | None) -> Folder | None:
    """The folder a ``PUT`` body's ``folders`` names (None: no move).

    Raises:
        ApiError: 400 unless exactly one folder is named; 404 when it is unknown.
    """
    if folders is None:
        return None
    if len(folders) != 1:
        raise invalid_request(
            "folders must name exactly one folder: an IMAP message lives in one folder."
        )
    folder = queries.find_folder(db, grant.id, folders[0])
    if folder is None:
        raise not_found(f"No folder {folders[0]!r} for this grant.")
    return folder
