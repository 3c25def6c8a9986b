"""Webhook destinations: ``/v3/webhooks`` over :class:`pipeline.webhooks.service.WebhookService`.

Create and URL changes are verified first (SSRF guard, then the ``?challenge=`` handshake), so a
destination that fails them is never stored. The secret appears only in the answers to create
and rotate-secret. Rotation is served at both ``POST /v3/webhooks/rotate-secret/{id}`` (the REST
reference) and ``PUT /v3/webhooks/{id}/rotate-secret`` (what the SDK calls).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from fastapi import APIRouter, Request, status
from pydantic import BaseModel, ConfigDict, Field

from pipeline.api.deps import ApiState, Db, State, ok, page
from pipeline.api.errors import invalid_request, request_id_of
from pipeline.crypto import SecretBox
from pipeline.webhooks.schemas import (
    CreateWebhookRequest,
    UpdateWebhookRequest,
    WebhookDestinationOut,
)
from pipeline.webhooks.service import WebhookService

router = APIRouter(tags=["webhooks"])


class TestEventRequest(BaseModel):
    """Body of ``POST /v3/webhooks/send-test-event``."""

    model_config = ConfigDict(extra="forbid")
    __test__ = False  # not a pytest class

    trigger_type: str = Field(min_length=1, max_length=64)
    webhook_url: str = Field(min_length=1, max_length=2000)


@contextmanager
def webhook_service(api: ApiState) -> Iterator[WebhookService]:
    """A service for one request (its HTTP sender is closed afterwards)."""
    box = SecretBox(api.settings.encryption_key_list)
    with WebhookService(api.webhook_settings, box) as service:
        yield service


def view(destination: WebhookDestinationOut) -> dict[str, Any]:
    """A destination as JSON; ``webhook_secret`` only when the answer carries it, and
    ``failure_reason`` only while the destination fails."""
    exclude = {
        name for name in ("webhook_secret", "failure_reason") if getattr(destination, name) is None
    }
    return destination.model_dump(exclude=exclude)


@router.get("/webhooks", summary="List webhook destinations")
def list_webhooks(request: Request, db: Db, api: State) -> dict[str, Any]:
    """Every destination (without secrets)."""
    with webhook_service(api) as service:
        return page(request, [view(d) for d in service.list(db)], None)


@router.post("/webhooks", status_code=status.HTTP_200_OK, summary="Create a webhook destination")
def create_webhook(
    request: Request, db: Db, api: State, body: CreateWebhookRequest
) -> dict[str, Any]:
    """Verify the URL and store the destination; the answer carries its secret."""
    with webhook_service(api) as service:
        created = service.create(db, body)
    db.commit()
    return ok(request, view(created))


class MockPayloadRequest(BaseModel):
    """Body of ``POST /v3/webhooks/mock-payload``."""

    model_config = ConfigDict(extra="forbid")

    trigger_type: str = Field(min_length=1, max_length=64)
    # Nylas' API reference lists ``webhook_url`` as required here too (its SDKs send only
    # ``trigger_type``): accepted, and unused, as nothing is sent
    webhook_url: str | None = Field(default=None, max_length=2000)


@router.post("/webhooks/mock-payload", summary="A sample notification of a trigger type")
def mock_payload(request: Request, api: State, body: MockPayloadRequest) -> dict[str, Any]:
    """The envelope a ``trigger_type`` notification has, with sample data; nothing is sent."""
    with webhook_service(api) as service:
        return ok(request, service.mock_payload(body.trigger_type))


@router.get("/webhooks/ip-addresses", summary="Addresses notifications come from")
def ip_addresses(request: Request) -> dict[str, Any]:
    """Nylas lists the addresses its senders use. A self-hosted install sends from the
    machines that run its webhooks workers, which it cannot see from here (NAT, proxies):
    the list is empty, and a receiver that filters by address allows those machines'
    addresses itself (README, Webhooks)."""
    return ok(request, {"ip_addresses": [], "updated_at": int(time.time())})


@router.get("/webhooks/{webhook_id}", summary="Get a webhook destination")
def get_webhook(request: Request, db: Db, api: State, webhook_id: str) -> dict[str, Any]:
    """One destination (without its secret)."""
    with webhook_service(api) as service:
        return ok(request, view(service.get(db, webhook_id)))


@router.put("/webhooks/{webhook_id}", summary="Update a webhook destination")
def update_webhook(
    request: Request, db: Db, api: State, webhook_id: str, body: UpdateWebhookRequest
) -> dict[str, Any]:
    """Change the fields given; a new URL is verified like on create."""
    with webhook_service(api) as service:
        updated = service.update(db, webhook_id, body)
    db.commit()
    return ok(request, view(updated))


@router.delete("/webhooks/{webhook_id}", summary="Delete a webhook destination")
def delete_webhook(request: Request, db: Db, api: State, webhook_id: str) -> dict[str, Any]:
    """Delete the destination and everything still owed to it."""
    with webhook_service(api) as service:
        service.delete(db, webhook_id)
    db.commit()
    return {"request_id": request_id_of(request), "data": {"status": "success"}}


def _rotate(request: Request, db: Db, api: ApiState, webhook_id: str) -> dict[str, Any]:
    with webhook_service(api) as service:
        rotated = service.rotate_secret(db, webhook_id)
    db.commit()
    return ok(request, view(rotated))


@router.post("/webhooks/rotate-secret/{webhook_id}", summary="Rotate a destination's secret")
def rotate_secret(request: Request, db: Db, api: State, webhook_id: str) -> dict[str, Any]:
    """A new secret, shown in this answer only."""
    return _rotate(request, db, api, webhook_id)


@router.put("/webhooks/{webhook_id}/rotate-secret", summary="Rotate (the SDK's path)")
def rotate_secret_put(request: Request, db: Db, api: State, webhook_id: str) -> dict[str, Any]:
    """Same as ``POST /v3/webhooks/rotate-secret/{id}``."""
    return _rotate(request, db, api, webhook_id)


@router.post("/webhooks/send-test-event", summary="Send a signed sample notification")
def send_test_event(request: Request, db: Db, api: State, body: TestEventRequest) -> dict[str, Any]:
    """POST a sample ``trigger_type`` notification to ``webhook_url``, once, signed with the
    secret ``mock-webhook-secret`` (as Nylas does). ``data`` is ``"success"`` when the URL
    answered 2xx (Nylas' answer); otherwise a 400 says what the URL did."""
    with webhook_service(api) as service:
        result = service.send_test_event(
            db, trigger_type=body.trigger_type, webhook_url=body.webhook_url
        )
    if not result.success:
        raise invalid_request(
            f"The test event to {body.webhook_url} was not accepted: {result.error}."
        )
    return ok(request, "success")
