"""Helpers to put mail on the test servers the way a real MTA or client would."""

from __future__ import annotations

import imaplib
from datetime import UTC, datetime
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid

from tests.support.services import AnyServer


def make_message(
    subject: str = "Hello",
    body: str = "Hi there",
    *,
    sender: str = "Alice <alice@example.test>",
    to: str = "Bob <bob@example.test>",
    date: datetime | None = None,
    message_id: str | None = "auto",
    in_reply_to: str | None = None,
    html: str | None = None,
) -> bytes:
    """A small well-formed message."""
    msg = EmailMessage()
    msg["From"] = sender
    msg["To"] = to
    msg["Subject"] = subject
    msg["Date"] = format_datetime(date or datetime.now(UTC))
    if message_id == "auto":
        msg["Message-ID"] = make_msgid(domain="example.test")
    elif message_id:
        msg["Message-ID"] = message_id
    if in_reply_to:
        msg["In-Reply-To"] = in_reply_to
        msg["References"] = in_reply_to
    msg.set_content(body)
    if html:
        msg.add_alternative(html, subtype="html")
    return msg.as_bytes()


def imap_login(server: AnyServer, user: str, password: str) -> imaplib.IMAP4:
    """A plain imaplib session on the test server (test-side tooling, not the code under test)."""
    conn = imaplib.IMAP4("127.0.0.1", server.port, timeout=30)
    conn.login(user, password)
    return conn


def append(
    server: AnyServer,
    user: str,
    password: str,
    raw: bytes,
    *,
    folder: str = "INBOX",
    when: datetime | None = None,
    flags: str = "",
) -> None:
    """APPEND one message with an INTERNALDATE."""
    conn = imap_login(server, user, password)
    try:
        typ, data = conn.append(
            f'"{folder}"',
            f"({flags})" if flags else None,
            imaplib.Time2Internaldate(when or datetime.now(UTC)),
            raw,
        )
        assert typ == "OK", data
    finally:
        conn.logout()


def create_folder(server: AnyServer, user: str, password: str, raw_name: str) -> None:
    """CREATE a folder (``raw_name`` already in modified UTF-7)."""
    conn = imap_login(server, user, password)
    try:
        typ, data = conn.create(f'"{raw_name}"')
        assert typ == "OK", data
    finally:
        conn.logout()


def flags_of(server: AnyServer, user: str, password: str, folder: str = "INBOX") -> list[str]:
    """FLAGS of every message in a folder, as the server holds them."""
    conn = imap_login(server, user, password)
    try:
        conn.select(f'"{folder}"', readonly=True)
        _typ, data = conn.fetch("1:*", "(FLAGS)")
        return [d.decode() for d in data if isinstance(d, bytes)]
    finally:
        conn.logout()


def move(server: AnyServer, user: str, password: str, uid: int, to: str) -> None:
    """Move one INBOX message as a client would: MOVE where offered, else COPY, \\Deleted and
    EXPUNGE (Courier)."""
    conn = imap_login(server, user, password)
    try:
        conn.select("INBOX")
        if "MOVE" in conn.capabilities:
            typ, data = conn.uid("MOVE", str(uid), f'"{to}"')
            assert typ == "OK", data
            return
        deleted = ("STORE", str(uid), "+FLAGS", "(\\Deleted)")
        for command in (("COPY", str(uid), f'"{to}"'), deleted):
            typ, data = conn.uid(*command)
            assert typ == "OK", data
        typ, data = conn.expunge()
        assert typ == "OK", data
    finally:
        conn.logout()


def store_flags(
    server: AnyServer, user: str, password: str, folder: str, flags: str, *, add: bool = True
) -> None:
    """Add (or remove) ``flags`` on every message of a folder, as another client would."""
    conn = imap_login(server, user, password)
    try:
        typ, data = conn.select(f'"{folder}"')
        assert typ == "OK", data
        typ, data = conn.store("1:*", "+FLAGS" if add else "-FLAGS", f"({flags})")
        assert typ == "OK", data
    finally:
        conn.logout()


def expunge_first(server: AnyServer, user: str, password: str, folder: str) -> None:
    """Delete the first message of a folder for good (``\\Deleted`` and EXPUNGE)."""
    conn = imap_login(server, user, password)
    try:
        typ, data = conn.select(f'"{folder}"')
        assert typ == "OK", data
        typ, data = conn.store("1", "+FLAGS", "(\\Deleted)")
        assert typ == "OK", data
        typ, data = conn.expunge()
        assert typ == "OK", data
    finally:
        conn.logout()


def recreate_folder(server: AnyServer, user: str, password: str, folder: str) -> int:
    """Delete a folder and make it again with the same messages, flags and dates, as a client
    restoring a backup would: the server gives it a new UIDVALIDITY (returned)."""
    conn = imap_login(server, user, password)
    try:
        typ, before = conn.status(f'"{folder}"', "(UIDVALIDITY)")
        assert typ == "OK", before
        old_validity = int(_text(before[0]).rsplit("UIDVALIDITY", 1)[1].strip(" )"))
        conn.select(f'"{folder}"', readonly=True)
        typ, data = conn.fetch("1:*", "(FLAGS INTERNALDATE BODY.PEEK[])")
        assert typ == "OK", data
        saved = [
            (imaplib.ParseFlags(item[0]), imaplib.Internaldate2tuple(item[0]), item[1])
            for item in data
            if isinstance(item, tuple)
        ]
        conn.close()
        for command in (conn.delete, conn.create):
            typ, data = command(f'"{folder}"')
            assert typ == "OK", data
        for flags, when, raw in saved:
            kept = " ".join(f.decode() for f in flags if f.decode() != "\\Recent")
            typ, data = conn.append(f'"{folder}"', f"({kept})", when, raw)
            assert typ == "OK", data
        typ, after = conn.status(f'"{folder}"', "(UIDVALIDITY)")
        new_validity = int(_text(after[0]).rsplit("UIDVALIDITY", 1)[1].strip(" )"))
        assert new_validity != old_validity, "the server kept the UIDVALIDITY"
        return new_validity
    finally:
        conn.logout()


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
