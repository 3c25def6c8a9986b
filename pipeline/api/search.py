"""``search_query_native`` of ``GET /messages`` and ``GET /threads``: IMAP SEARCH criteria.

The criteria are parsed (:mod:`pipeline.search.criteria`; what does not parse is a 400 that
says why) and answered from the store when every key allows (:mod:`pipeline.search.store`),
otherwise by a ``UID SEARCH`` of the server in each folder (:mod:`pipeline.search.server`, on a
pooled session under the account's limits). Either way the result is a condition on messages
that the list query ANDs with the other filters, so pagination, ``select`` and the thread
grouping work as for any filter.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from sqlalchemy.orm import Session

from pipeline.api.deps import ApiState
from pipeline.api.errors import invalid_request
from pipeline.grants.interactive import grant_imap
from pipeline.models import Grant
from pipeline.search import criteria, server, store


def needs_server(query: str | None) -> bool:
    """Whether ``search_query_native`` (None: none) is answered by the IMAP server: criteria
    that parse and that the store cannot answer (a query that does not parse is a 400 that
    reaches nothing)."""
    if query is None:
        return False
    try:
        return not store.answerable(criteria.parse(query))
    except criteria.CriteriaError:
        return False


def native_search(
    api: ApiState,
    grant_id: str,
    query: str | None,
    folder_ids: Sequence[str] | None,
    orm: Callable[[], tuple[Session, Grant]],
) -> store.Condition | None:
    """The condition ``search_query_native`` puts on messages (None without one); ``orm``
    gives a session and the grant's ORM object, asked for only when the server must answer.

    Raises:
        ApiError: 400 when the criteria do not parse, match too much on the server or need
            what the server lacks; 429/504 as any IMAP work of the API.
    """
    if query is None:
        return None
    try:
        node = criteria.parse(query)
    except criteria.CriteriaError as exc:
        raise invalid_request(f"search_query_native: {exc}") from exc
    if store.answerable(node):
        return store.condition(node, folder_ids, grant_id=grant_id)
    db, grant = orm()
    folders = server.folders_to_search(db, grant.id, folder_ids)
    if len(folders) > server.MAX_FOLDERS:
        raise invalid_request(
            f"search_query_native: this search needs the IMAP server and the grant has more "
            f"than {server.MAX_FOLDERS} folders; name the folders to search with `in`."
        )
    if not folders:
        return store.in_ids([])
    with grant_imap(db, api, grant, ops=2 * len(folders)) as imap:
        try:
            found = server.search_uids(imap, folders, node, deadline_s=server.SEARCH_DEADLINE_S)
        except server.TooManyMatches as exc:
            raise invalid_request(
                f"search_query_native matches more than {server.MAX_MATCHES} messages on the "
                "IMAP server; narrow it (more keys, a date, or `in`)."
            ) from exc
        except criteria.CriteriaError as exc:
            raise invalid_request(f"search_query_native: {exc}") from exc
    return store.in_ids(server.message_ids(db, found))
