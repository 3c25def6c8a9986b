"""The message-level flags rule across a message's copies in several folders."""

from __future__ import annotations

import itertools

from pipeline.messages.repository import combined_flags


def test_unread_if_any_copy_is_unseen_starred_if_any_is_flagged() -> None:
    copies = [["\\Seen", "\\Flagged"], [], ["\\Seen", "$Label"]]
    assert combined_flags(copies) == (True, True, ["$Label", "\\Flagged"])
    assert combined_flags([["\\Seen"], ["\\Seen", "\\Answered"]]) == (
        False,
        False,
        ["\\Answered", "\\Seen"],
    )


def test_the_order_of_the_copies_does_not_matter() -> None:
    copies = [["\\Seen", "\\Flagged"], ["\\Answered"], ["\\Seen"]]
    results = {
        (unread, starred, tuple(flags))
        for unread, starred, flags in map(combined_flags, itertools.permutations(copies))
    }
    assert results == {(True, True, ("\\Answered", "\\Flagged"))}
