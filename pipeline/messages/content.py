"""Message content that Postgres does not keep, fetched from the IMAP server when asked for:
the whole message as the server has it, and the bytes of one attachment.

Reads use ``BODY.PEEK[...]`` (reading never marks a message read), on a session of
:func:`pipeline.grants.interactive.grant_imap` under the account's limits, from a folder that
holds the message. imaplib reads a literal whole, so what is fetched is held in memory once (at
most ``IMAP_PIPELINE_IMAP_MAX_LITERAL_BYTES``: the IMAP client refuses a bigger literal unread).
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Sequence

from sqlalchemy.orm import Session

from pipeline.errors import NotFound
from pipeline.grants.interactive import Interactive, grant_imap
from pipeline.messages.placements import PlacementRepository
from pipeline.models import Attachment, Grant, Message

_CTE = re.compile(rb"^content-transfer-encoding:[ \t]*([^\r\n;]+)", re.IGNORECASE | re.MULTILINE)


def transfer_encoding(mime_header: bytes | None) -> str:
    """The Content-Transfer-Encoding named in a part's header block (``7bit`` when absent)."""
    if not mime_header:
        return "7bit"
    unfolded = re.sub(rb"\r?\n[ \t]+", b" ", mime_header)
    match = _CTE.search(unfolded)
    return match[1].strip().decode("ascii", "replace").lower() if match else "7bit"


def decode_part(data: bytes, encoding: str) -> bytes:
    """Undo a transfer encoding; broken base64 is decoded as far as it goes."""
    if encoding == "base64":
        # Drop line breaks, padding and junk, then re-pad: a lone trailing character is noise.
        compact = re.sub(rb"[^A-Za-z0-9+/]", b"", data.split(b"=", 1)[0])
        if len(compact) % 4 == 1:
            compact = compact[:-1]
        compact += b"=" * (-len(compact) % 4)
        try:
            return base64.b64decode(compact)
        except binascii.Error:
            return b""
    if encoding == "quoted-printable":
        return binascii.a2b_qp(data)
    return data


def raw_messages(
    db: Session, access: Interactive, grant: Grant, messages: Sequence[Message]
) -> dict[str, bytes]:
    """The raw bytes of each message a folder still holds, by message id (one SELECT per folder
    and one FETCH per message).

    Raises:
        RateLimited: The account's IMAP limits are used up.
        ImapError: The server could not be reached or refused us.
    """
    locations = {m.id: PlacementRepository(db).locations(m.id) for m in messages}
    raw: dict[str, bytes] = {}
    copies = sum(len(found) for found in locations.values())
    if copies:
        folders = len({where.raw_name for found in locations.values() for where in found})
        with grant_imap(db, access, grant, ops=folders + copies) as imap:
            selected: str | None = None
            for message in messages:
                for where in locations[message.id]:
                    if where.raw_name != selected:
                        imap.select(where.raw_name, readonly=True)
                        selected = where.raw_name
                    data = imap.fetch_part(where.uid, "")
                    if data is not None:
                        raw[message.id] = data
                        break
    return raw


def attachment_bytes(db: Session, access: Interactive, grant: Grant, att: Attachment) -> bytes:
    """The decoded bytes of an attachment, fetched from the IMAP server.

    Raises:
        NotFound: No folder holds the message any more, or the UID is gone.
        RateLimited: The account's limits are used up.
        ImapError: The server could not be reached or refused us.
    """
    locations = PlacementRepository(db).locations(att.message_id)
    if not locations:
        raise NotFound("The message of this attachment is no longer on the server.")
    # per copy tried: SELECT, the part, its MIME header (and HEADER for a single-part message)
    with grant_imap(db, access, grant, ops=4 * len(locations)) as imap:
        for where in locations:
            imap.select(where.raw_name, readonly=True)
            data = imap.fetch_part(where.uid, att.part_path)
            if data is None:
                continue
            header = imap.fetch_part(where.uid, f"{att.part_path}.MIME")
            if not header and att.part_path == "1":
                header = imap.fetch_part(where.uid, "HEADER")  # a single-part message
            return decode_part(data, transfer_encoding(header))
    raise NotFound("The message of this attachment is no longer on the server.")
