"""Drafts as MIME: what compose writes, read gives back; drafts other clients wrote read too."""

from __future__ import annotations

from datetime import UTC, datetime
from email.message import EmailMessage

import pytest

from pipeline.drafts.mime import MAX_PARTS, DraftContent, DraftFile, Person, compose, read

WHEN = datetime(2026, 12, 6, 12, 0, tzinfo=UTC)


def test_compose_then_read_gives_the_same_draft() -> None:
    content = DraftContent(
        to=[Person("bob@example.test", "Bob Bobson")],
        cc=[Person("carol@example.test")],
        bcc=[Person("hidden@example.test")],
        reply_to=[Person("replies@example.test")],
        from_name="Ann",
        subject="Zürich, again",
        body="<p>Hello <b>Bob</b></p>",
        headers=[("X-Campaign", "7")],
        in_reply_to="<q1@example.test>",
        references=["<q0@example.test>", "<q1@example.test>"],
        files=[
            DraftFile("note.txt", "text/plain", b"a note\n"),
            DraftFile("logo.png", "image/png", b"\x89PNG\r\n", content_id="logo", inline=True),
        ],
    )
    msg = compose(content, sender="ann@example.test", message_id="<d1@example.test>", when=WHEN)
    assert msg["Bcc"] == "hidden@example.test"  # a draft keeps its Bcc until sent
    back = read(msg.as_bytes())
    assert back == content


def test_a_plain_text_draft_stays_plain() -> None:
    content = DraftContent(subject="s", body="just text\n", is_plaintext=True)
    msg = compose(content, sender="ann@example.test", message_id="<d2@example.test>", when=WHEN)
    assert msg.get_content_type() == "text/plain"
    back = read(msg.as_bytes())
    assert (back.body, back.is_plaintext) == ("just text\n", True)


def test_a_draft_another_client_wrote_reads_with_its_inline_image() -> None:
    # multipart/related inside multipart/alternative, as Thunderbird saves an HTML draft
    msg = EmailMessage()
    msg["From"] = "Ann <ann@example.test>"
    msg["To"] = "Bob <bob@example.test>, carol@example.test"
    msg["Subject"] = "Pictures"
    msg.set_content("see the picture")
    msg.add_alternative('<p>see <img src="cid:pic1"></p>', subtype="html")
    html_part = msg.get_payload()[1]  # type: ignore[index]
    html_part.add_related(b"GIF89a", maintype="image", subtype="gif", cid="<pic1>")
    msg.add_attachment(b"%PDF-1.4", maintype="application", subtype="pdf", filename="a.pdf")
    back = read(msg.as_bytes())
    assert [(p.email, p.name) for p in back.to] == [
        ("bob@example.test", "Bob"),
        ("carol@example.test", ""),
    ]
    assert back.body.startswith('<p>see <img src="cid:pic1">')
    assert not back.is_plaintext
    assert [(f.filename, f.content_type, f.content_id, f.content) for f in back.files] == [
        ("attachment", "image/gif", "pic1", b"GIF89a"),
        ("a.pdf", "application/pdf", None, b"%PDF-1.4"),
    ]


def test_a_draft_of_too_many_parts_is_refused() -> None:
    files = [DraftFile(f"f{i}.bin", "application/octet-stream", b"x") for i in range(MAX_PARTS)]
    msg = compose(
        DraftContent(body="b", is_plaintext=True, files=files),
        sender="ann@example.test",
        message_id="<d3@example.test>",
        when=WHEN,
    )
    with pytest.raises(ValueError, match="parts"):
        read(msg.as_bytes())
