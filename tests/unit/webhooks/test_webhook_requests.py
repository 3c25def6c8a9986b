"""Webhook destination requests the service refuses (:class:`InvalidWebhookRequest`) before it
resolves, calls or stores anything: a URL that is not https, an unknown trigger type, an unknown
field, a notification address that is not one. On the rolled-back store
(:mod:`tests.support.rollback`), whose unit of work commits as ``session_scope`` does; the
challenge handshake and what is stored are tests/integration/webhooks/test_webhook_service.py.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager

import pytest
from sqlalchemy.orm import Session, sessionmaker

from pipeline.config.webhooks import WebhookSettings
from pipeline.crypto import SecretBox, generate_key
from pipeline.webhooks.errors import InvalidWebhookRequest
from pipeline.webhooks.sender import Sender
from pipeline.webhooks.service import WebhookService

pytestmark = pytest.mark.services

Uow = Callable[[], AbstractContextManager[Session]]
TRIGGERS = ["message.created", "message.updated"]


@pytest.fixture
def uow(pg_sessions: sessionmaker[Session]) -> Uow:
    """A unit of work on the rolled-back store: commits on success, rolls back on an error."""
    return pg_sessions.begin


@pytest.fixture
def service() -> Iterator[WebhookService]:
    """The destination service with default delivery settings and a fresh key."""
    settings = WebhookSettings()
    with Sender(settings) as sender:
        yield WebhookService(settings, SecretBox([generate_key()]), sender=sender)


@pytest.mark.parametrize(
    ("request_body", "message"),
    [
        ({"webhook_url": "ftp://x/", "trigger_types": TRIGGERS}, "https://"),
        ({"webhook_url": "https://x/", "trigger_types": ["calendar.boom"]}, "calendar.boom"),
        ({"webhook_url": "https://x/", "trigger_types": TRIGGERS, "bogus": 1}, "bogus"),
        (
            {
                "webhook_url": "https://x/",
                "trigger_types": TRIGGERS,
                "notification_email_addresses": ["nope"],
            },
            "Not an email",
        ),
    ],
)
def test_invalid_requests_are_refused(
    uow: Uow, service: WebhookService, request_body: dict[str, object], message: str
) -> None:
    with pytest.raises(InvalidWebhookRequest, match=message), uow() as s:
        service.create(s, request_body)
