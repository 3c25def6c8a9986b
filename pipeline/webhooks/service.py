"""Managing webhook destinations: the Python API behind the CLI and ``/v3/webhooks``.

Every method takes the caller's session and never commits; the caller (request, CLI command)
owns the transaction. Network checks (SSRF guard, challenge handshake) run *before* anything is
written, so a destination that fails them leaves nothing behind.

The plaintext secret exists only in the answer to :meth:`WebhookService.create` and
:meth:`WebhookService.rotate_secret`; it is stored sealed with the configured encryption keys.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError
from sqlalchemy.orm import Session

from pipeline.config.webhooks import WebhookSettings
from pipeline.crypto import SecretBox
from pipeline.models import Grant, new_id
from pipeline.pages import is_uuid
from pipeline.webhooks import payloads, repository, ssrf
from pipeline.webhooks.errors import InvalidWebhookRequest, WebhookNotFound
from pipeline.webhooks.models import WebhookDestination
from pipeline.webhooks.payloads import GRANT_NOTIFICATION_CODES, grant_notification
from pipeline.webhooks.schemas import (
    ACCEPTED_TRIGGER_TYPES,
    SEND_RESULT_TYPES,
    TRUNCATED_SUFFIX,
    CreateWebhookRequest,
    TestEventResult,
    UpdateWebhookRequest,
    WebhookDestinationOut,
)
from pipeline.webhooks.sender import OutgoingRequest, Sender
from pipeline.webhooks.signing import encode, new_secret, sign

MOCK_GRANT_ID = "00000000-0000-4000-8000-000000000000"
# Nylas: "The secret used is `mock-webhook-secret`" (a published value, not a credential)
MOCK_WEBHOOK_SECRET = "mock-webhook-secret"  # noqa: S105
TRUNCATABLE_SAMPLES = frozenset(
    {"message.created" + TRUNCATED_SUFFIX, "message.updated" + TRUNCATED_SUFFIX}
)

M = TypeVar("M", bound=BaseModel)


def _unix(value: datetime) -> int:
    return int(value.timestamp())


def to_out(destination: WebhookDestination, *, secret: str | None = None) -> WebhookDestinationOut:
    """The Nylas-shaped view of a destination (with ``webhook_secret`` only when given)."""
    return WebhookDestinationOut(
        id=destination.id,
        description=destination.description,
        trigger_types=list(destination.trigger_types),
        webhook_url=destination.webhook_url,
        # Nylas spells a paused destination ``pause``
        status="pause" if destination.status == "paused" else destination.status,  # type: ignore[arg-type]
        notification_email_addresses=list(destination.notification_email_addresses),
        status_updated_at=_unix(destination.status_updated_at),
        created_at=_unix(destination.created_at),
        updated_at=_unix(destination.updated_at),
        compressed_delivery=destination.compressed_delivery,
        webhook_secret=secret,
        failure_reason=destination.failure_reason if destination.status != "active" else None,
    )


def _parse(model: type[M], value: M | dict[str, Any]) -> M:
    if isinstance(value, model):
        return value
    try:
        return model.model_validate(value)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or 'request'}: {err['msg']}"
            for err in exc.errors()
        )
        raise InvalidWebhookRequest(f"Invalid webhook request: {problems}.") from exc


def _check_emails(addresses: list[str]) -> list[str]:
    bad = [a for a in addresses if "@" not in a or any(c.isspace() for c in a)]
    if bad:
        raise InvalidWebhookRequest(f"Not an email address: {', '.join(bad)}.")
    return list(dict.fromkeys(addresses))


def mock_object(trigger_type: str, grant_id: str = MOCK_GRANT_ID) -> dict[str, Any]:
    """A representative ``data.object`` for a trigger type (test events, docs)."""
    family = trigger_type.split(".", 1)[0]
    now = int(datetime.now(UTC).timestamp())
    if trigger_type in SEND_RESULT_TYPES:
        message = mock_object("message.created", grant_id)
        del message["body"]  # Nylas: "typically omitted" from send results; snippet stays
        return {**message, "schedule_id": new_id(), "send_at": now - 1}
    if family == "message":
        return {
            "id": new_id(),
            "grant_id": grant_id,
            "object": "message",
            "subject": "Test notification from imap-pipeline",
            "from": [{"name": "imap-pipeline", "email": "test@example.com"}],
            "to": [{"name": "", "email": "you@example.com"}],
            "date": now,
            "unread": True,
            "starred": False,
            "folders": [],
            "snippet": "This is a test notification.",
            "body": "<p>This is a test notification.</p>",
        }
    if family == "folder":
        return {"id": new_id(), "grant_id": grant_id, "object": "folder", "name": "Test"}
    if family == "grant" and trigger_type in GRANT_NOTIFICATION_CODES:
        sample = Grant(id=grant_id, email="you@example.com", updated_at=datetime.now(UTC))
        return grant_notification(trigger_type, sample)
    # a type this engine never emits (see README, Webhooks): a sample naming its object
    return {"id": new_id(), "grant_id": grant_id, "object": family}


def mock_data(trigger_type: str, grant_id: str = MOCK_GRANT_ID) -> dict[str, Any] | None:
    """The fields a trigger type's ``data`` has beside ``object`` (None: none)."""
    if trigger_type == "message.send_success":
        return {"grant_id": grant_id}
    if trigger_type == "message.send_failed":
        reason = "Test notification: the SMTP server refused every recipient."
        return {
            "grant_id": grant_id,
            "reason": reason,
            "error": {"type": "invalid_request_error", "message": reason, "status_code": 400},
        }
    return None


