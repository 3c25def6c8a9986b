# ruff: noqa: RUF001 - the Cyrillic text is meant to be Cyrillic
"""Realistic, reproducible mailboxes for the demo, tests and benchmarks.

:func:`generate` yields messages in the order they arrived (oldest first); the same ``seed``
and ``now`` always give the same bytes. The mix:

- bodies: plain text, HTML only, multipart/alternative, and multipart/mixed with one or two
  binary attachments (PDF-, PNG- and JPEG-like, sizes spread log-uniformly over
  ``attachment_sizes``) in exactly ``attachment_fraction`` of the messages;
- threads: replies with ``In-Reply-To``/``References`` and ``Re:`` subjects;
- languages: English, German, French, Russian and Japanese, with subjects and names RFC 2047
  encoded in utf-8, iso-8859-1, koi8-r and iso-2022-jp, and bodies in those charsets with
  quoted-printable, base64, 8bit or 7bit transfer encodings;
- flags: most older mail ``\\Seen``, some ``\\Flagged`` and ``\\Answered``, drafts ``\\Draft``;
- about 3 % without a Message-ID; exactly ``old_fraction`` older than ``retention_days``.

Two ways into a server: :func:`seed_maildir` writes files straight into a Dovecot Maildir++
tree (thousands of messages per second; INTERNALDATE comes from the file's mtime), and
:func:`append_imap` uses IMAP APPEND (slower, works against any server).
"""

from __future__ import annotations

import base64
import math
import os
import random
import socket
import ssl
import struct
import zlib
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from email.charset import BASE64, QP, Charset
from email.header import Header
from email.message import Message
from email.mime.multipart import MIMEMultipart
from email.mime.nonmultipart import MIMENonMultipart
from email.policy import compat32
from email.utils import format_datetime, formataddr
from pathlib import Path
from typing import cast

from pipeline.dev import system_user

__all__ = [
    "DEFAULT_FOLDERS",
    "GeneratedMessage",
    "append_imap",
    "encode_modified_utf7",
    "generate",
    "seed_maildir",
]

DEFAULT_FOLDERS: Mapping[str, float] = {
    "INBOX": 0.52,
    "Sent": 0.15,
    "Archive": 0.12,
    "Reçus": 0.07,
    "Junk": 0.06,
    "Entwürfe/Privat": 0.05,
    "Drafts": 0.03,
}
DEFAULT_RETENTION_DAYS = 90
OLD_SPAN_DAYS = 3 * 365  # old mail is spread over the three years before the window
RECENT_MARGIN_S = 6 * 3600  # keep "recent" and "old" mail clear of the window's edges
MISSING_MESSAGE_ID_RATE = 0.03
REPLY_RATE = 0.3
THREAD_POOL_SIZE = 40  # replies pick a parent among the last this many messages
SECOND_ATTACHMENT_RATE = 0.15
FLAGGED_RATE = 0.05
IMAP_TIMEOUT_S = 60.0
# body kinds of messages without attachments, and their weights
BODY_KINDS: Mapping[str, float] = {"plain": 0.4, "html": 0.15, "alternative": 0.45}
_LF = b"\n"
_KIND_NAMES, _KIND_WEIGHTS = list(BODY_KINDS), list(BODY_KINDS.values())
_WIRE = compat32.clone(linesep="\r\n")
_MAILDIR_FLAGS = {
    "\\Draft": "D",
    "\\Flagged": "F",
    "\\Answered": "R",
    "\\Seen": "S",
    "\\Deleted": "T",
}


@dataclass(frozen=True)
class GeneratedMessage:
    """One generated message and where it goes.

    Attributes:
        folder: Folder name as clients see it (UTF-8, ``/`` between levels).
        internaldate: When the server received it (aware, UTC, whole seconds).
        flags: IMAP system flags, e.g. ``("\\\\Seen",)``.
        raw: The RFC 5322 message, CRLF line endings.
        message_id: Its Message-ID header, or None when it has none.
        kind: ``plain``, ``html``, ``alternative`` or ``mixed`` (has attachments).
    """

    folder: str
    internaldate: datetime
    flags: tuple[str, ...]
    raw: bytes
    message_id: str | None = None
    kind: str = "plain"


@dataclass(frozen=True)
class _Locale:
    charset: str
    weight: float
    first_names: tuple[str, ...]
    last_names: tuple[str, ...]
    subjects: tuple[str, ...]
    sentences: tuple[str, ...]
    greeting: str
    closing: str
    reply_prefix: str = "Re: "


