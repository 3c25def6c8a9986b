"""IMAP SEARCH criteria answered from the stored mail, where it can answer them exactly.

What the store answers (:func:`answerable`), and how each key matches as Dovecot's SEARCH does:

- ``FROM``/``TO``/``CC``/``BCC``: a substring of the addresses written as the server writes
  them for a search (``Name <user@host>``, or ``user@host`` without a name, ``", "`` between);
  ``SUBJECT``: a substring of the decoded subject. Both compare after Dovecot's folding
  (``i;unicode-casemap``: upper case, then canonical decomposition, so ``cafe`` finds ``Café``),
  with the SQL functions of migration 0320 (``api_search_fold``, ``api_search_addresses``),
  once per message into ``api_message_search`` (0321, a trigger), whose trigram indexes narrow
  the rows; the ``LIKE`` on the stored text is exact. A page query may test those keys on the
  joined search row instead, and walk the rows by their ``date`` (:class:`StoreCondition`,
  migration 0322).
- flags and keywords: the flags of each copy (a message matches when one of its copies does,
  as a ``UID SEARCH`` of each folder would find it);
- ``BEFORE``/``ON``/``SINCE``: the INTERNALDATE of the message's first stored copy, by UTC day;
  ``SENT*``: the Date header's day in its own time zone (``api_search_sent_day``);
- ``LARGER``/``SMALLER``: RFC822.SIZE; ``UID`` ranges without ``*``: the copy's UID;
- ``ALL``, ``NOT``, ``OR`` and parentheses of those.

Everything else (``BODY``, ``TEXT`` and bare words, ``HEADER``, ``RECENT``/``NEW``/``OLD``,
``UID`` with ``*``) goes to the server (:mod:`pipeline.search.server`): the store keeps one
display body per message and not every header as the server matches it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import UTC, datetime, time, timedelta
from typing import Any

from sqlalchemy import (
    ColumnElement,
    and_,
    any_,
    cast,
    exists,
    false,
    func,
    literal,
    not_,
    or_,
    select,
    true,
)
from sqlalchemy.dialects.postgresql import ARRAY, UUID
from sqlalchemy.orm import aliased
from sqlalchemy.types import Text as TextType

from pipeline.models import Folder, Message, Placement
from pipeline.search.criteria import (
    All,
    And,
    DateKey,
    Flag,
    Node,
    Not,
    Or,
    Size,
    Text,
    UidSet,
    walk,
)
from pipeline.search.tables import message_search

STORE_TEXT_FIELDS = frozenset({"from", "to", "cc", "bcc", "subject"})

Condition = Callable[[Any], ColumnElement[bool]]


def in_ids(ids: list[str]) -> Condition:
    """The condition of messages whose id is one of ``ids`` (those a server's search found)."""

    def build(m: Any) -> ColumnElement[bool]:
        return m.id == any_(cast(ids, ARRAY(UUID(as_uuid=False))))  # type: ignore[no-any-return]

    return build


def answerable(node: Node) -> bool:
    """Whether every key of ``node`` can be answered exactly from the store."""
    for n in walk(node):
        if isinstance(n, Text) and n.field not in STORE_TEXT_FIELDS:
            return False
        if isinstance(n, UidSet) and any(lo is None or hi is None for lo, hi in n.ranges):
            return False
        if not isinstance(n, Text | Flag | DateKey | Size | UidSet | All | Not | Or | And):
            return False
    return True


def _per_copy(node: Node) -> bool:
    """Whether ``node`` depends on the copy (flags, UIDs), not only on the message."""
    return any(isinstance(n, Flag | UidSet) for n in walk(node))


def _folded(term: str) -> ColumnElement[Any]:
    """``%<term LIKE-escaped and folded>%``, folded by the same SQL function as the column.

    Escaped in Python, then folded whole: one function on one bound value (the escaping built
    as three SQL ``replace`` calls was 0.4-0.7 ms of API CPU a term, about a quarter of what
    a one-term search's statement cost over a plain list's). The
    folding (``upper``, then canonical decomposition) leaves ``%``, ``_`` and ``\\`` as they
    are and makes none of them from another character, and an escape stays before the
    character it escapes (a combining mark never moves across an ASCII character)."""
    escaped = term.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return func.api_search_fold(literal("%" + escaped + "%", TextType))


_SEARCH_COLUMNS = {
    "subject": message_search.c.subject,
    "from": message_search.c.from_text,
    "to": message_search.c.to_text,
    "cc": message_search.c.cc_text,
    "bcc": message_search.c.bcc_text,
}


def _searched(m: Any, grant_id: str | None, *where: ColumnElement[bool]) -> ColumnElement[bool]:
    """The message's stored search text (migration 0321) meets ``where``."""
    s = message_search
    # correlated to the message explicitly: under a copy's EXISTS the message is two levels up,
    # beyond SQLAlchemy's automatic correlation (which would join every message instead).
    # The grant too, so that the (grant_id, text) indexes read only the grant's rows; as a
    # constant when known: under an OR Postgres turns the EXISTS into a hashed subplan without
    # the correlation, and with `grant_id = m.grant_id` that subplan read the matches of every
    # grant (OR SUBJECT invoice FROM sender7@: 2,058 rows of five grants for 1,030 of its own)
    grant = m.grant_id if grant_id is None else literal(grant_id, s.c.grant_id.type)
    mine = (s.c.message_id == m.id, s.c.grant_id == grant)
    return exists(select(1).select_from(s).where(*mine, *where).correlate(m))


def _stored(node: Node) -> bool:
    """Whether ``node`` is answered by the stored search text alone: text keys, ``SENT*``, and
    ORs/ANDs of those (one row a message, so their combination is one EXISTS)."""
    if isinstance(node, Text):
        return True
    if isinstance(node, DateKey):
        return node.field != "internal"
    if isinstance(node, Or):
        return _stored(node.left) and _stored(node.right)
    if isinstance(node, And):
        return all(_stored(c) for c in node.children)
    return False


def _on_stored(node: Node) -> ColumnElement[bool]:
    """The condition of a :func:`_stored` node on the message's search row (migration 0321)."""
    if isinstance(node, Text):
        # every Subject field and the four address fields, folded once when stored
        column = _SEARCH_COLUMNS[node.field]
        return column.like(_folded(node.value), escape="\\")
    if isinstance(node, DateKey):
        day = message_search.c.sent_day  # indexed with grant_id
        if node.op == "before":
            return day < node.day
        if node.op == "since":
            return day >= node.day
        return day == node.day
    if isinstance(node, Or):
        return or_(_on_stored(node.left), _on_stored(node.right))
    if isinstance(node, And):
        return and_(*(_on_stored(c) for c in node.children))
    raise AssertionError(f"not in the stored search text: {node!r}")


def _utc(day: Any) -> datetime:
    return datetime.combine(day, time(0), UTC)


def _internal_date(m: Any, node: DateKey) -> ColumnElement[bool]:
    start, end = _utc(node.day), _utc(node.day) + timedelta(days=1)
    column = m.received_at
    if node.op == "before":
        return column < start  # type: ignore[no-any-return]
    if node.op == "since":
        return column >= start  # type: ignore[no-any-return]
    return and_(column >= start, column < end)


def _flag(p: Any, node: Flag) -> ColumnElement[bool]:
    if node.flag.startswith("\\"):
        has = literal(node.flag, TextType) == any_(p.flags)
    else:  # keywords compare without regard to case (RFC 3501 flag names are atoms)
        has = func.lower(literal(node.flag, TextType)) == any_(
            cast(func.lower(cast(p.flags, TextType)), ARRAY(TextType))
        )
    return has if node.present else not_(has)  # type: ignore[no-any-return]


def _uids(p: Any, node: UidSet) -> ColumnElement[bool]:
    parts: list[ColumnElement[bool]] = []
    for lo, hi in node.ranges:
        assert lo is not None and hi is not None  # '*' goes to the server (answerable)
        parts.append(p.uid.between(min(lo, hi), max(lo, hi)))
    return or_(*parts)


def _sql(node: Node, m: Any, p: Any, g: str | None) -> ColumnElement[bool]:
    if _stored(node):
        # one EXISTS on the search row for an OR/AND of its keys: Postgres ORs (ANDs) the trigram
        # indexes' bitmaps in one scan, or checks the row once as it walks the date index; an
        # EXISTS per key under an OR became hashed subplans, each reading all its matches
        # (OR SUBJECT cafe FROM sender7@: 9,090 + 334 rows for a page of 50)
        return _searched(m, g, _on_stored(node))
    if isinstance(node, DateKey):
        return _internal_date(m, node)
    if isinstance(node, Size):
        if node.op == "larger":
            return m.size > node.octets  # type: ignore[no-any-return]
        return m.size < node.octets  # type: ignore[no-any-return]
    if isinstance(node, Flag):
        return _flag(p, node)
    if isinstance(node, UidSet):
        return _uids(p, node)
    if isinstance(node, All):
        return true()
    if isinstance(node, Not):
        return not_(_sql(node.child, m, p, g))
    if isinstance(node, Or):
        return or_(_sql(node.left, m, p, g), _sql(node.right, m, p, g))
    if isinstance(node, And):
        return and_(*(_sql(c, m, p, g) for c in node.children))
    raise AssertionError(f"not answerable from the store: {node!r}")


def _implied(m: Any, node: Node) -> ColumnElement[bool] | None:
    """What a copy's flag implies for the message, which its indexes can serve: a message is
    unread when any copy is unseen and starred when any copy is flagged (pipeline.models)."""
    if isinstance(node, Not) and isinstance(node.child, Flag):
        node = Flag(node.child.flag, not node.child.present)
    if node == Flag("\\Seen", False):
        return m.unread == True  # type: ignore[no-any-return]  # noqa: E712  (`= true`: partial indexes)
    if node == Flag("\\Flagged", True):
        return m.starred == True  # type: ignore[no-any-return]  # noqa: E712
    return None


# The copy and its folder in a condition's EXISTS, aliased once: a fresh ``aliased()`` per
# request built a proxy of every column of both tables, two thirds of the 3-4 ms a search's
# statement took to build (a plain list's: 0.3 ms). One alias serves every statement: the
# EXISTS never nests in another one of its kind.
_COPY = aliased(Placement, name="sp")
_COPY_FOLDER = aliased(Folder, name="sf")


class StoreCondition:
    """A store-answered search as a WHERE condition on a message entity (call it with the entity
    or an alias), plus its parts for a page query that walks the search rows (see ``text``).

    Attributes:
        text: the keys of the stored search text ANDed at the top (a condition on a row of
            ``api_message_search``), or None when the criteria have none at the top.
        rest: the condition on the message without ``text`` (with ``text`` met by the joined
            search row, the two together are the whole search).
        folder_ids: the folders a matching copy must be in (current UIDVALIDITY), or None.
        text_only: whether the criteria are ``text`` alone (no flag, date, size or UID key,
            no folder), which only needs a current copy besides.
        rest_joined: ``rest`` with the copy's EXISTS free to become a join (``rest`` keeps
            Postgres from it, see :func:`condition`): for a thread list, where Postgres
            hashing the copies of a folder or with a flag once beat probing them per match.
        narrow: for criteria without ``text``, what they require of the message itself (its
            internal date and size keys ANDed at the top, and what a copy's flag implies: a
            message with an unseen copy is unread), which its own indexes answer; every
            message the whole condition matches meets it. None when ``text`` is given or no
            index of the messages serves it (nothing required of the message, or a size alone).
    """

    def __init__(
        self,
        whole: Condition,
        text: ColumnElement[bool] | None,
        rest: Condition,
        folder_ids: Sequence[str] | None = None,
        rest_joined: Condition | None = None,
    ) -> None:
        self._whole = whole
        self.folder_ids = folder_ids
        self.text = text
        self.rest = rest
        self.rest_joined = rest if rest_joined is None else rest_joined
        self.text_only = False
        self.narrow: Condition | None = None

    def __call__(self, m: Any) -> ColumnElement[bool]:
        return self._whole(m)


def condition(
    node: Node, folder_ids: Sequence[str] | None, *, grant_id: str | None = None
) -> StoreCondition:
    """A WHERE condition on a message entity (or alias) that holds when one of its current
    copies (in ``folder_ids`` when given) matches ``node``; ``grant_id``, the grant of the
    messages searched when the caller knows it, bounds the stored search text read to it.

    Keys about the message itself are ANDed outside the copy's EXISTS, where the indexes on
    messages can narrow the rows first. The stored text's keys ANDed at the top are also
    given apart (:class:`StoreCondition`): a page query joins the message's search row, tests
    them there and walks the rows by their ``date`` (migration 0322), newest first.
    """
    if not answerable(node):
        raise ValueError("the criteria need the server")
    conjuncts = node.children if isinstance(node, And) else (node,)
    on_message: list[Node] = [c for c in conjuncts if not _per_copy(c) and not _stored(c)]
    stored = [c for c in conjuncts if _stored(c)]
    stored_node = None
    if stored:  # the stored text's keys ANDed in one EXISTS (see _sql)
        stored_node = stored[0] if len(stored) == 1 else And(tuple(stored))
    on_copy = [c for c in conjuncts if _per_copy(c)]
    # the copy keys that the message's own flag implies (UNSEEN: the message is unread)
    implying = [c for c in on_copy if _implied(Message, c) is not None]

    def own(m: Any) -> list[ColumnElement[bool]]:
        """What the criteria require of the message itself: its own keys, and what its copies'
        flags imply of it."""
        implied = [i for i in (_implied(m, c) for c in implying) if i is not None]
        return [*(_sql(c, m, _COPY, grant_id) for c in on_message), *implied]

    def build(m: Any, *, with_text: bool = True, fence: bool = True) -> ColumnElement[bool]:
        p, f = _COPY, _COPY_FOLDER
        where = [
            p.message_id == m.id,
            p.uidvalidity == f.uidvalidity,
            *(_sql(c, m, p, grant_id) for c in on_copy),
        ]
        if folder_ids is not None:
            where.append(f.id.in_(list(folder_ids)) if folder_ids else false())
        copy_of = select(1).select_from(p).join(f, f.id == p.folder_id).where(*where)
        if stored_node is not None and not with_text and fence:
            # a page query joined the stored text's row (``rest``): its matches bound the
            # messages looked at, and each one's copies are probed by its id
            # (ix_placements_message). OFFSET 0 keeps Postgres from turning this EXISTS into a
            # join, which it hashed over every copy of the table with the flag instead (the
            # text's rows and the implied flag, estimated as independent, looked few): SUBJECT
            # cafe FROM "Sender 1" UNSEEN read 13,741 buffers, now 1,654. Without text keys the
            # join stays possible (but see below): a rare keyword or UID range is best found
            # from the copies
            copy_of = copy_of.offset(0)
        if stored_node is None and fence and on_copy and len(implying) == len(on_copy):
            # every copy key implies the message's (UNSEEN: unread): the messages' indexes find
            # the candidates and each one's copies are probed by its id, where Postgres hashed
            # every copy of the table with the flag (SINCE 04-Dec-2026 UNSEEN, a thread list
            # at 100,000 messages: 25 of 53 ms its scan of the placements)
            copy_of = copy_of.offset(0)
        text = [_sql(stored_node, m, p, grant_id)] if with_text and stored_node else []
        return and_(*text, *own(m), exists(copy_of))

    out = StoreCondition(
        build,
        _on_stored(stored_node) if stored_node is not None else None,
        lambda m: build(m, with_text=False),
        folder_ids,
        lambda m: build(m, with_text=False, fence=False),
    )
    out.text_only = stored_node is not None and not on_message and not on_copy
    out.text_only = out.text_only and folder_ids is None
    # an index of the messages serves the narrowing: a flag's implication (partial indexes on
    # unread and starred) or an internal date (received_at); a size alone has none
    indexed = bool(implying) or any(isinstance(c, DateKey) for c in on_message)
    if stored_node is None and indexed:
        out.narrow = lambda m: and_(*own(m))
    return out
