"""Eliding large attachment bodies before parsing must not change what parse_message returns."""

from __future__ import annotations

from datetime import UTC, datetime
from email.message import EmailMessage

import pytest

import pipeline.mime as mime
from pipeline.dev.mailgen import generate
from pipeline.errors import MessageParseError
from pipeline.mime import charsets, structure
from tests.support.corpus import CORPUS


def _both(raw: bytes, monkeypatch: pytest.MonkeyPatch) -> tuple[object, object]:
    elided = mime.parse_message(raw)
    with monkeypatch.context() as m:
        m.setattr(structure, "_elide_attachment_bodies", lambda data, ctx: data)
        full = mime.parse_message(raw)
    return elided, full


def _big(attachments: list[tuple[bytes, str, str]], *, linesep: str = "\r\n") -> bytes:
    msg = EmailMessage()
    msg["From"] = "a@example.test"
    msg["To"] = "b@example.test"
    msg["Subject"] = "big"
    msg.set_content("plain body")
    msg.add_alternative("<p>html body</p>", subtype="html")
    for data, maintype, filename in attachments:
        msg.add_attachment(data, maintype=maintype, subtype="octet-stream", filename=filename)
    return msg.as_bytes(policy=msg.policy.clone(linesep=linesep))


@pytest.mark.parametrize("linesep", ["\r\n", "\n"])
def test_sizes_and_structure_are_identical(monkeypatch: pytest.MonkeyPatch, linesep: str) -> None:
    payloads = [
        (bytes(range(256)) * 1500, "application", "a.bin"),
        (b"x" * 300_001, "image", "b.png"),
    ]
    raw = _big(payloads, linesep=linesep)
    assert len(raw) > structure.ELIDE_MIN_MESSAGE_BYTES
    elided, full = _both(raw, monkeypatch)
    assert elided == full
    assert isinstance(elided, mime.ParsedMessage)
    assert [a.size for a in elided.attachments] == [len(p[0]) for p in payloads]
    assert elided.body == "<p>html body</p>\n"


def test_the_parser_never_sees_the_elided_bytes() -> None:
    raw = _big([(b"\x00" * 2_000_000, "application", "zeros.bin")])
    ctx = charsets._Context()
    data = structure._elide_attachment_bodies(raw, ctx)
    assert len(data) < 10_000
    assert list(ctx.elided.values()) == [2_000_000]


def test_extract_part_still_returns_the_whole_attachment() -> None:
    payload = bytes(range(256)) * 4000
    raw = _big([(payload, "application", "a.bin")])
    (attachment,) = mime.parse_message(raw).attachments
    content_type, data = mime.extract_part(raw, attachment.part_path)
    assert data == payload
    assert content_type == "application/octet-stream"


def test_generated_mail_and_the_corpus_parse_the_same(monkeypatch: pytest.MonkeyPatch) -> None:
    now = datetime(2026, 11, 1, tzinfo=UTC)
    raws = [m.raw for m in generate(300, seed=3, now=now, attachment_fraction=0.2)]
    raws += [p.read_bytes() for p in sorted(CORPUS.rglob("*.eml"))]
    assert sum(len(r) > structure.ELIDE_MIN_MESSAGE_BYTES for r in raws) >= 20
    for raw in raws:
        try:
            elided, full = _both(raw, monkeypatch)
        except MessageParseError:
            continue
        assert elided == full
