"""The IMAP SEARCH criteria parser: grammar, bare words, bounds, and the way back to IMAP."""

from __future__ import annotations

import time
from datetime import date

import pytest

from pipeline.search import store
from pipeline.search.criteria import (
    MAX_DEPTH,
    MAX_LENGTH,
    MAX_TERMS,
    All,
    And,
    CriteriaError,
    DateKey,
    Flag,
    Header,
    Not,
    Or,
    Size,
    Text,
    UidSet,
    needs_utf8,
    parse,
    to_imap,
)


def test_keys_parse_into_the_tree() -> None:
    assert parse("from alice") == Text("from", "alice")
    assert parse('SUBJECT "re: \\"hi\\" \\\\ x"') == Text("subject", 're: "hi" \\ x')
    assert parse("UNSEEN flagged") == And((Flag("\\Seen", False), Flag("\\Flagged", True)))
    assert parse("KEYWORD $Label1") == Flag("$Label1", True)
    assert parse("SINCE 1-Feb-2026") == DateKey("internal", "since", date(2026, 2, 1))
    assert parse('SENTON "07-dec-2026"') == DateKey("sent", "on", date(2026, 12, 7))
    assert parse("LARGER 100") == Size("larger", 100)
    assert parse("UID 1:3,7,9:*") == UidSet(((1, 3), (7, 7), (9, None)))
    assert parse("HEADER X-Spam yes") == Header("X-Spam", "yes")
    assert parse("OR (FROM a TO b) NOT ALL") == Or(
        And((Text("from", "a"), Text("to", "b"))), Not(All())
    )
    assert parse("CHARSET UTF-8 SUBJECT café") == Text("subject", "café")


def test_a_bare_word_or_string_means_text() -> None:
    assert parse("invoice") == Text("text", "invoice")
    assert parse('"quarterly report"') == Text("text", "quarterly report")
    assert parse("2024") == Text("text", "2024")  # no message sequence numbers over an API
    assert parse("invoice unseen") == And((Text("text", "invoice"), Flag("\\Seen", False)))


@pytest.mark.parametrize(
    "query",
    [
        "",
        "()",
        "(SEEN",
        "SEEN)",
        "FROM",
        "OR SEEN",
        "SINCE 2026-02-01",
        "SINCE 30-Feb-2026",
        "BEFORE 1-Foo-2026",
        "LARGER -1",
        "LARGER 99999999999999999999",
        "UID 0",
        "UID a:b",
        "{3}\r\nabc",
        '"open',
        "HEADER a:b c",
        "KEYWORD \\Seen",
        "CHARSET KOI8-R SEEN",
        "$",
        "SEEN\x00",
    ],
)
def test_what_does_not_parse_says_why(query: str) -> None:
    with pytest.raises(CriteriaError) as caught:
        parse(query)
    assert str(caught.value)


def test_bounds_hold_and_fail_fast() -> None:
    parse("(" * (MAX_DEPTH - 1) + "SEEN" + ")" * (MAX_DEPTH - 1))
    for hostile in (
        "(" * (MAX_DEPTH + 1) + "SEEN" + ")" * (MAX_DEPTH + 1),
        "NOT " * (MAX_DEPTH + 1) + "SEEN",
        "OR " * 100_000 + "SEEN",
        "SEEN " * (MAX_TERMS + 1),
        "(" * 1_000_000,
        "x" * (MAX_LENGTH + 1),
    ):
        started = time.perf_counter()
        with pytest.raises(CriteriaError):
            parse(hostile[: MAX_LENGTH + 1] if len(hostile) > 10 * MAX_LENGTH else hostile)
        assert time.perf_counter() - started < 0.5


def test_back_to_imap() -> None:
    node = parse('OR (FROM "a b" UNSEEN) NOT SENTSINCE 1-Feb-2026 UID 3:*')
    assert to_imap(node, literals=False) == (
        b'(OR (FROM "a b" UNSEEN) NOT SENTSINCE 1-Feb-2026 UID 3:*)'
    )
    cafe = parse("SUBJECT café")
    assert needs_utf8(cafe)
    assert to_imap(cafe, literals=True) == b"SUBJECT {5+}\r\ncaf\xc3\xa9"
    with pytest.raises(CriteriaError):
        to_imap(cafe, literals=False)


def test_which_criteria_the_store_answers() -> None:
    for query in ("FROM a", "SUBJECT b", "OR SEEN NOT FLAGGED", "SENTON 1-Jan-2020", "UID 1:5"):
        assert store.answerable(parse(query)), query
    for query in ("BODY a", "TEXT a", "a", "HEADER X a", "RECENT", "UID 1:*", "OR SEEN BODY x"):
        assert not store.answerable(parse(query)), query
