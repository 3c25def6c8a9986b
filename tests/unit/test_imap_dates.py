"""INTERNALDATE parsing: the same instant ``strptime`` reads, in UTC, and a clear error."""

from __future__ import annotations

import random
from datetime import UTC, datetime

import pytest

from pipeline.errors import ImapProtocolError
from pipeline.imap.responses import imap_date, parse_internaldate


def test_internaldates_read_as_strptime_reads_them() -> None:
    rnd = random.Random(3)
    for _ in range(5000):
        local = datetime(
            rnd.randint(1970, 2037),
            rnd.randint(1, 12),
            rnd.randint(1, 28),
            rnd.randint(0, 23),
            rnd.randint(0, 59),
            rnd.randint(0, 59),
        )
        sign, hours, minutes = rnd.choice("+-"), rnd.randint(0, 14), rnd.choice([0, 30, 45])
        day = f"{local.day:2d}" if rnd.random() < 0.5 else str(local.day)  # Dovecot pads
        value = f"{day}-{local:%b}-{local.year} {local:%H:%M:%S} {sign}{hours:02d}{minutes:02d}"
        expected = datetime.strptime(value.strip(), "%d-%b-%Y %H:%M:%S %z").astimezone(UTC)
        parsed = parse_internaldate(value)
        assert parsed == expected and parsed.tzinfo is UTC, value


@pytest.mark.parametrize(
    "value",
    ["", "yesterday", "17-Foo-1996 02:44:25 -0700", "31-Feb-2020 00:00:00 +0000", "1-Jul-2026"],
)
def test_an_unreadable_internaldate_is_a_protocol_error(value: str) -> None:
    with pytest.raises(ImapProtocolError, match="Unreadable INTERNALDATE"):
        parse_internaldate(value)


def test_search_dates_use_english_month_names() -> None:
    assert imap_date(datetime(2026, 2, 1).date()) == "1-Feb-2026"