class WebhookService:
    """Create, read, update, delete destinations; rotate secrets; send test events.

    Args:
        settings: webhook settings (timeouts, SSRF guard, application id).
        box: seals and opens destination secrets.
        sender: HTTP sender for challenges and test events (one is made if not given; close
            the service then, or use it as a context manager).
        resolver: DNS resolution for the SSRF guard (tests substitute it).
    """

    def __init__(
        self,
        settings: WebhookSettings,
        box: SecretBox,
        *,
        sender: Sender | None = None,
        resolver: ssrf.Resolver = ssrf.resolve,
    ) -> None:
        self._settings = settings
        self._box = box
        self._own_sender = sender is None
        self._sender = sender if sender is not None else Sender(settings)
        self._resolver = resolver

    def close(self) -> None:
        """Close the sender this service made for itself."""
        if self._own_sender:
            self._sender.close()

    def __enter__(self) -> WebhookService:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- queries ----------------------------------------------------------------------------

    def list(
        self, session: Session, *, limit: int | None = None, after_id: str | None = None
    ) -> list[WebhookDestinationOut]:
        """Destinations ordered by id; ``after_id``/``limit`` page through them."""
        rows = repository.list_destinations(session, limit=limit, after_id=after_id)
        return [to_out(d) for d in rows]

    def get(self, session: Session, destination_id: str) -> WebhookDestinationOut:
        """One destination (without its secret).

        Raises:
            WebhookNotFound: no destination with that id.
        """
        return to_out(self._load(session, destination_id))

    # --- changes ----------------------------------------------------------------------------

    def create(
        self, session: Session, request: CreateWebhookRequest | dict[str, Any]
    ) -> WebhookDestinationOut:
        """Verify the URL (SSRF guard, then the challenge handshake) and store a destination.

        Returns the destination with ``webhook_secret``: the only time it is shown.

        Raises:
            InvalidWebhookRequest: malformed request or URL, unknown trigger types.
            DestinationRefused: the URL resolves to a non-public address not allowed.
            ChallengeFailed: the destination did not echo the challenge within the timeout.
        """
        req = _parse(CreateWebhookRequest, request)
        emails = _check_emails(req.notification_email_addresses)
        self._verify_url(req.webhook_url)
        secret = new_secret()
        destination = repository.add_destination(
            session,
            webhook_url=req.webhook_url,
            description=req.description,
            trigger_types=req.trigger_types,
            notification_email_addresses=emails,
            secret_sealed=self._box.seal(secret),
            compressed_delivery=req.compressed_delivery,
        )
        return to_out(destination, secret=secret)

    def update(
        self,
        session: Session,
        destination_id: str,
        request: UpdateWebhookRequest | dict[str, Any],
    ) -> WebhookDestinationOut:
        """Change the fields given. A new URL is verified like on create.

        Setting ``status`` to ``active`` revives a ``failing`` or ``failed`` destination;
        ``paused`` stops deliveries until it is set ``active`` again (pending ones wait).

        Raises:
            WebhookNotFound, InvalidWebhookRequest, DestinationRefused, ChallengeFailed.
        """
        req = _parse(UpdateWebhookRequest, request)
        destination = self._load(session, destination_id)
        if req.webhook_url is not None and req.webhook_url != destination.webhook_url:
            self._verify_url(req.webhook_url)
            destination.webhook_url = req.webhook_url
        if req.trigger_types is not None:
            destination.trigger_types = req.trigger_types
        if req.description is not None:
            destination.description = req.description
        if req.notification_email_addresses is not None:
            destination.notification_email_addresses = _check_emails(
                req.notification_email_addresses
            )
        if req.compressed_delivery is not None:
            destination.compressed_delivery = req.compressed_delivery
        if req.status is not None:
            status = "paused" if req.status in ("pause", "paused") else "active"
            repository.set_status(session, destination, status)
        repository.touch_destination(session, destination)
        return to_out(destination)

    def delete(self, session: Session, destination_id: str) -> None:
        """Delete a destination and everything still owed to it.

        Raises:
            WebhookNotFound: no destination with that id.
        """
        if not is_uuid(destination_id) or not repository.delete_destination(
            session, destination_id
        ):
            raise WebhookNotFound(f"No webhook destination with id {destination_id!r}.")

    def rotate_secret(self, session: Session, destination_id: str) -> WebhookDestinationOut:
        """Give a destination a new secret; the answer carries it, the only time it is shown.

        Notifications signed from now on use the new secret, retries of earlier ones included.

        Raises:
            WebhookNotFound: no destination with that id.
        """
        destination = self._load(session, destination_id)
        secret = new_secret()
        destination.secret_sealed = self._box.seal(secret)
        repository.touch_destination(session, destination)
        return to_out(destination, secret=secret)

    # --- testing ----------------------------------------------------------------------------

    def send_test_event(
        self, session: Session, *, trigger_type: str, webhook_url: str
    ) -> TestEventResult:
        """POST a sample notification to ``webhook_url``, now, once, as Nylas does: to any
        URL the address guard allows (a destination or not yet one), signed with
        :data:`MOCK_WEBHOOK_SECRET`; gzipped when a destination with that URL asks for
        compressed deliveries.

        Nothing is written; the result says whether the URL answered 2xx.

        Raises:
            InvalidWebhookRequest: unknown trigger type, or a malformed URL.
            DestinationRefused: the URL resolves to a non-public address not allowed.
        """
        _check_trigger_type(trigger_type)
        ssrf.check_destination(webhook_url, self._settings, resolver=self._resolver)
        destination = repository.find_destination_by_url(session, webhook_url)
        compressed = destination is not None and destination.compressed_delivery
        notification = self._mock_notification(trigger_type)
        wire = encode(notification.body, compressed=compressed)
        result = self._sender.post(
            OutgoingRequest(
                key=0,
                url=webhook_url,
                body=wire.body,
                signature=sign(MOCK_WEBHOOK_SECRET, wire.body),
                content_encoding=wire.content_encoding,
            )
        )
        error = result.error_class
        if error is None and not result.ok:
            error = f"HTTP {result.status_code}"
        return TestEventResult(
            success=result.ok,
            status_code=result.status_code,
            latency_ms=result.latency_ms,
            error=error,
        )

    def mock_payload(self, trigger_type: str) -> dict[str, Any]:
        """The notification a ``trigger_type`` sends, with sample data (nothing is sent).

        Raises:
            InvalidWebhookRequest: unknown trigger type.
        """
        _check_trigger_type(trigger_type)
        body: dict[str, Any] = json.loads(self._mock_notification(trigger_type).body)
        return body

    # --- helpers ----------------------------------------------------------------------------

    def _mock_notification(self, trigger_type: str) -> payloads.Notification:
        base = trigger_type.removesuffix(TRUNCATED_SUFFIX)
        return payloads.build(
            notification_id=new_id(),
            type=base,
            grant_id=MOCK_GRANT_ID,
            occurred_at=datetime.now(UTC),
            attempt=1,
            application_id=self._settings.application_id,
            obj=mock_object(base),
            data=mock_data(base),
            # a ``.truncated`` sample is the same notification over the size limit
            max_bytes=0 if base != trigger_type else self._settings.max_payload_bytes,
        )

    def _verify_url(self, url: str) -> None:
        ssrf.check_destination(url, self._settings, resolver=self._resolver)
        self._sender.challenge(url)

    def _load(self, session: Session, destination_id: str) -> WebhookDestination:
        destination = (
            repository.get_destination(session, destination_id) if is_uuid(destination_id) else None
        )
        if destination is None:
            raise WebhookNotFound(
                f"No webhook destination with id {destination_id!r}; "
                "list them with `imap-pipeline webhooks list`."
            )
        return destination


def _check_trigger_type(trigger_type: str) -> None:
    """A type a sample may be made of: any accepted type, and (as Nylas documents for its
    mock payloads and test events) ``message.created.truncated`` / ``message.updated.truncated``."""
    if trigger_type not in ACCEPTED_TRIGGER_TYPES | TRUNCATABLE_SAMPLES:
        raise InvalidWebhookRequest(
            f"Unknown trigger type {trigger_type!r}; "
            f"known: {', '.join(sorted(ACCEPTED_TRIGGER_TYPES))}."
        )
