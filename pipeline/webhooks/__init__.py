"""Webhooks: destinations, the transactional outbox and signed at-least-once delivery.

Modules, one per concept:

- :mod:`~pipeline.webhooks.outbox` — ``emit()`` in the writer's transaction; ``dispatch_batch()``
  turns outbox rows into per-destination deliveries.
- :mod:`~pipeline.webhooks.delivery` — ``Drainer``: per-destination sign, POST, record, retry;
  :mod:`~pipeline.webhooks.sender` (the challenge handshake and the signed POSTs over HTTP) and
  :mod:`~pipeline.webhooks.retry` (when to try again: exponential backoff with jitter).
- :mod:`~pipeline.webhooks.sweep` — periodic repair (lost messages, long waits, retention).
- :mod:`~pipeline.webhooks.service` — ``WebhookService``: create/list/get/update/delete,
  rotate_secret, send_test_event (CLI and ``/v3/webhooks``); :mod:`~pipeline.webhooks.schemas`
  what its callers send and get back.
- :mod:`~pipeline.webhooks.payloads`, :mod:`~pipeline.webhooks.signing` — the Nylas v3 envelope
  and ``X-Nylas-Signature``.
- :mod:`~pipeline.webhooks.ssrf` — refuses destinations on private/loopback/link-local addresses.
- :mod:`~pipeline.config.webhooks` — ``WebhookSettings`` (``IMAP_PIPELINE_WEBHOOK_*``).
- :mod:`~pipeline.webhooks.models`, :mod:`~pipeline.webhooks.repository` — tables and every query.
- :mod:`~pipeline.webhooks.errors` — the ``WebhookError`` subtree.

Celery lives outside: ``workers.tasks.webhooks`` holds the thin tasks, ``workers.webhook_queue``
``kick()``; a process that is not a worker kicks through :meth:`pipeline.jobs.Jobs.kick_webhooks`.
"""

from pipeline.config.webhooks import WebhookSettings
from pipeline.webhooks.errors import (
    ChallengeFailed,
    DestinationRefused,
    InvalidWebhookRequest,
    WebhookError,
    WebhookNotFound,
    WebhookPayloadError,
)
from pipeline.webhooks.outbox import emit
from pipeline.webhooks.schemas import TRIGGER_TYPES

__all__ = [
    "TRIGGER_TYPES",
    "ChallengeFailed",
    "DestinationRefused",
    "InvalidWebhookRequest",
    "WebhookError",
    "WebhookNotFound",
    "WebhookPayloadError",
    "WebhookSettings",
    "emit",
]
