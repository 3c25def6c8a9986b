"""Errors of the webhook domain, a subtree of :class:`pipeline.errors.PipelineError`::

    PipelineError
    └── WebhookError                   anything the webhook domain refuses or cannot do
        ├── WebhookNotFound            no destination with that id (or URL)
        ├── InvalidWebhookRequest      a malformed URL, unknown trigger type, bad status …
        │   └── DestinationRefused     the URL resolves to a private/loopback/link-local address
        ├── ChallengeFailed            the destination did not echo the challenge within 10 s
        └── WebhookPayloadError        an object given to ``outbox.emit`` cannot be sent

Messages say what failed and how to fix it; they never carry a webhook secret.
"""

from __future__ import annotations

from pipeline.errors import PipelineError


class WebhookError(PipelineError):
    """Root of the webhook domain's errors."""


class WebhookNotFound(WebhookError):
    """No webhook destination with that id."""


class InvalidWebhookRequest(WebhookError):
    """A create/update request cannot be accepted as given."""


class DestinationRefused(InvalidWebhookRequest):
    """The destination URL points at an address the operator has not allowed (SSRF guard)."""


class ChallengeFailed(WebhookError):
    """The destination did not answer the ``GET ?challenge=`` handshake correctly in time."""


class WebhookPayloadError(WebhookError):
    """An outbox object is not JSON-serializable or its trigger type is unknown."""