_LOCALES: tuple[_Locale, ...] = (
    _Locale(
        "us-ascii",
        0.62,
        ("Alice", "Bob", "Carol", "David", "Emma", "Frank", "Grace", "Henry", "Irene", "Jack"),
        ("Smith", "Johnson", "Brown", "Taylor", "Miller", "Wilson", "Moore", "Clark", "Lewis"),
        (
            "Quarterly report",
            "Lunch on Friday?",
            "Invoice {n}",
            "Meeting notes",
            "Your order #{n} has shipped",
            "Project kickoff",
            "Weekend plans",
            "Re-scheduling our call",
            "Slides for tomorrow",
            "Welcome to the team",
            "Reminder: dentist appointment",
            "Budget review {n}",
        ),
        (
            "Thanks for sending this over so quickly.",
            "Could we move the meeting to Thursday afternoon?",
            "I have attached the latest numbers for your review.",
            "Let me know if anything is unclear.",
            "The deployment went smoothly last night.",
            "We should revisit the timeline before the end of the month.",
            "I will be out of office next week.",
            "Please find the summary of our discussion below.",
            "The client approved the proposal this morning.",
            "Happy to help with the migration if needed.",
        ),
        "Hi {name},",
        "Best regards,",
    ),
    _Locale(
        "utf-8",
        0.12,
        ("Jürgen", "Zoë", "Søren", "Ana", "Łukasz", "Chloé", "Mia", "José", "Ingrid"),
        ("Müller", "Ørsted", "García", "Kowalski", "Næss", "Dvořák", "Weiß", "Ångström"),
        (
            "Grüße aus München ☀",
            "Café-Treffen am Donnerstag?",
            "Résumé of the Zürich workshop",
            "Angebot Nr. {n} — bitte prüfen",
            "Skål! Fotos vom Wochenende 📷",
            "Zaproszenie na spotkanie",
        ),
        (
            "Vielen Dank für die schnelle Rückmeldung.",
            "Können wir das Treffen auf Donnerstag verschieben?",
            "Anbei die überarbeitete Präsentation — Änderungen sind markiert.",
            "Das Wetter in Zürich war großartig. ☀",
            "Dziękuję za pomoc przy wdrożeniu.",
            "Hälsningar från Göteborg!",
        ),
        "Hallo {name},",
        "Viele Grüße",
        "AW: ",
    ),
    _Locale(
        "iso-8859-1",
        0.1,
        ("François", "Hélène", "Jérôme", "Anaïs", "Zoé", "Björn", "Günther"),
        ("Lefèvre", "Dubois", "Gérard", "Müller", "Bäcker", "Noël"),
        (
            "Réunion de l'équipe à 14h",
            "Facture n° {n}",
            "Votre commande a été expédiée",
            "Congés d'été",
            "Bestätigung Ihrer Bestellung Nr. {n}",
            "À propos du déménagement",
        ),
        (
            "Merci pour votre réponse rapide.",
            "Pourriez-vous vérifier les chiffres du trimestre ?",
            "Je serai absent la semaine prochaine.",
            "Voilà le compte rendu de la réunion de mercredi.",
            "Ich schicke Ihnen die Unterlagen morgen früh.",
            "Le café était excellent, à refaire !",
        ),
        "Bonjour {name},",
        "Cordialement,",
        "RE: ",
    ),
    _Locale(
        "koi8-r",
        0.08,
        ("Дмитрий", "Анна", "Сергей", "Ольга", "Николай", "Татьяна"),
        ("Иванов", "Смирнова", "Кузнецов", "Попова", "Соколов"),
        (
            "Отчёт за квартал",
            "Встреча в пятницу",
            "Счёт N {n}",
            "Новости проекта",
            "Поздравляю с днём рождения!",
        ),
        (
            "Спасибо за быстрый ответ.",
            "Можем ли мы перенести встречу на четверг?",
            "Во вложении последние данные по проекту.",
            "Дайте знать, если что-то непонятно.",
            "Хороших выходных!",
        ),
        "Здравствуйте, {name}!",
        "С уважением,",
    ),
    _Locale(
        "iso-2022-jp",
        0.08,
        ("太郎", "花子", "健一", "美咲", "翔太"),
        ("山田", "佐藤", "鈴木", "高橋", "田中"),
        (
            "会議のお知らせ",
            "見積書の送付 {n}",
            "打ち合わせの件",
            "ご注文ありがとうございます",
            "週末の予定",
        ),
        (
            "お世話になっております。",
            "資料を添付いたしましたのでご確認ください。",
            "来週の会議について日程を調整させてください。",
            "ご不明な点がございましたらお知らせください。",
            "よろしくお願いいたします。",
        ),
        "{name}様",
        "以上、よろしくお願いいたします。",
    ),
)
_SPAM_SUBJECTS = (
    "You have WON a $1,000 gift card!!!",
    "Cheap meds - 90% off today only",
    "URGENT: verify your account now",
    "Make money from home, guaranteed",
    "Re: your unpaid invoice",
)
_SPAM_DOMAINS = ("prize-center.biz", "best-deals.top", "secure-verify.info", "promo.click")
_DOMAINS = ("example.com", "example.org", "example.net", "mail.example.de", "corp.example.fr")
_ZONES = tuple(timezone(timedelta(hours=h)) for h in (-8, -5, 0, 1, 2, 3, 9))


