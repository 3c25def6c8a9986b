"""Clean messages: ``PUT /v3/grants/{grant_id}/messages/clean`` (the official SDK's
``messages.clean_messages``).

Each message named in ``message_id`` (at most :data:`MAX_CLEAN_MESSAGES`, Nylas' limit) is
answered as its message object with ``conversation``: its body without quoted history,
signature and markup noise, as :mod:`pipeline.messages.clean` makes it from the stored body
(nothing is fetched from the server). An id the grant has no message for is a 404 naming it.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictStr

from pipeline.api.deps import Db, LiveGrant, ok
from pipeline.api.errors import invalid_request, not_found
from pipeline.api.messages import apply_select, message_views, parse_select
from pipeline.messages.clean import CleanOptions, clean_body
from pipeline.messages.repository import MessageRepository

router = APIRouter(tags=["messages"])

MAX_CLEAN_MESSAGES = 20  # Nylas' reference: message_id maxItems 20


class CleanRequest(BaseModel):
    """Body of ``PUT /v3/grants/{grant_id}/messages/clean`` (Nylas' defaults)."""

    model_config = ConfigDict(extra="forbid")

    message_id: list[Annotated[StrictStr, Field(max_length=100)]] = Field(
        description=f"The ids of the messages to clean (1 to {MAX_CLEAN_MESSAGES})."
    )
    ignore_links: StrictBool = Field(True, description="Remove <a> tags, keeping their text.")
    ignore_images: StrictBool = Field(True, description="Remove images.")
    images_as_markdown: StrictBool = Field(
        True,
        description="A kept image as Markdown (![alt](src)); cannot be false with "
        "html_as_markdown.",
    )
    ignore_tables: StrictBool = Field(
        True, description="Remove table tags, keeping each row's text as a line."
    )
    remove_conclusion_phrases: StrictBool = Field(
        True, description='Remove a closing ("Best,", "Thanks!") and the name after it.'
    )
    html_as_markdown: StrictBool = Field(False, description="Answer Markdown, not HTML.")


def _options(body: CleanRequest) -> CleanOptions:
    """The cleaning asked for, or a 400 for a combination Nylas refuses."""
    if body.html_as_markdown and not body.images_as_markdown:
        raise invalid_request(
            "images_as_markdown cannot be false when html_as_markdown is true: Markdown has "
            "only Markdown images (leave images_as_markdown out, or set it to true)."
        )
    return CleanOptions(
        ignore_links=body.ignore_links,
        ignore_images=body.ignore_images,
        images_as_markdown=body.images_as_markdown,
        ignore_tables=body.ignore_tables,
        remove_conclusion_phrases=body.remove_conclusion_phrases,
        html_as_markdown=body.html_as_markdown,
    )


def _requested_ids(body: CleanRequest) -> list[str]:
    """The ids asked for, each once, in order; a 400 for none or too many."""
    ids = list(dict.fromkeys(body.message_id))
    if not ids:
        raise invalid_request("message_id must name at least one message.")
    if len(ids) > MAX_CLEAN_MESSAGES:
        raise invalid_request(
            f"At most {MAX_CLEAN_MESSAGES} messages are cleaned in one request; "
            f"{len(ids)} were given: send them in several requests."
        )
    return ids


@router.put("/grants/{grant_id}/messages/clean", summary="Clean messages")
def clean_messages(
    request: Request,
    db: Db,
    grant: LiveGrant,
    body: CleanRequest,
    select: Annotated[str | None, Query(max_length=1000)] = None,
) -> dict[str, Any]:
    """The messages with ``conversation``: their bodies cleaned (quoted history, signatures,
    scripts and styles removed; links, images and tables as the options say)."""
    options = _options(body)
    ids = _requested_ids(body)
    found = MessageRepository(db).get_many(grant.id, ids)
    missing = [i for i in ids if i.lower() not in found]
    if missing:
        named = ", ".join(repr(i) for i in missing)
        raise not_found(
            f"No message {named} in this grant." if len(missing) == 1 else
            f"No messages {named} in this grant."
        )  # fmt: skip
    messages = [found[i.lower()] for i in ids]
    selected = parse_select(select)
    views = message_views(db, messages, include_headers=False, selected=None)
    data = []
    for message, view in zip(messages, views, strict=True):
        view["conversation"] = clean_body(message.body, options)
        data.append(apply_select(view, selected | {"conversation"} if selected else None))
    return ok(request, data)
