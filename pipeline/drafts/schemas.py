"""What a caller asks of a draft: the body of a create or an update (:class:`DraftRequest`)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from pipeline.outbound import compose

MAX_RECIPIENTS = compose.MAX_RECIPIENTS
MAX_ATTACHMENTS = compose.MAX_ATTACHMENTS


class DraftRequest(BaseModel):
    """Body of a create or an update (the JSON, or the ``message`` part of a multipart request).

    Every field is optional; on an update a field left out keeps the draft's value.
    """

    model_config = ConfigDict(extra="forbid")

    to: list[compose.Recipient] | None = None
    cc: list[compose.Recipient] | None = None
    bcc: list[compose.Recipient] | None = None
    reply_to: list[compose.Recipient] | None = None
    from_: list[compose.Recipient] | None = Field(default=None, alias="from")
    subject: str | None = Field(default=None, max_length=998)
    body: str | None = None
    is_plaintext: bool | None = None
    attachments: list[compose.OutgoingAttachment] | None = Field(
        default=None, max_length=MAX_ATTACHMENTS
    )
    # the engine's id, or (as Nylas documents for IMAP) the RFC 822 Message-ID
    reply_to_message_id: str | None = Field(default=None, max_length=998)
    custom_headers: list[compose.CustomHeader] | None = None
    starred: bool | None = None
    send_at: int | None = None
    tracking_options: dict[str, Any] | None = None  # accepted, not supported (ignored)
    metadata: dict[str, Any] | None = None  # kept in Postgres only (pipeline.messages.metadata)

    _one_line = field_validator("subject", "reply_to_message_id")(compose.one_line)