@dataclass
class _Sent:
    message_id: str
    subject: str
    references: tuple[str, ...]
    locale: _Locale
    contact: tuple[str, str]
    internaldate: datetime


def generate(
    count: int,
    *,
    seed: int,
    now: datetime,
    old_fraction: float = 0.1,
    attachment_fraction: float = 0.1,
    attachment_sizes: tuple[int, int] = (100_000, 5_000_000),
    folders: Mapping[str, float] = DEFAULT_FOLDERS,
    owner: str = "demo@localhost",
    retention_days: int = DEFAULT_RETENTION_DAYS,
) -> Iterator[GeneratedMessage]:
    """Yield ``count`` realistic messages, oldest first; the same arguments give the same bytes.

    Args:
        count: How many messages.
        seed: Seed of the random choices.
        now: The moment "now" (timezone-aware); every INTERNALDATE is before it.
        old_fraction: Share of messages older than ``retention_days`` (exact, rounded).
        attachment_fraction: Share of messages with attachments (exact, rounded).
        attachment_sizes: Smallest and largest attachment, in bytes before encoding.
        folders: Folder names and their weights.
        owner: The mailbox owner's address (sender of Sent and Drafts, recipient of the rest).
        retention_days: The sync window the old messages fall outside of.

    Raises:
        ValueError: an argument is out of range.
    """
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    if count < 0 or not 0 <= old_fraction <= 1 or not 0 <= attachment_fraction <= 1:
        raise ValueError("count >= 0 and fractions within [0, 1] please")
    low, high = attachment_sizes
    if not 0 < low <= high:
        raise ValueError("attachment_sizes must be (smallest, largest) with 0 < smallest")
    if not folders or any(w < 0 for w in folders.values()) or sum(folders.values()) <= 0:
        raise ValueError("folders needs at least one positive weight")
    rng = random.Random(seed)
    builder = _Builder(rng, owner)
    names, weights = list(folders), list(folders.values())
    for internaldate, with_attachments in _timeline(
        rng, count, now, old_fraction, attachment_fraction, retention_days
    ):
        folder = rng.choices(names, weights)[0]
        yield builder.message(folder, internaldate, with_attachments, (low, high), now)


def _timeline(
    rng: random.Random,
    count: int,
    now: datetime,
    old_fraction: float,
    attachment_fraction: float,
    retention_days: int,
) -> list[tuple[datetime, bool]]:
    now_s = math.floor(now.timestamp())
    window_s = retention_days * 86400
    old_count = round(count * old_fraction)
    recent = [
        rng.uniform(now_s - window_s + RECENT_MARGIN_S, now_s - 60)
        for _ in range(count - old_count)
    ]
    old = [
        rng.uniform(now_s - window_s - OLD_SPAN_DAYS * 86400, now_s - window_s - RECENT_MARGIN_S)
        for _ in range(old_count)
    ]
    stamps = sorted(math.floor(t) for t in recent + old)
    with_attachments = set(rng.sample(range(count), round(count * attachment_fraction)))
    return [(datetime.fromtimestamp(t, UTC), i in with_attachments) for i, t in enumerate(stamps)]


