"""What the message and thread endpoints share: list filters and the target folder of a change.

``GET /messages`` and ``GET /threads`` take the same filter parameters (``in``, ``unread``,
``starred``, ``subject``, ``from``/``to``/``cc``/``bcc``/``any_email``, ``has_attachment``,
``metadata_pair``);
:func:`list_filter` reads them once, as a FastAPI dependency, into a
:class:`~pipeline.messages.filters.MessageFilter` that each endpoint completes with its own
parameters. ``PUT`` of a message and of a thread move to the one folder :func:`target_folder`
names.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Annotated

from fastapi import Depends, Query
from pydantic import BaseModel, Field
from sqlalchemy import Connection
from sqlalchemy.orm import Session

from pipeline.api.deps import ApiState, Db, LiveGrant, State
from pipeline.api.errors import invalid_request, not_found
from pipeline.api.search import native_search
from pipeline.folders.repository import FolderRepository, resolve_folder_ids
from pipeline.messages import filters as message_filters
from pipeline.messages import metadata
from pipeline.models import Folder, Grant
from pipeline.pages import is_canonical_uuid
from pipeline.search.criteria import MAX_LENGTH as MAX_SEARCH_LENGTH

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


def resolve_folders(conn: Connection, grant_id: str, values: list[str] | None) -> list[str] | None:
    """Folder ids for an ``in`` filter (ids or names), in one query.

    Raises:
        ApiError: 404 when a folder is unknown.
    """
    names = [v.strip() for raw in values or [] for v in raw.split(",") if v.strip()]
    if not names:
        return None
    if len(names) > MAX_FILTER_VALUES:
        raise invalid_request(f"At most {MAX_FILTER_VALUES} folders in `in`.")
    ids: list[str] = []
    for name, folder_id in zip(names, resolve_folder_ids(conn, grant_id, names), strict=True):
        if folder_id is None:
            raise not_found(f"No folder {name!r} for this grant: GET .../folders lists them.")
        ids.append(folder_id)
    return ids


# Nylas list parameters this engine does not answer. A filter that is not applied must not be
# silently ignored (the client would take an unfiltered page for a filtered one): each is a 400
# saying why (README, HTTP API).
QUERY_IMAP_REFUSAL = (
    "query_imap=true is not supported: lists are answered from the mail this server has "
    "synced (the last 90 days of every folder), never by asking the IMAP server."
)


async def refuse_unsupported(
    query_imap: bool | None = None,
) -> None:
    """400 for the list parameters this engine cannot honour (never ignored); ``async``
    because it never blocks (no threadpool hop)."""
    if query_imap:
        raise invalid_request(QUERY_IMAP_REFUSAL)


Values = Annotated[list[str] | None, Field(max_length=MAX_FILTER_VALUES)]


class FilterParams(BaseModel):
    """The filter parameters messages and threads share (read by :mod:`pipeline.api.params`
    on the lists, whose own parameters come first in their models: a subclass lists this
    class last among its bases)."""

    in_: Annotated[list[str] | None, Field(alias="in", max_length=MAX_FILTER_VALUES)] = None
    unread: bool | None = None
    starred: bool | None = None
    subject: Annotated[str | None, Field(max_length=998)] = None
    from_: Annotated[list[str] | None, Field(alias="from", max_length=MAX_FILTER_VALUES)] = None
    to: Values = None
    cc: Values = None
    bcc: Values = None
    any_email: Values = None
    has_attachment: bool | None = None
    metadata_pair: Annotated[str | None, Field(max_length=1000)] = None
    search_query_native: Annotated[str | None, Field(max_length=MAX_SEARCH_LENGTH)] = None
    query_imap: bool | None = None


def folded_folder_ids(params: FilterParams) -> list[str] | None:
    """The folder ids an ``in`` filter names when its check can ride on the page statement
    (every value an id as the API gives it, as the SDK sends them, and no search, which takes
    the folders too; see :attr:`pipeline.messages.filters.MessageFilter.folders_unchecked`); None
    otherwise (names, or no ``in``): :func:`resolve_folders` looks them up first."""
    if params.search_query_native is not None:
        return None
    names = [v.strip() for raw in params.in_ or [] for v in raw.split(",") if v.strip()]
    if not names or len(names) > MAX_FILTER_VALUES:
        return None
    if not all(is_canonical_uuid(n) for n in names):
        return None
    return list(dict.fromkeys(n.lower() for n in names))


def message_filter(
    conn: Connection,
    api: ApiState,
    grant_id: str,
    params: FilterParams,
    orm: Callable[[], tuple[Session, Grant]],
    *,
    fold_folders: bool = False,
) -> message_filters.MessageFilter:
    """The filter parameters as a MessageFilter (``orm``: a session and the grant's ORM object,
    asked for only by a search the IMAP server answers). ``fold_folders``: folder ids in ``in``
    are not looked up (:func:`folded_folder_ids`); the page statement checks them, and its
    caller looks them up when that check fails (``MessageFilter.folders_unchecked``).

    Raises:
        ApiError: 400 for ``query_imap=true``, a bad ``metadata_pair`` or search, too many
            values; 404 for an unknown folder in ``in``.
    """
    if params.query_imap:
        raise invalid_request(QUERY_IMAP_REFUSAL)
    try:
        pair = (
            metadata.parse_pair(params.metadata_pair) if params.metadata_pair is not None else None
        )
    except metadata.MetadataError as exc:
        raise invalid_request(str(exc)) from exc
    folded = folded_folder_ids(params) if fold_folders else None
    folder_ids = folded if folded is not None else resolve_folders(conn, grant_id, params.in_)
    return message_filters.MessageFilter(
        folder_ids=folder_ids,
        folders_unchecked=folded is not None,
        unread=params.unread,
        starred=params.starred,
        subject=params.subject or None,
        from_=_addresses(params.from_),
        to=_addresses(params.to),
        cc=_addresses(params.cc),
        bcc=_addresses(params.bcc),
        any_email=_addresses(params.any_email),
        has_attachment=params.has_attachment,
        metadata_pair=pair,
        search=native_search(api, grant_id, params.search_query_native, folder_ids, orm),
    )


def list_filter(
    db: Db,
    api: State,
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
    metadata_pair: Annotated[str | None, Query(max_length=1000)] = None,
    search_query_native: Annotated[str | None, Query(max_length=MAX_SEARCH_LENGTH)] = None,
    _unsupported: None = Depends(refuse_unsupported),
) -> message_filters.MessageFilter:
    """The filter parameters of an endpoint that declares them (drafts) as a MessageFilter."""
    params = FilterParams.model_construct(
        in_=in_,
        unread=unread,
        starred=starred,
        subject=subject,
        from_=from_,
        to=to,
        cc=cc,
        bcc=bcc,
        any_email=any_email,
        has_attachment=has_attachment,
        metadata_pair=metadata_pair,
        search_query_native=search_query_native,
    )
    return message_filter(db.connection(), api, grant.id, params, lambda: (db, grant))


ListFilter = Annotated[message_filters.MessageFilter, Depends(list_filter)]


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
    folder = FolderRepository(db).find(grant.id, folders[0])
    if folder is None:
        raise not_found(f"No folder {folders[0]!r} for this grant.")
    return folder
