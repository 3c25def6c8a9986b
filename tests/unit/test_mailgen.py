"""The demo/benchmark mail generator: reproducible, varied, parseable, and Maildir-ready."""

from __future__ import annotations

import email
import os
from collections import Counter
from datetime import UTC, datetime, timedelta
from email import policy
from email.message import EmailMessage
from functools import cache
from pathlib import Path

import pytest

from pipeline.dev.mailgen import DEFAULT_FOLDERS, GeneratedMessage, generate
from pipeline.dev.seed import encode_modified_utf7, maildir_folder_path, seed_maildir

NOW = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)
SMALL = (2_000, 20_000)  # attachment sizes that keep these tests fast
WINDOW = timedelta(days=90)


@cache
def sample(count: int = 300, seed: int = 5) -> tuple[GeneratedMessage, ...]:
    return tuple(generate(count, seed=seed, now=NOW, attachment_sizes=SMALL))


def parse(message: GeneratedMessage) -> EmailMessage:
    parsed = email.message_from_bytes(message.raw, policy=policy.default)
    assert isinstance(parsed, EmailMessage)
    return parsed


def test_the_same_seed_gives_the_same_bytes_and_another_seed_other_bytes() -> None:
    first = list(generate(40, seed=9, now=NOW, attachment_sizes=SMALL))
    again = list(generate(40, seed=9, now=NOW, attachment_sizes=SMALL))
    other = list(generate(40, seed=10, now=NOW, attachment_sizes=SMALL))
    assert first == again
    assert [m.raw for m in first] != [m.raw for m in other]


def test_now_must_be_timezone_aware_and_arguments_in_range() -> None:
    with pytest.raises(ValueError, match="timezone"):
        next(generate(1, seed=1, now=datetime(2025, 1, 1)))
    with pytest.raises(ValueError):
        next(generate(1, seed=1, now=NOW, old_fraction=1.5))
    with pytest.raises(ValueError):
        next(generate(1, seed=1, now=NOW, attachment_sizes=(10, 5)))


@pytest.mark.parametrize("old_fraction", [0.0, 0.1, 0.25])
def test_exactly_old_fraction_of_the_mail_is_older_than_the_window(old_fraction: float) -> None:
    messages = list(
        generate(200, seed=2, now=NOW, old_fraction=old_fraction, attachment_sizes=SMALL)
    )
    old = [m for m in messages if m.internaldate < NOW - WINDOW]
    assert len(old) == round(200 * old_fraction)
    assert all(m.internaldate < NOW for m in messages)
    assert all(
        m.internaldate.tzinfo is not None and m.internaldate.microsecond == 0 for m in messages
    )
    # delivered oldest first, as a mailbox fills up
    assert [m.internaldate for m in messages] == sorted(m.internaldate for m in messages)


def test_attachments_go_to_exactly_attachment_fraction_within_the_size_range() -> None:
    messages = list(
        generate(150, seed=4, now=NOW, attachment_fraction=0.2, attachment_sizes=(3_000, 9_000))
    )
    with_files = [m for m in messages if m.kind == "mixed"]
    assert len(with_files) == 30
    kinds = Counter()
    for message in with_files:
        parsed = parse(message)
        assert parsed.get_content_type() == "multipart/mixed"
        attachments = list(parsed.iter_attachments())
        assert 1 <= len(attachments) <= 2
        for part in attachments:
            data = part.get_content()
            assert isinstance(data, bytes)
            assert 3_000 <= len(data) <= 9_000
            assert part.get_filename()
            kinds[part.get_content_type()] += 1
            magic = {"application/pdf": b"%PDF", "image/png": b"\x89PNG", "image/jpeg": b"\xff\xd8"}
            assert data.startswith(magic[part.get_content_type()])
    assert len(kinds) >= 2
    assert all(
        parse(m).get_content_type() != "multipart/mixed" for m in messages if m.kind != "mixed"
    )


def test_bodies_mix_plain_html_and_alternative_in_about_the_intended_shares() -> None:
    messages = list(generate(600, seed=8, now=NOW, attachment_fraction=0.0))
    shares = Counter(parse(m).get_content_type() for m in messages)
    assert set(shares) == {"text/plain", "text/html", "multipart/alternative"}
    assert 0.3 < shares["text/plain"] / 600 < 0.5
    assert 0.08 < shares["text/html"] / 600 < 0.22
    assert 0.35 < shares["multipart/alternative"] / 600 < 0.55
    assert Counter(m.kind for m in messages) == Counter(
        {"plain": shares["text/plain"], "html": shares["text/html"],
         "alternative": shares["multipart/alternative"]}
    )  # fmt: skip


def test_every_message_parses_with_crlf_lines_and_decodable_text() -> None:
    for message in sample():
        assert b"\n" not in message.raw.replace(b"\r\n", b""), "bare LF"
        parsed = parse(message)
        assert parsed.defects == []
        assert parsed["From"] and parsed["To"] and parsed["Date"] and parsed["Subject"]
        assert parsed["Date"].datetime <= message.internaldate
        for part in parsed.walk():
            if part.get_content_maintype() == "text":
                assert part.get_content().strip()