class _Builder:
    """Builds one message at a time, remembering recent ones to reply to."""

    def __init__(self, rng: random.Random, owner: str) -> None:
        self.rng = rng
        self.owner = owner
        self.owner_name = owner.partition("@")[0].replace(".", " ").title()
        self.pool: list[_Sent] = []
        self.counter = 0
        # attachments are serialized as placeholders and spliced in afterwards: the email
        # package's generator re-splits every line of a payload, far too slowly for megabytes
        self.spliced: dict[bytes, bytes] = {}

    def message(
        self,
        folder: str,
        internaldate: datetime,
        with_attachments: bool,
        sizes: tuple[int, int],
        now: datetime,
    ) -> GeneratedMessage:
        rng = self.rng
        self.counter += 1
        role = _folder_role(folder)
        parent = self._parent(role)
        locale = parent.locale if parent else self._locale(folder)
        contact = parent.contact if parent else self._contact(locale, role)
        subject = self._subject(locale, role, parent)
        outgoing = role in ("sent", "drafts")

        body_text = self._body(locale, contact[0] if outgoing else self.owner_name)
        kind = "mixed" if with_attachments else rng.choices(_KIND_NAMES, _KIND_WEIGHTS)[0]
        msg = self._body_part(kind, body_text, locale, sizes)

        sender = (self.owner_name, self.owner) if outgoing else contact
        recipient = contact if outgoing else (self.owner_name, self.owner)
        msg["From"] = _address(sender, locale)
        msg["To"] = _address(recipient, locale)
        if rng.random() < 0.15:
            cc = self._contact(locale, "inbox")
            msg["Cc"] = _address(cc, locale)
        msg["Subject"] = cast("str", _header(subject, locale))  # compat32 keeps a Header as is
        sent_at = internaldate - timedelta(seconds=rng.randint(2, 900))
        msg["Date"] = format_datetime(sent_at.astimezone(rng.choice(_ZONES)))

        message_id: str | None = None
        if role == "drafts" or rng.random() >= MISSING_MESSAGE_ID_RATE:
            domain = self.owner.partition("@")[2] if outgoing else contact[1].partition("@")[2]
            message_id = f"<{rng.getrandbits(64):016x}.{self.counter}@{domain or 'localhost'}>"
            msg["Message-ID"] = message_id
        if parent is not None:
            references = (*parent.references, parent.message_id)[-10:]
            msg["In-Reply-To"] = parent.message_id
            msg["References"] = " ".join(references)
        else:
            references = ()
        if role == "junk":
            msg["X-Spam-Flag"] = "YES"
        _reorder_headers(msg)

        if message_id is not None and role not in ("junk", "drafts"):
            self.pool.append(_Sent(message_id, subject, references, locale, contact, internaldate))
            del self.pool[:-THREAD_POOL_SIZE]
        flags = self._flags(role, internaldate, now, parent is not None)
        raw = msg.as_bytes(policy=_WIRE)
        for placeholder, encoded in self.spliced.items():
            raw = raw.replace(placeholder, encoded, 1)
        self.spliced.clear()
        return GeneratedMessage(
            folder=folder,
            internaldate=internaldate,
            flags=flags,
            raw=raw,
            message_id=message_id,
            kind=kind,
        )

    # --- choices ------------------------------------------------------------------------------

    def _parent(self, role: str) -> _Sent | None:
        if role in ("junk", "drafts") or not self.pool or self.rng.random() >= REPLY_RATE:
            return None
        return self.rng.choice(self.pool)

    def _locale(self, folder: str) -> _Locale:
        if folder == "Reçus":
            return _LOCALES[2]
        return self.rng.choices(_LOCALES, [loc.weight for loc in _LOCALES])[0]

    def _contact(self, locale: _Locale, role: str) -> tuple[str, str]:
        rng = self.rng
        if role == "junk":
            word = rng.choice(("promo", "winner", "support", "noreply", "offers"))
            return (word.title() + " Team", f"{word}@{rng.choice(_SPAM_DOMAINS)}")
        first, last = rng.choice(locale.first_names), rng.choice(locale.last_names)
        local = f"user{rng.randint(1, 999)}" if not first.isascii() else first.lower()
        name = f"{last}{first}" if locale.charset == "iso-2022-jp" else f"{first} {last}"
        return (name, f"{local}.{rng.randint(1, 99)}@{rng.choice(_DOMAINS)}")

    def _subject(self, locale: _Locale, role: str, parent: _Sent | None) -> str:
        if parent is not None:
            prefix = locale.reply_prefix
            return parent.subject if parent.subject.startswith(prefix) else prefix + parent.subject
        if role == "junk":
            return self.rng.choice(_SPAM_SUBJECTS)
        return self.rng.choice(locale.subjects).format(n=self.rng.randint(1000, 99999))

    def _body(self, locale: _Locale, name: str) -> str:
        rng = self.rng
        paragraphs = [
            " ".join(rng.sample(locale.sentences, rng.randint(1, 4)))
            for _ in range(rng.randint(1, 4))
        ]
        greeting = locale.greeting.format(name=name.split()[0] if name else "")
        return "\n\n".join([greeting, *paragraphs, locale.closing]) + "\n"

    def _flags(
        self, role: str, internaldate: datetime, now: datetime, reply: bool
    ) -> tuple[str, ...]:
        rng = self.rng
        flags: set[str] = set()
        age_days = (now - internaldate).total_seconds() / 86400
        if role == "drafts":
            flags.add("\\Draft")
        elif role == "sent" or rng.random() < min(0.97, 0.45 + age_days / 60):
            flags.add("\\Seen")
        if role not in ("junk", "drafts") and rng.random() < FLAGGED_RATE:
            flags.add("\\Flagged")
        if role not in ("sent", "junk", "drafts") and "\\Seen" in flags and rng.random() < 0.12:
            flags.add("\\Answered")
        if reply and role == "sent":
            flags.add("\\Answered")
        return tuple(sorted(flags))

    # --- MIME ---------------------------------------------------------------------------------

    def _body_part(self, kind: str, text: str, locale: _Locale, sizes: tuple[int, int]) -> Message:
        if kind == "plain":
            return self._text(text, "plain", locale, top=True)
        if kind == "html":
            return self._text(_html(text, locale), "html", locale, top=True)
        alternative = self._multipart("alternative", top=kind == "alternative")
        alternative.attach(self._text(text, "plain", locale))
        alternative.attach(self._text(_html(text, locale), "html", locale))
        if kind == "alternative":
            return alternative
        mixed = self._multipart("mixed", top=True)
        mixed.attach(alternative if self.rng.random() < 0.6 else self._text(text, "plain", locale))
        for _ in range(2 if self.rng.random() < SECOND_ATTACHMENT_RATE else 1):
            mixed.attach(self._attachment(sizes, locale))
        return mixed

    def _multipart(self, subtype: str, *, top: bool) -> MIMEMultipart:
        part = MIMEMultipart(subtype, boundary=f"=_{self.rng.getrandbits(96):024x}")
        if not top:
            del part["MIME-Version"]
        return part

    def _text(self, text: str, subtype: str, locale: _Locale, *, top: bool = False) -> Message:
        charset = Charset(_body_charset(locale))
        encoding = self.rng.choice(_TRANSFER_ENCODINGS[locale.charset])
        charset.body_encoding = encoding  # type: ignore[assignment]  # None (8bit) is valid
        part = MIMENonMultipart("text", subtype)
        part.set_payload(text, charset)
        if locale.charset == "us-ascii":
            part.set_param("charset", "us-ascii")
        if not top:
            del part["MIME-Version"]
        return part

    def _attachment(self, sizes: tuple[int, int], locale: _Locale) -> Message:
        rng = self.rng
        low, high = sizes
        size = round(math.exp(rng.uniform(math.log(low), math.log(high))))
        maintype, subtype, ext, data = rng.choice(_FILE_KINDS)(rng, size)
        stem = rng.choice(("report", "scan", "photo", "invoice", "contract", "slides"))
        if locale.charset == "utf-8" and rng.random() < 0.5:
            stem = "Übersicht-" + stem
        part = MIMENonMultipart(maintype, subtype)
        del part["MIME-Version"]
        placeholder = f"@@attachment-{self.counter}-{len(self.spliced)}@@"
        encoded = base64.encodebytes(data).replace(b"\n", b"\r\n").removesuffix(b"\r\n")
        self.spliced[placeholder.encode("ascii")] = encoded
        part.set_payload(placeholder)
        part["Content-Transfer-Encoding"] = "base64"
        filename = f"{stem}-{rng.randint(1, 999)}.{ext}"
        if filename.isascii():
            part.add_header("Content-Disposition", "attachment", filename=filename)
        else:  # RFC 2231
            part.add_header("Content-Disposition", "attachment", filename=("utf-8", "", filename))
        return part


