"""Attachments: metadata (``GET .../attachments/{id}``) and bytes (``.../download``).

Only metadata is stored. A download fetches the one MIME part from the server
(:func:`pipeline.messages.content.attachment_bytes`) and sends it with the attachment's content
type. imaplib reads a literal whole, so the part is held in memory once (at most
``IMAP_PIPELINE_IMAP_MAX_LITERAL_BYTES``: the IMAP client refuses a bigger literal unread) and
then streamed to the client in chunks.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from typing import Annotated, Any
from urllib.parse import quote

from fastapi import APIRouter, Query, Request
from fastapi.responses import StreamingResponse
from sqlalchemy.orm import Session

from pipeline.api.deps import Db, LiveGrant, State, ok
from pipeline.api.errors import not_found, request_id_of
from pipeline.messages import content
from pipeline.messages import queries as message_queries
from pipeline.messages.views import attachment_view
from pipeline.models import Attachment, Grant

log = logging.getLogger(__name__)

router = APIRouter(tags=["attachments"])

CHUNK_BYTES = 64 * 1024  # streamed response chunk
_MEDIA_TYPE = re.compile(r"^[a-z0-9][a-z0-9!#$&^_.+-]*/[a-z0-9][a-z0-9!#$&^_.+-]*$")


def media_type(content_type: str) -> str:
    """A safe Content-Type value (``application/octet-stream`` for anything odd)."""
    value = content_type.strip().lower()
    return value if _MEDIA_TYPE.match(value) else "application/octet-stream"


def content_disposition(filename: str | None, *, inline: bool) -> str:
    """A Content-Disposition header with an ASCII fallback and the RFC 6266 UTF-8 name."""
    kind = "inline" if inline else "attachment"
    if not filename:
        return kind
    fallback = re.sub(r"[^A-Za-z0-9._ -]", "_", filename)[:200] or "attachment"
    return f"{kind}; filename=\"{fallback}\"; filename*=UTF-8''{quote(filename, safe='')}"


def path_attachment(
    db: Session, grant: Grant, attachment_id: str, message_id: str | None
) -> Attachment:
    """The grant's attachment named in the path, or a 404."""
    att = message_queries.get_attachment(db, grant.id, attachment_id)
    if att is None or (message_id is not None and message_id != att.message_id):
        raise not_found(f"No attachment {attachment_id!r} in this grant.")
    return att


MessageIdQuery = Annotated[
    str | None, Query(max_length=64, description="The message the attachment belongs to.")
]


@router.get("/grants/{grant_id}/attachments/{attachment_id}", summary="Attachment metadata")
def get_attachment(
    request: Request,
    db: Db,
    grant: LiveGrant,
    attachment_id: str,
    message_id: MessageIdQuery = None,
) -> dict[str, Any]:
    """Filename, content type, size and inline facts of one attachment."""
    return ok(request, attachment_view(path_attachment(db, grant, attachment_id, message_id)))


@router.get(
    "/grants/{grant_id}/attachments/{attachment_id}/download",
    summary="Download an attachment",
    response_class=StreamingResponse,
    responses={200: {"content": {"application/octet-stream": {}}}},
)
def download_attachment(
    request: Request,
    db: Db,
    api: State,
    grant: LiveGrant,
    attachment_id: str,
    message_id: MessageIdQuery = None,
) -> StreamingResponse:
    """The attachment's bytes, with its content type."""
    att = path_attachment(db, grant, attachment_id, message_id)
    data = content.attachment_bytes(db, api, grant, att)
    log.info(
        "attachment downloaded",
        extra={"grant_id": grant.id, "request_id": request_id_of(request), "bytes": len(data)},
    )

    def chunks() -> Iterator[bytes]:
        for start in range(0, len(data), CHUNK_BYTES):
            yield data[start : start + CHUNK_BYTES]

    return StreamingResponse(
        chunks(),
        media_type=media_type(att.content_type),
        headers={
            "Content-Length": str(len(data)),
            "Content-Disposition": content_disposition(att.filename, inline=att.is_inline),
        },
    )
