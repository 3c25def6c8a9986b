"""The parser's fast paths give exactly what the general paths give.

``pipeline.mime.structure._fast_structure`` replaces the line-by-line ``BytesFeedParser``
for ordinary mail; these tests compare both trees (headers, payloads, preamble, epilogue,
defects) over the corpus and generated mail, and check that anything unusual is left to the
feed parser. Simple address lists skip ``email.utils.getaddresses``; random lists built from
awkward pieces must split the same way.
"""

from __future__ import annotations

import random
from datetime import UTC, datetime
from email.message import Message
from email.parser import BytesParser
from email.policy import compat32
from email.utils import getaddresses

import pytest

import pipeline.mime as mime
from pipeline.dev.mailgen import generate
from pipeline.errors import MessageParseError
from pipeline.mime import headers, parser, structure
from tests.support.corpus import CORPUS


def shape(part: Message) -> tuple[object, ...]:
    payload = part.get_payload()
    return (
        tuple(part.raw_items()),
        part.get_default_type(),
        part.preamble,
        part.epilogue,
        tuple(type(d).__name__ for d in part.defects),
        tuple(shape(c) for c in payload) if isinstance(payload, list) else payload,
    )


def feed_parser(data: bytes) -> Message:
    return BytesParser(policy=compat32).parsebytes(data)


def _inputs() -> list[bytes]:
    now = datetime(2026, 11, 1, tzinfo=UTC)
    raws = [m.raw for m in generate(400, seed=11, now=now, attachment_fraction=0.2)]
    raws += [p.read_bytes() for p in sorted(CORPUS.rglob("*.eml"))]
    return raws


def test_corpus_and_generated_mail_build_the_feed_parsers_tree() -> None:
    fast = 0
    for raw in _inputs():
        try:
            data = parser._checked_input(raw)
        except MessageParseError:
            continue
        tree = structure._fast_structure(data)
        if tree is None:
            continue
        fast += 1
        assert shape(tree) == shape(feed_parser(data))
    assert fast >= 500  # most mail takes the fast path


NESTED = (
    b"From: a@example.test\r\nContent-Type: multipart/mixed; boundary=outer\r\n\r\n"
    b'preamble\r\n--outer\r\nContent-Type: multipart/alternative; boundary="outer-1"\r\n\r\n'
    b"--outer-1\r\nContent-Type: text/plain\r\n\r\nplain\r\n\r\n--outer-1 \t\r\n"
    b"Content-Type: text/html\r\n\r\n<p>html</p>\r\n--outer-1--\r\ninner epilogue\r\n"
    b"--outer\r\n\r\nno headers\r\n--outer\r\nContent-Type: text/plain\r\n"
    b"--outer--\r\nepilogue\r\n"
)


@pytest.mark.parametrize("linesep", [b"\r\n", b"\n"])
def test_nested_parts_preamble_epilogue_and_headerless_parts(linesep: bytes) -> None:
    data = NESTED.replace(b"\r\n", linesep)
    tree = structure._fast_structure(data)
    assert tree is not None
    assert shape(tree) == shape(feed_parser(data))
    parts = tree.get_payload()
    assert isinstance(parts, list) and len(parts) == 3
    assert tree.preamble == "preamble"


@pytest.mark.parametrize(
    "data",
    [
        # not closed
        b"Content-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\n\r\nx\r\n",
        # no boundary parameter
        b"Content-Type: multipart/mixed\r\n\r\n--b\r\n\r\nx\r\n--b--\r\n",
        # a line that is no header field
        b"Subject: x\r\nnot a header\r\n\r\nbody\r\n",
        # an enclosed message
        b"Content-Type: message/rfc822\r\n\r\nSubject: inner\r\n\r\nbody\r\n",
        # a digest's parts are messages by default
        b"Content-Type: multipart/digest; boundary=b\r\n\r\n--b\r\n\r\nSubject: x\r\n\r\n"
        b"y\r\n--b--\r\n",
        # lone CRs end lines for the feed parser
        b"Content-Type: multipart/mixed; boundary=b\r\r--b\r\rx\r--b--\r",
        # a delimiter after the close delimiter
        b"Content-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\n\r\nx\r\n--b--\r\n--b\r\n",
        # a transfer encoding a multipart may not have
        b"Content-Type: multipart/mixed; boundary=b\r\nContent-Transfer-Encoding: base64\r\n"
        b"\r\n--b\r\n\r\nx\r\n--b--\r\n",
    ],
)
def test_unusual_mail_is_left_to_the_feed_parser(data: bytes) -> None:
    assert structure._fast_structure(data) is None
    parsed = mime.parse_message(b"From: a@example.test\r\n" + data)
    assert isinstance(parsed, mime.ParsedMessage)


ADDRESS_PIECES = [
    "a@b.example",
    "John Smith <j@x.example>",
    "  <x@y.example>",
    "A  B\t<u.v+w@d-e.example>",
    "O'Brien <o@b.example>",
    "",
    " ",
    "x",
    "a b",
    "a@b <c@d>",
    "Name <a@b",
    "Name a@b",
    "J. S <a@b>",
    '"Quoted, Name" <q@b>',
    "a@@b",
    "a.@b",
    ".a@b",
    "a..b@c",
    "a@b.",
    "a@b (comment)",
    "group: a@b;",
    "=?utf-8?q?x?= <a@b>",
    "\u00e9 <a@b>",
]


def test_simple_address_lists_split_as_getaddresses_does() -> None:
    rnd = random.Random(5)
    fast = 0
    for _ in range(5000):
        text = ",".join(rnd.choice(ADDRESS_PIECES) for _ in range(rnd.randint(1, 4)))
        pairs = headers._simple_pairs([text])
        if pairs is None:
            continue
        fast += 1
        try:
            expected = getaddresses([text], strict=False)  # type: ignore[call-arg,unused-ignore]
        except TypeError:  # Pythons before 3.11.10 have no strict parameter
            expected = getaddresses([text])
        assert pairs == expected, text
    assert fast > 200