_TRANSFER_ENCODINGS: Mapping[str, tuple[int | None, ...]] = {
    "us-ascii": (None,),  # 7bit
    "utf-8": (QP, BASE64, None),  # None: 8bit
    "iso-8859-1": (QP, None),
    "koi8-r": (BASE64, None),
    "iso-2022-jp": (None,),  # 7bit escape sequences
}


def _body_charset(locale: _Locale) -> str:
    return "utf-8" if locale.charset == "us-ascii" else locale.charset


def _folder_role(folder: str) -> str:
    lowered = folder.lower()
    for role in ("sent", "drafts", "junk"):
        if lowered == role:
            return role
    return "inbox"


def _header(text: str, locale: _Locale) -> str | Header:
    if text.isascii():
        return text
    return Header(text, _body_charset(locale))


def _address(person: tuple[str, str], locale: _Locale) -> str:
    name, address = person
    if name.isascii():
        return formataddr((name, address))
    return formataddr((name, address), charset=locale.charset)


def _reorder_headers(msg: Message) -> None:
    """Envelope headers first, MIME headers last, as mail clients write them."""
    order = ("From", "To", "Cc", "Subject", "Date", "Message-ID", "In-Reply-To", "References")
    items = msg.items()
    for key, _ in items:
        del msg[key]
    rank = {name.lower(): i for i, name in enumerate(order)}
    for key, value in sorted(items, key=lambda kv: rank.get(kv[0].lower(), len(order))):
        msg[key] = value


