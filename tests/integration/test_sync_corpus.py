"""Real-world mail through the whole sync path: charsets, broken MIME, huge and unparseable mail.

Every file of the corpus (tests/corpus: 250 messages from permissively licensed parsers' tests)
is delivered into one mailbox; the sync must store each one (or record why it could not) and
never stop the folder.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from email.message import EmailMessage

import pytest
from sqlalchemy import func, select

from pipeline.config import Settings
from pipeline.db import session_scope
from pipeline.dev.mailgen import GeneratedMessage
from pipeline.dev.seed import seed_maildir
from pipeline.models import Attachment, Folder, Message, Placement, SyncFailure
from pipeline.sync.run import sync_grant_inline
from tests.support.corpus import CORPUS
from tests.support.grants import connect, sessions_for
from tests.support.services import MailUser

pytestmark = pytest.mark.services

BIG_ATTACHMENT_BYTES = 24 * 1024 * 1024  # a 25 MB message once base64-encoded... and more


def _big_message() -> bytes:
    msg = EmailMessage()
    msg["From"] = "Big Sender <big@example.test>"
    msg["To"] = "someone@example.test"
    msg["Subject"] = "A very large attachment"
    msg["Message-ID"] = "<big-25mb@example.test>"
    msg["Date"] = "Tue, 24 Nov 2026 10:00:00 +0000"
    msg.set_content("See the attached archive.")
    payload = (b"0123456789abcdef" * (BIG_ATTACHMENT_BYTES // 16 + 1))[:BIG_ATTACHMENT_BYTES]
    msg.add_attachment(payload, maintype="application", subtype="zip", filename="backup.zip")
    return msg.as_bytes()


def test_the_corpus_syncs_without_losing_a_message(settings: Settings, mail_user: MailUser) -> None:
    files = sorted(CORPUS.rglob("*.eml"))
    assert len(files) >= 200, f"the corpus is missing at {CORPUS}"
    now = datetime.now(UTC).replace(microsecond=0)
    raws = [f.read_bytes() for f in files]
    # binary files stored as mail (Dovecot serves NUL bytes as 0x80, so use none)
    garbage = [b"\x01\x02\x03 not a message at all \xff\xfe", bytes(range(1, 9)) * 20]
    big = _big_message()
    assert len(big) > 25_000_000
    delivered = [*raws, *garbage, big]
    seed_maildir(
        mail_user.server.maildir(mail_user.name),
        (
            GeneratedMessage("INBOX", now - timedelta(minutes=i), (), raw)
            for i, raw in enumerate(delivered)
        ),
        owner=mail_user.server.mail_user,
    )
    grant_id = connect(settings, mail_user)
    sync_grant_inline(sessions_for(settings), settings, grant_id)

    with session_scope(settings.require_database_url()) as db:
        inbox = db.scalars(
            select(Folder).where(Folder.grant_id == grant_id, Folder.role == "inbox")
        ).one()
        assert inbox.state == "synced"
        placed = int(db.scalar(select(func.count()).select_from(Placement)) or 0)
        failures = db.scalars(select(SyncFailure)).all()
        # every delivered message is either stored or recorded as unparseable, none is lost
        assert placed + len(failures) == len(delivered)
        assert len(failures) == len(garbage)
        assert all("not an RFC 5322 message" in f.error for f in failures)

        def subject_of(message_id: str) -> str:
            return db.scalars(
                select(Message.subject).where(Message.message_id_header == message_id)
            ).one()

        # KOI8-R / windows-1251 encoded words decoded
        assert subject_of("<20111130105154.420718F8800@ns3.uzinfocom.uz>") == (
            "Рассылка: Уведомление участникам тендеров"
        )
        # ISO-2022-JP subject and RFC 2231 filename
        japanese = db.scalars(
            select(Message).where(
                Message.message_id_header
                == "<60A112A8-F26C-4E23-95B8-4EB9F139D6A0@test.lindsaar.net>"
            )
        ).one()
        assert japanese.subject.startswith("まみむめも")
        names = db.scalars(
            select(Attachment.filename).where(Attachment.message_id == japanese.id)
        ).all()
        assert names == ["かきくけこかきくけこかきくけこかきくけこかきくけこ.txt"]
        nonascii = db.scalars(
            select(Attachment.filename)
            .join(Message, Message.id == Attachment.message_id)
            .where(
                Message.message_id_header == "<9169D984-4E0B-45EF-82D4-8F5E53AD7012@example.com>"
            )
        ).all()
        assert nonascii == ["ciële.txt"]
        # the 25 MB message: metadata stored, bytes left on the server
        big_row = db.scalars(
            select(Message).where(Message.message_id_header == "<big-25mb@example.test>")
        ).one()
        assert big_row.has_attachments
        (attachment,) = db.scalars(
            select(Attachment).where(Attachment.message_id == big_row.id)
        ).all()
        assert attachment.filename == "backup.zip"
        assert attachment.size == BIG_ATTACHMENT_BYTES
        assert big_row.body.strip() == "See the attached archive."
        # messages without a Message-ID are kept
        no_id = int(
            db.scalar(
                select(func.count()).select_from(Message).where(Message.message_id_header.is_(None))
            )
            or 0
        )
        assert no_id > 10