def test_subjects_and_names_are_rfc2047_encoded_in_several_charsets() -> None:
    raw_headers = b"".join(m.raw.split(b"\r\n\r\n", 1)[0] for m in sample()).lower()
    for charset in (b"utf-8", b"iso-8859-1", b"koi8-r", b"iso-2022-jp"):
        assert b"=?" + charset + b"?" in raw_headers, charset
    subjects = " ".join(str(parse(m)["Subject"]) for m in sample())
    assert "Отчёт" in subjects or "Встреча" in subjects  # Cyrillic from koi8-r
    assert any("\u3040" <= c <= "\u30ff" or "\u4e00" <= c <= "\u9fff" for c in subjects)
    assert "é" in subjects and "ü" in subjects
    body_charsets = {p.get_content_charset() for m in sample() for p in parse(m).walk()}
    assert {"koi8-r", "iso-2022-jp", "iso-8859-1", "utf-8"} <= body_charsets


def test_replies_form_threads_with_in_reply_to_references_and_re_subjects() -> None:
    seen_ids: set[str] = set()
    replies = 0
    for message in sample():
        parsed = parse(message)
        parent = parsed["In-Reply-To"]
        if parent:
            replies += 1
            assert parent in seen_ids, "replies come after what they answer"
            assert parsed["References"].split()[-1] == parent
            assert str(parsed["Subject"]).startswith(("Re: ", "AW: ", "RE: "))
        if message.message_id:
            assert parsed["Message-ID"] == message.message_id
            seen_ids.add(message.message_id)
    assert replies > 40


def test_flags_message_ids_and_folders_vary() -> None:
    messages = sample()
    flags = Counter(f for m in messages for f in m.flags)
    assert flags["\\Seen"] > len(messages) / 2
    assert flags["\\Flagged"] > 0 and flags["\\Answered"] > 0
    assert any(not m.flags for m in messages), "some mail is unread"
    assert all("\\Draft" in m.flags for m in messages if m.folder == "Drafts")
    assert 0 < sum(m.message_id is None for m in messages) < len(messages) * 0.1
    assert all(parse(m)["Message-ID"] is None for m in messages if m.message_id is None)
    assert {m.folder for m in messages} == set(DEFAULT_FOLDERS)
    sent = [parse(m) for m in messages if m.folder == "Sent"]
    assert sent and all("demo@localhost" in str(p["From"]) for p in sent)


def test_folder_weights_are_respected() -> None:
    messages = list(
        generate(50, seed=1, now=NOW, folders={"INBOX": 1.0, "Zürich": 0.0}, attachment_sizes=SMALL)
    )
    assert {m.folder for m in messages} == {"INBOX"}


@pytest.mark.parametrize(
    ("name", "encoded"),
    [
        ("INBOX", "INBOX"),
        ("Entwürfe", "Entw&APw-rfe"),
        ("Reçus", "Re&AOc-us"),
        ("a&b", "a&-b"),
        ("日本語", "&ZeVnLIqe-"),
        ("Отправленные", "&BB4EQgQ,BEAEMAQyBDsENQQ9BD0ESwQ1-"),
    ],
)
def test_modified_utf7(name: str, encoded: str) -> None:
    assert encode_modified_utf7(name) == encoded


def test_maildir_folder_paths_follow_maildir_plus_plus(tmp_path: Path) -> None:
    assert maildir_folder_path(tmp_path, "INBOX") == tmp_path
    assert maildir_folder_path(tmp_path, "Entwürfe/Privat") == tmp_path / ".Entw&APw-rfe.Privat"
    with pytest.raises(ValueError, match="cannot hold"):
        maildir_folder_path(tmp_path, "Mr. Smith")


def test_seed_maildir_writes_flagged_files_dated_by_internaldate(tmp_path: Path) -> None:
    messages = list(generate(30, seed=3, now=NOW, attachment_sizes=SMALL))
    assert seed_maildir(tmp_path, messages) == 30
    by_content = {m.raw.replace(b"\r\n", b"\n"): m for m in messages}
    written = sorted(tmp_path.glob("**/cur/*"))
    assert len(written) == 30
    for path in written:
        data = path.read_bytes()
        message = by_content[data]
        assert path.parent.parent == maildir_folder_path(tmp_path, message.folder)
        info = path.name.rsplit(":2,", 1)[1]
        letters = {"\\Seen": "S", "\\Flagged": "F", "\\Answered": "R", "\\Draft": "D"}
        assert info == "".join(sorted(letters[f] for f in message.flags))
        assert f",S={len(data)}," in path.name
        assert os.stat(path).st_mtime == message.internaldate.timestamp()
    for folder in {m.folder for m in messages} - {"INBOX"}:
        assert (maildir_folder_path(tmp_path, folder) / "maildirfolder").is_file()
    assert not any(tmp_path.glob("**/tmp/*")), "nothing is left half-written"


def test_seed_maildir_refuses_flags_maildir_cannot_store(tmp_path: Path) -> None:
    message = GeneratedMessage("INBOX", NOW, ("$Important",), b"Subject: x\r\n\r\nx\r\n")
    with pytest.raises(ValueError, match="no Maildir letter"):
        seed_maildir(tmp_path, [message])