def _html(text: str, locale: _Locale) -> str:
    paragraphs = "".join(
        f'<p style="margin:0 0 12px">{_escape(p).replace(chr(10), "<br>")}</p>\n'
        for p in text.strip().split("\n\n")
    )
    return (
        '<!DOCTYPE html>\n<html><head><meta charset="utf-8"></head>\n'
        '<body style="font-family:Arial,sans-serif;font-size:14px">\n'
        f'{paragraphs}<p><a href="https://example.com/unsubscribe">Unsubscribe</a></p>\n'
        "</body></html>\n"
    )


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _pdf(rng: random.Random, size: int) -> tuple[str, str, str, bytes]:
    head = b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<< /Filter /FlateDecode >>\nstream\n"
    tail = b"\nendstream\nendobj\ntrailer\n<< /Root 1 0 R >>\n%%EOF\n"
    return "application", "pdf", "pdf", _fill(rng, head, tail, size)


def _png(rng: random.Random, size: int) -> tuple[str, str, str, bytes]:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    header = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 640, 480, 8, 2, 0, 0, 0))
    end = chunk(b"IEND", b"")
    body = rng.randbytes(max(0, size - len(header) - len(end) - 12))
    return "image", "png", "png", header + chunk(b"IDAT", body) + end


def _jpeg(rng: random.Random, size: int) -> tuple[str, str, str, bytes]:
    head = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00"
    return "image", "jpeg", "jpg", _fill(rng, head, b"\xff\xd9", size)


def _fill(rng: random.Random, head: bytes, tail: bytes, size: int) -> bytes:
    return head + rng.randbytes(max(0, size - len(head) - len(tail))) + tail


_FILE_KINDS = (_pdf, _pdf, _png, _jpeg)


# --- into a server ----------------------------------------------------------------------------


def encode_modified_utf7(name: str) -> str:
    """A folder name in IMAP's modified UTF-7 (RFC 3501 section 5.1.3), as Maildir++ stores it."""
    out: list[str] = []
    pending: list[str] = []

    def flush() -> None:
        if pending:
            utf16 = "".join(pending).encode("utf-16-be")
            out.append("&" + base64.b64encode(utf16).rstrip(b"=").decode().replace("/", ",") + "-")
            pending.clear()

    for char in name:
        if 0x20 <= ord(char) <= 0x7E:
            flush()
            out.append("&-" if char == "&" else char)
        else:
            pending.append(char)
    flush()
    return "".join(out)


def maildir_folder_path(maildir_root: Path, folder: str, separator: str = "/") -> Path:
    """Where Dovecot's Maildir++ layout keeps ``folder`` (``INBOX`` is the root itself).

    Raises:
        ValueError: the name holds a ``.``, which Maildir++ uses between levels.
    """
    if folder.upper() == "INBOX":
        return maildir_root
    levels = folder.split(separator)
    if any("." in level or not level for level in levels):
        raise ValueError(f"folder {folder!r}: Maildir++ names cannot hold '.' or empty levels")
    return maildir_root / ("." + ".".join(encode_modified_utf7(level) for level in levels))


