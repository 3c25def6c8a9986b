"""IMAP SEARCH criteria (RFC 3501 section 6.4.4, RFC 9051 section 6.4.4) as a small AST.

Grammar accepted (keys are case-insensitive; several keys side by side are ANDed)::

    criteria  = key *(SP key)
    key       = "ALL" | "(" criteria ")" | "NOT" key | "OR" key key
              | ("FROM" | "TO" | "CC" | "BCC" | "SUBJECT" | "BODY" | "TEXT") string
              | "HEADER" string string | ("KEYWORD" | "UNKEYWORD") atom
              | "SEEN" | "UNSEEN" | "FLAGGED" | "UNFLAGGED" | "ANSWERED" | "UNANSWERED"
              | "DELETED" | "UNDELETED" | "DRAFT" | "UNDRAFT" | "RECENT" | "NEW" | "OLD"
              | ("BEFORE" | "ON" | "SINCE" | "SENTBEFORE" | "SENTON" | "SENTSINCE") date
              | ("LARGER" | "SMALLER") number | "UID" uid-set
              | word                                  ; any other atom or a quoted string: TEXT
    string    = atom | quoted                        ; "..." with \\" and \\\\ escapes
    date      = d[d]-Mon-yyyy, optionally quoted

An optional leading ``CHARSET UTF-8`` (or ``US-ASCII``) is accepted. Not accepted, each with a
400 that says so: literals (``{n}``: write a quoted string), message sequence sets (an API has
no IMAP session to number messages in: a bare number is a word, i.e. TEXT), ``$``, other
charsets. Bounds: :data:`MAX_LENGTH` characters, :data:`MAX_DEPTH` levels of nesting (``(``,
``NOT`` and ``OR`` each count one), :data:`MAX_TERMS` keys.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date
from typing import Literal

MAX_LENGTH = 2000  # characters of one query
MAX_DEPTH = 16  # nesting of parentheses, NOT and OR
MAX_TERMS = 64  # search keys in one query
MAX_UID_RANGES = 64  # ranges in one UID set
MAX_NUMBER = 2**63 - 1  # LARGER/SMALLER and UIDs (RFC 9051: number64)

TextField = Literal["from", "to", "cc", "bcc", "subject", "body", "text"]
DateField = Literal["internal", "sent"]
DateOp = Literal["before", "on", "since"]


class CriteriaError(ValueError):
    """The criteria do not parse; the message says where and why (it becomes a 400)."""


@dataclass(frozen=True)
class Text:
    """``FROM``/``TO``/``CC``/``BCC``/``SUBJECT``/``BODY``/``TEXT``: a substring, any case."""

    field: TextField
    value: str


@dataclass(frozen=True)
class Header:
    """``HEADER name value``: the named header contains the value (any header for "")."""

    name: str
    value: str


@dataclass(frozen=True)
class Flag:
    """A system flag or keyword is set (``present``) or not set on the copy."""

    flag: str
    present: bool


@dataclass(frozen=True)
class Recent:
    """``RECENT``/``NEW``/``OLD``: session state only the server knows."""

    key: Literal["RECENT", "NEW", "OLD"]


@dataclass(frozen=True)
class DateKey:
    """``BEFORE``/``ON``/``SINCE`` (INTERNALDATE) and ``SENT*`` (the Date header)."""

    field: DateField
    op: DateOp
    day: date


@dataclass(frozen=True)
class Size:
    """``LARGER n`` / ``SMALLER n``: RFC822.SIZE compared with ``n``."""

    op: Literal["larger", "smaller"]
    octets: int


@dataclass(frozen=True)
class UidSet:
    """``UID set``: inclusive ranges; ``None`` as an end is ``*`` (the folder's last UID)."""

    ranges: tuple[tuple[int | None, int | None], ...]


@dataclass(frozen=True)
class All:
    """``ALL``."""


@dataclass(frozen=True)
class Not:
    """``NOT key``."""

    child: Node


@dataclass(frozen=True)
class Or:
    """``OR key key``."""

    left: Node
    right: Node


@dataclass(frozen=True)
class And:
    """Keys side by side (or in parentheses): all must match."""

    children: tuple[Node, ...]


Node = Text | Header | Flag | Recent | DateKey | Size | UidSet | All | Not | Or | And

_FLAG_KEYS = {
    "SEEN": ("\\Seen", True),
    "UNSEEN": ("\\Seen", False),
    "FLAGGED": ("\\Flagged", True),
    "UNFLAGGED": ("\\Flagged", False),
    "ANSWERED": ("\\Answered", True),
    "UNANSWERED": ("\\Answered", False),
    "DELETED": ("\\Deleted", True),
    "UNDELETED": ("\\Deleted", False),
    "DRAFT": ("\\Draft", True),
    "UNDRAFT": ("\\Draft", False),
}
_TEXT_KEYS: dict[str, TextField] = {
    "FROM": "from",
    "TO": "to",
    "CC": "cc",
    "BCC": "bcc",
    "SUBJECT": "subject",
    "BODY": "body",
    "TEXT": "text",
}
_DATE_KEYS: dict[str, tuple[DateField, DateOp]] = {
    "BEFORE": ("internal", "before"),
    "ON": ("internal", "on"),
    "SINCE": ("internal", "since"),
    "SENTBEFORE": ("sent", "before"),
    "SENTON": ("sent", "on"),
    "SENTSINCE": ("sent", "since"),
}
_MONTHS = {
    m: i + 1
    for i, m in enumerate(
        ["JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC"]
    )
}
_DATE = re.compile(r"(\d{1,2})-([A-Za-z]{3})-(\d{4})")
_UID_PART = re.compile(r"(\d+|\*)(?::(\d+|\*))?")
# atom-specials of RFC 3501 that end an atom here: SP, parentheses, quote; control characters
# are refused outright.
_ATOM_END = frozenset(' ()"')


@dataclass(frozen=True)
class _Token:
    kind: Literal["atom", "string", "open", "close"]
    value: str
    at: int  # character offset, for messages


def _tokens(query: str) -> list[_Token]:
    out: list[_Token] = []
    i, n = 0, len(query)
    while i < n:
        c = query[i]
        if c in " \t\r\n":
            i += 1
        elif ord(c) < 0x20 or c == "\x7f":
            raise CriteriaError(f"Control character at position {i}.")
        elif c == "(":
            out.append(_Token("open", c, i))
            i += 1
        elif c == ")":
            out.append(_Token("close", c, i))
            i += 1
        elif c == '"':
            start, i, chars = i, i + 1, []
            while True:
                if i >= n:
                    raise CriteriaError(f"The quoted string at position {start} is not closed.")
                c = query[i]
                if c == "\\" and i + 1 < n and query[i + 1] in '"\\':
                    chars.append(query[i + 1])
                    i += 2
                elif c == '"':
                    i += 1
                    break
                else:
                    chars.append(c)
                    i += 1
            out.append(_Token("string", "".join(chars), start))
        elif c == "{":
            raise CriteriaError(
                f"Literal at position {i}: write the string in double quotes instead."
            )
        else:
            start = i
            while i < n and query[i] not in _ATOM_END and ord(query[i]) >= 0x20:
                i += 1
            out.append(_Token("atom", query[start:i], start))
    return out


class _Parser:
    def __init__(self, tokens: list[_Token]) -> None:
        self.tokens = tokens
        self.pos = 0
        self.terms = 0

    def peek(self) -> _Token | None:
        return self.tokens[self.pos] if self.pos < len(self.tokens) else None

    def take(self, what: str) -> _Token:
        token = self.peek()
        if token is None:
            raise CriteriaError(f"The query ends where {what} was expected.")
        self.pos += 1
        return token

    def string(self, key: str) -> str:
        token = self.take(f"the string of {key}")
        if token.kind not in ("atom", "string"):
            raise CriteriaError(
                f"{key} at position {token.at} needs a string, not {token.value!r}."
            )
        return token.value

    def number(self, key: str) -> int:
        token = self.take(f"the number of {key}")
        if token.kind != "atom" or not token.value.isdigit() or len(token.value) > 19:
            raise CriteriaError(f"{key} needs a number of octets, not {token.value!r}.")
        value = int(token.value)
        if value > MAX_NUMBER:
            raise CriteriaError(f"{key} {token.value} is too large.")
        return value

    def day(self, key: str) -> date:
        token = self.take(f"the date of {key}")
        match = _DATE.fullmatch(token.value) if token.kind in ("atom", "string") else None
        month = _MONTHS.get(match[2].upper()) if match else None
        if match is None or month is None:
            raise CriteriaError(
                f"{key} needs a date like 1-Feb-2026 (day-Mon-year), not {token.value!r}."
            )
        try:
            return date(int(match[3]), month, int(match[1]))
        except ValueError:
            raise CriteriaError(f"{token.value!r} is not a day of the calendar.") from None

    def uid_set(self) -> UidSet:
        token = self.take("the UID set")
        ranges: list[tuple[int | None, int | None]] = []
        parts = token.value.split(",") if token.kind == "atom" else [""]
        if len(parts) > MAX_UID_RANGES:
            raise CriteriaError(f"At most {MAX_UID_RANGES} ranges in a UID set.")
        for part in parts:
            match = _UID_PART.fullmatch(part)
            if match is None:
                raise CriteriaError(
                    f"UID needs a set like 1:100,200 or 500:*, not {token.value!r}."
                )
            ends = [None if v == "*" else int(v) for v in (match[1], match[2] or match[1])]
            if any(v is not None and not 0 < v <= MAX_NUMBER for v in ends):
                raise CriteriaError(f"UIDs are numbers from 1 up, not {token.value!r}.")
            ranges.append((ends[0], ends[1]))
        return UidSet(tuple(ranges))

    def criteria(self, depth: int, *, until_close: bool) -> And:
        children: list[Node] = []
        while True:
            token = self.peek()
            if token is None:
                if until_close:
                    raise CriteriaError("A parenthesis is not closed.")
                break
            if token.kind == "close":
                if not until_close:
                    raise CriteriaError(f"Unbalanced ')' at position {token.at}.")
                self.pos += 1
                break
            children.append(self.key(depth))
        if not children:
            raise CriteriaError("Empty criteria: give at least one search key.")
        return And(tuple(children))

    def key(self, depth: int) -> Node:
        if depth > MAX_DEPTH:
            raise CriteriaError(f"The query nests deeper than {MAX_DEPTH} levels.")
        self.terms += 1
        if self.terms > MAX_TERMS:
            raise CriteriaError(f"The query has more than {MAX_TERMS} search keys.")
        token = self.take("a search key")
        if token.kind == "open":
            inner = self.criteria(depth + 1, until_close=True)
            return inner.children[0] if len(inner.children) == 1 else inner
        if token.kind == "close":
            raise CriteriaError(f"Unbalanced ')' at position {token.at}.")
        if token.kind == "string":
            return Text("text", token.value)  # a bare quoted string means TEXT
        name = token.value.upper()
        if name == "ALL":
            return All()
        if name == "NOT":
            return Not(self.key(depth + 1))
        if name == "OR":
            left = self.key(depth + 1)
            return Or(left, self.key(depth + 1))
        if name in _FLAG_KEYS:
            flag, present = _FLAG_KEYS[name]
            return Flag(flag, present)
        if name in ("RECENT", "NEW", "OLD"):
            return Recent(name)  # type: ignore[arg-type]
        if name in _TEXT_KEYS:
            return Text(_TEXT_KEYS[name], self.string(name))
        if name == "HEADER":
            field_name = self.string("HEADER")
            if not field_name or any(c in field_name for c in ": ") or not field_name.isascii():
                raise CriteriaError(f"HEADER needs a header field name, not {field_name!r}.")
            return Header(field_name, self.string("HEADER " + field_name))
        if name in ("KEYWORD", "UNKEYWORD"):
            keyword = self.string(name)
            if not keyword or not keyword.isascii() or any(c in keyword for c in '\\(){%*"]'):
                raise CriteriaError(f"{name} needs a keyword atom, not {keyword!r}.")
            return Flag(keyword, name == "KEYWORD")
        if name in _DATE_KEYS:
            field, op = _DATE_KEYS[name]
            return DateKey(field, op, self.day(name))
        if name in ("LARGER", "SMALLER"):
            return Size("larger" if name == "LARGER" else "smaller", self.number(name))
        if name == "UID":
            return self.uid_set()
        if name == "$":
            raise CriteriaError("$ (a saved search result) needs an IMAP session; there is none.")
        return Text("text", token.value)  # a bare word means TEXT


def parse(query: str) -> Node:
    """Parse ``query`` into an AST.

    Raises:
        CriteriaError: the query is empty, too long, too deep, has too many keys, or does not
            follow the grammar (the message says where).
    """
    if len(query) > MAX_LENGTH:
        raise CriteriaError(f"The query is longer than {MAX_LENGTH} characters.")
    tokens = _tokens(query)
    if len(tokens) >= 2 and tokens[0].kind == "atom" and tokens[0].value.upper() == "CHARSET":
        charset = tokens[1].value.upper()
        if charset not in ("UTF-8", "US-ASCII"):
            raise CriteriaError(f"CHARSET {tokens[1].value}: only UTF-8 and US-ASCII are taken.")
        tokens = tokens[2:]
    parser = _Parser(tokens)
    root = parser.criteria(1, until_close=False)
    return root.children[0] if len(root.children) == 1 else root


# --- back to IMAP, for the server ----------------------------------------------------------------


def _day(d: date) -> str:
    return f"{d.day}-{list(_MONTHS)[d.month - 1].title()}-{d.year}"


def _string(value: str, literals: bool) -> bytes:
    data = value.encode("utf-8")
    if value.isascii() and not any(c in value for c in "\r\n"):
        return b'"' + data.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'
    if not literals:
        raise CriteriaError(
            "This IMAP server takes no non-synchronizing literals (LITERAL+), so it cannot be "
            "searched for non-ASCII text here."
        )
    return b"{%d+}\r\n" % len(data) + data


def _uid_set(node: UidSet) -> str:
    def end(v: int | None) -> str:
        return "*" if v is None else str(v)

    return ",".join(end(lo) if lo == hi else f"{end(lo)}:{end(hi)}" for lo, hi in node.ranges)


def to_imap(node: Node, *, literals: bool) -> bytes:
    """The criteria as IMAP bytes for ``UID SEARCH`` (non-ASCII strings as LITERAL+ literals
    when ``literals``; prefix ``CHARSET UTF-8`` when :func:`needs_utf8`).

    Raises:
        CriteriaError: non-ASCII text and a server without LITERAL+.
    """
    if isinstance(node, Text):
        return node.field.upper().encode() + b" " + _string(node.value, literals)
    if isinstance(node, Header):
        return b"HEADER " + _string(node.name, literals) + b" " + _string(node.value, literals)
    if isinstance(node, Flag):
        for key, (flag, present) in _FLAG_KEYS.items():
            if (flag, present) == (node.flag, node.present):
                return key.encode()
        return (b"KEYWORD " if node.present else b"UNKEYWORD ") + node.flag.encode()
    if isinstance(node, Recent):
        return node.key.encode()
    if isinstance(node, DateKey):
        prefix = "SENT" if node.field == "sent" else ""
        return f"{prefix}{node.op.upper()} {_day(node.day)}".encode()
    if isinstance(node, Size):
        return f"{node.op.upper()} {node.octets}".encode()
    if isinstance(node, UidSet):
        return b"UID " + _uid_set(node).encode()
    if isinstance(node, All):
        return b"ALL"
    if isinstance(node, Not):
        return b"NOT " + to_imap(node.child, literals=literals)
    if isinstance(node, Or):
        left = to_imap(node.left, literals=literals)
        return b"OR " + left + b" " + to_imap(node.right, literals=literals)
    return b"(" + b" ".join(to_imap(c, literals=literals) for c in node.children) + b")"


def walk(node: Node) -> list[Node]:
    """Every node of the tree, parents first."""
    out: list[Node] = []
    stack = [node]
    while stack:
        current = stack.pop()
        out.append(current)
        if isinstance(current, Not):
            stack.append(current.child)
        elif isinstance(current, Or):
            stack.extend((current.right, current.left))
        elif isinstance(current, And):
            stack.extend(reversed(current.children))
    return out


def needs_utf8(node: Node) -> bool:
    """Whether any string of the criteria is not ASCII (the server needs ``CHARSET UTF-8``)."""
    for n in walk(node):
        if isinstance(n, Text) and not n.value.isascii():
            return True
        if isinstance(n, Header) and not n.value.isascii():
            return True
    return False