def seed_maildir(
    maildir_root: Path,
    messages: Iterable[GeneratedMessage],
    owner: str | None = None,
    *,
    separator: str = "/",
) -> int:
    """Write messages straight into a Dovecot Maildir++ tree; much faster than APPEND.

    Folders become ``.Name`` folders (modified UTF-7, ``.`` between levels) with a
    ``maildirfolder`` file; each message goes through ``tmp/`` into ``cur/`` with its flags in
    the ``:2,`` suffix and its mtime set to the INTERNALDATE, which Dovecot reports. Safe while
    Dovecot runs: it picks up new files at the next access.

    Args:
        maildir_root: The user's Maildir++ root (``LocalDovecot.maildir(user)``).
        messages: What to write.
        owner: System user that must own the files (``LocalDovecot.mail_user``); None keeps
            the current owner.
        separator: The hierarchy separator clients see.

    Returns:
        How many messages were written.

    Raises:
        ValueError: a flag has no Maildir letter, or a folder name cannot be stored.
    """
    entry = system_user(owner) if owner else None
    ids = (entry.pw_uid, entry.pw_gid) if entry else None
    made: dict[str, Path] = {}
    host = socket.gethostname().replace("/", "\\057").replace(":", "\\072")
    pid = os.getpid()
    written = 0
    for message in messages:
        folder = made.get(message.folder)
        if folder is None:
            folder = made[message.folder] = _make_maildir(
                maildir_root, maildir_folder_path(maildir_root, message.folder, separator), ids
            )
        letters = []
        for flag in message.flags:
            if flag == "\\Recent":
                continue
            if flag not in _MAILDIR_FLAGS:
                raise ValueError(f"flag {flag!r} has no Maildir letter")
            letters.append(_MAILDIR_FLAGS[flag])
        data = message.raw.replace(b"\r\n", b"\n")
        stamp = message.internaldate.timestamp()
        written += 1
        name = (
            f"{math.floor(stamp)}.M{written % 1_000_000}P{pid}Q{written}.{host}"
            f",S={len(data)},W={len(data) + data.count(_LF)}"
        )
        tmp = folder / "tmp" / name
        with open(tmp, "xb") as fh:
            fh.write(data)
        os.utime(tmp, (stamp, stamp))
        if ids is not None:
            os.chown(tmp, *ids)
        tmp.rename(folder / "cur" / f"{name}:2,{''.join(sorted(letters))}")
    return written


def _make_maildir(root: Path, folder: Path, ids: tuple[int, int] | None) -> Path:
    for path in (root, folder):
        created = not path.exists()
        for sub in ("", "cur", "new", "tmp"):
            (path / sub).mkdir(mode=0o700, parents=True, exist_ok=True)
            if created and ids is not None:
                os.chown(path / sub, *ids)
    marker = folder / "maildirfolder"
    if folder != root and not marker.exists():
        marker.touch()
        if ids is not None:
            os.chown(marker, *ids)
    return folder


def append_imap(
    host: str,
    port: int,
    user: str,
    password: str,
    messages: Iterable[GeneratedMessage],
    *,
    ssl_context: ssl.SSLContext | None = None,
) -> int:
    """APPEND messages over IMAP with their INTERNALDATE and flags; folders are created.

    Args:
        host: IMAP server.
        port: Its port.
        user: Login name.
        password: Password (never logged).
        messages: What to append.
        ssl_context: Use implicit TLS with this context; None for a plain connection.

    Returns:
        How many messages were appended.
    """
    from imap_tools import MailBox, MailBoxUnencrypted  # imported late: tests need it rarely

    mailbox = (
        MailBox(host, port, timeout=IMAP_TIMEOUT_S, ssl_context=ssl_context)
        if ssl_context is not None
        else MailBoxUnencrypted(host, port, timeout=IMAP_TIMEOUT_S)
    )
    appended = 0
    with mailbox.login(user, password, initial_folder=None) as box:
        existing = {f.name for f in box.folder.list()}
        for message in messages:
            if message.folder not in existing:
                box.folder.create(message.folder)
                existing.add(message.folder)
            box.append(
                message.raw,
                message.folder,
                dt=message.internaldate,
                flag_set=[f for f in message.flags if f != "\\Recent"],
            )
            appended += 1
    return appended
