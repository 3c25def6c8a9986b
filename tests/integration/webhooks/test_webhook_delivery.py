"""Delivery through the real drainer, Postgres and an HTTP receiver (no Celery in between)."""

from __future__ import annotations

import functools
import gzip
import hashlib
import hmac
import json
import threading
import time
import uuid
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session
from webhook_receiver import Receiver

from pipeline.config.webhooks import WebhookSettings
from pipeline.crypto import SecretBox
from pipeline.webhooks import outbox, repository, sweep
from pipeline.webhooks.delivery import Drainer
from pipeline.webhooks.models import WebhookDestination
from pipeline.webhooks.sender import Sender
from pipeline.webhooks.service import WebhookService
from pipeline.webhooks.signing import verify
from tests.support.waiting import wait_for

pytestmark = pytest.mark.services

Uow = functools.partial[AbstractContextManager[Session]]
GRANT = str(uuid.uuid4())


def _create(
    uow: Uow, service: WebhookService, url: str, triggers: list[str] | None = None
) -> tuple[str, str]:
    with uow() as s:
        out = service.create(
            s,
            {
                "webhook_url": url,
                "trigger_types": triggers
                or ["message.created", "message.updated", "message.deleted"],
            },
        )
    assert out.webhook_secret is not None
    return out.id, out.webhook_secret


def _emit(uow: Uow, *events: tuple[str, str, dict[str, Any]]) -> None:
    with uow() as s:
        for type_, subject, obj in events:
            outbox.emit(
                s, grant_id=GRANT, type=type_, obj={"id": subject, **obj}, subject_id=subject
            )
    with uow() as s:
        while outbox.dispatch_batch(s, limit=100).more:
            pass


def _drain_until(
    drainer: Drainer, dest: str, done: Callable[[], bool], timeout_s: float = 20.0
) -> None:
    def drained() -> bool:
        if done():
            return True
        drainer.drain(dest)
        return False

    wait_for(drained, "the drains to be done", timeout_s, interval_s=0.05)


def _status(uow: Uow, dest: str) -> str:
    with uow() as s:
        return s.get_one(WebhookDestination, dest).status


def test_notification_is_signed_over_the_exact_raw_body(
    uow: Uow, service: WebhookService, receiver: Receiver, drainer: Drainer
) -> None:
    dest, secret = _create(uow, service, receiver.url())
    _emit(uow, ("message.created", "m1", {"subject": "héllo", "body": "<p>hi</p>"}))
    outcome = drainer.drain(dest)
    assert (outcome.attempted, outcome.delivered, outcome.failed) == (1, 1, 0)
    (got,) = receiver.received()
    assert verify(secret, got.body, got.headers["x-nylas-signature"])
    assert not verify(secret, got.body + b" ", got.headers["x-nylas-signature"])
    envelope = got.json()
    assert envelope["specversion"] == "1.0"
    assert envelope["type"] == "message.created"
    assert envelope["source"] == "/imap/emails/incremental"
    assert envelope["webhook_delivery_attempt"] == 1
    assert abs(envelope["time"] - time.time()) < 60
    assert envelope["data"] == {
        "application_id": "imap-pipeline",
        "object": {"id": "m1", "subject": "héllo", "body": "<p>hi</p>"},
    }
    assert got.headers["content-type"] == "application/json"


def nylas_receiver_accepts(secret: str, raw_body: bytes, signature: str) -> bool:
    """A receiver written from Nylas' own guidance (nylas/skills, webhooks-notifications:
    "Verify x-nylas-signature against the raw compressed body before decompressing and parsing
    JSON"; the signature is "a hex-encoded HMAC-SHA256 of the exact request body"), with none
    of this engine's code."""
    expected = hmac.new(secret.encode(), raw_body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, signature)


def test_compressed_delivery_arrives_gzipped_and_signed_as_sent(
    uow: Uow, service: WebhookService, receiver: Receiver, drainer: Drainer
) -> None:
    """``compressed_delivery: true`` (Nylas, 2026-04-16): the JSON is gzip-compressed, sent with
    ``Content-Encoding: gzip``, and ``X-Nylas-Signature`` is the HMAC of the exact request body
    (the compressed bytes, as Nylas says to verify it); a destination without it still gets
    plain JSON."""
    dest, secret = _create(uow, service, receiver.url("/gz"))
    with uow() as s:
        service.update(s, dest, {"compressed_delivery": True})
    plain_dest, plain_secret = _create(uow, service, receiver.url("/plain"))
    body = "<p>" + "hello compressed world " * 500 + "</p>"
    _emit(uow, ("message.created", "m1", {"subject": "gz", "body": body}))
    assert drainer.drain(dest).delivered == 1
    assert drainer.drain(plain_dest).delivered == 1
    by_path = {got.path: got for got in receiver.received()}
    gz, plain = by_path["/gz"], by_path["/plain"]
    assert gz.headers["content-encoding"] == "gzip"
    assert gz.headers["content-type"] == "application/json"
    assert verify(secret, gz.body, gz.headers["x-nylas-signature"])
    assert nylas_receiver_accepts(secret, gz.body, gz.headers["x-nylas-signature"])
    # not a signature of the inflated JSON: a receiver must verify before inflating
    assert not nylas_receiver_accepts(
        secret, gzip.decompress(gz.body), gz.headers["x-nylas-signature"]
    )
    envelope = json.loads(gzip.decompress(gz.body))
    assert envelope["data"]["object"]["body"] == body
    assert len(gz.body) < len(gzip.decompress(gz.body)) // 10
    assert "content-encoding" not in plain.headers
    assert verify(plain_secret, plain.body, plain.headers["x-nylas-signature"])
    assert nylas_receiver_accepts(plain_secret, plain.body, plain.headers["x-nylas-signature"])
    assert plain.json()["data"]["object"]["body"] == body


def test_retries_keep_the_id_and_every_attempt_is_recorded(
    uow: Uow, service: WebhookService, receiver: Receiver, drainer: Drainer
) -> None:
    dest, secret = _create(uow, service, receiver.url())
    seen: dict[str, int] = {}

    def flaky(body: dict[str, Any]) -> int | None:
        seen[body["id"]] = seen.get(body["id"], 0) + 1
        return 503 if seen[body["id"]] <= 2 else None

    receiver.route("/hook", decide=flaky, body=b"E" * 5000)
    _emit(uow, ("message.created", "m1", {}))
    _drain_until(drainer, dest, lambda: bool(receiver.accepted()))
    posts = receiver.received()
    assert len(posts) == 3
    assert len({p.json()["id"] for p in posts}) == 1
    assert [p.json()["webhook_delivery_attempt"] for p in posts] == [1, 2, 3]
    assert all(verify(secret, p.body, p.headers["x-nylas-signature"]) for p in posts)
    with uow() as s:
        (delivery,) = repository.deliveries_for(s, dest)
        attempts = repository.attempts_for(s, delivery.delivery_id)
        assert (delivery.state, delivery.attempts) == ("delivered", 3)
        assert [a.status_code for a in attempts] == [503, 503, 200]
        assert [a.attempt for a in attempts] == [1, 2, 3]
        assert all(a.latency_ms >= 0 and a.error_class is None for a in attempts)
        assert attempts[0].response_body == "E" * 1024  # a bounded slice
        assert s.get_one(WebhookDestination, dest).status == "active"


def test_payloads_over_one_megabyte_arrive_truncated_without_body(
    uow: Uow, service: WebhookService, receiver: Receiver, drainer: Drainer
) -> None:
    dest, secret = _create(uow, service, receiver.url())
    _emit(
        uow,
        ("message.created", "big", {"subject": "large", "body": "x" * 1_500_000}),
        ("message.created", "small", {"subject": "small", "body": "y" * 1000}),
    )
    drainer.drain(dest)
    by_subject = {r.json()["data"]["object"]["id"]: r for r in receiver.accepted()}
    big = by_subject["big"].json()
    assert big["type"] == "message.created.truncated"
    assert big["data"]["object"] == {"id": "big", "subject": "large"}
    assert len(by_subject["big"].body) < 1_000_000
    assert verify(secret, by_subject["big"].body, by_subject["big"].headers["x-nylas-signature"])
    assert by_subject["small"].json()["type"] == "message.created"
    assert by_subject["small"].json()["data"]["object"]["body"] == "y" * 1000


def test_changes_to_one_object_arrive_in_order_while_others_flow(
    uow: Uow, service: WebhookService, receiver: Receiver, drainer: Drainer
) -> None:
    dest, _ = _create(uow, service, receiver.url())
    # X's first change fails until the first drain has been looked at: how many times it is
    # tried within that drain depends on the machine (the tests' back-off is 0.2 s, and a
    # slow drain meets its retry), never which changes are tried
    x_fails = threading.Event()
    x_fails.set()

    def first_x_fails(body: dict[str, Any]) -> int | None:
        obj = body["data"]["object"]
        if obj["id"] == "X" and obj["step"] == 0 and x_fails.is_set():
            return 500
        return None

    receiver.route("/hook", decide=first_x_fails)
    _emit(
        uow,
        ("message.created", "X", {"step": 0}),
        ("message.updated", "X", {"step": 1}),
        ("message.created", "Y", {"step": 0}),
        ("message.updated", "X", {"step": 2}),
        ("message.deleted", "X", {"step": 3}),
        ("message.updated", "Y", {"step": 1}),
    )
    drainer.drain(dest)
    first = [
        (r.json()["data"]["object"]["id"], r.json()["data"]["object"]["step"])
        for r in receiver.accepted()
    ]
    assert first == [("Y", 0), ("Y", 1)]  # Y is not held up by X's failure
    x_tried = [
        r.json()["data"]["object"]["step"]
        for r in receiver.received()
        if r.json()["data"]["object"]["id"] == "X"
    ]
    assert x_tried and set(x_tried) == {0}, x_tried  # X's later changes wait behind its first
    x_fails.clear()
    _drain_until(drainer, dest, lambda: len(receiver.accepted()) == 6)
    x_order = [
        r.json()["data"]["object"]["step"]
        for r in receiver.accepted()
        if r.json()["data"]["object"]["id"] == "X"
    ]
    assert x_order == [0, 1, 2, 3]
    x_types = [
        r.json()["type"] for r in receiver.accepted() if r.json()["data"]["object"]["id"] == "X"
    ]
    assert x_types == ["message.created", "message.updated", "message.updated", "message.deleted"]


def test_concurrent_drainers_deliver_each_notification_once_and_in_order(
    uow: Uow,
    wh_settings: WebhookSettings,
    box: SecretBox,
    service: WebhookService,
    receiver: Receiver,
) -> None:
    dest, _ = _create(uow, service, receiver.url())
    _emit(uow, *[("message.updated", f"s{i % 5}", {"step": i}) for i in range(200)])
    senders = [Sender(wh_settings) for _ in range(4)]
    try:
        drainers = [Drainer(uow, settings=wh_settings, box=box, sender=s) for s in senders]
        threads = [threading.Thread(target=d.drain, args=(dest,)) for d in drainers]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
        _drain_until(drainers[0], dest, lambda: len(receiver.accepted()) >= 200)
    finally:
        for s in senders:
            s.close()
    got = receiver.accepted()
    assert len(got) == 200 and len({r.json()["id"] for r in got}) == 200
    for subject in (f"s{i}" for i in range(5)):
        steps = [
            r.json()["data"]["object"]["step"]
            for r in got
            if r.json()["data"]["object"]["id"] == subject
        ]
        assert steps == sorted(steps)


def test_destination_goes_failing_then_failed_and_is_given_up(
    uow: Uow,
    wh_settings: WebhookSettings,
    box: SecretBox,
    sender: Sender,
    service: WebhookService,
    receiver: Receiver,
) -> None:
    settings = wh_settings.model_copy(update={"failed_after_s": 1.0, "max_attempts": 50})
    drainer = Drainer(uow, settings=settings, box=box, sender=sender)
    dest, _ = _create(uow, service, receiver.url())
    receiver.route("/hook", status=500)
    _emit(uow, ("message.created", "m1", {}), ("message.created", "m2", {}))
    drainer.drain(dest)
    assert _status(uow, dest) == "failing"
    _drain_until(drainer, dest, lambda: _status(uow, dest) == "failed", timeout_s=15)
    with uow() as s:
        assert {d.state for d in repository.deliveries_for(s, dest)} == {"failed"}
        row = s.get_one(WebhookDestination, dest)
        assert row.status_updated_at >= row.created_at
    posts = len(receiver.received())
    _emit(uow, ("message.created", "m3", {}))  # a failed destination gets nothing new
    assert drainer.drain(dest).skipped
    assert len(receiver.received()) == posts
    with uow() as s:
        assert [
            d.notification_id for d in repository.deliveries_for(s, dest) if d.state == "pending"
        ] == []
        service.update(s, dest, {"status": "active"})  # revived by hand
    assert _status(uow, dest) == "active"


def test_sweep_retires_destinations_failing_too_long(
    uow: Uow,
    wh_settings: WebhookSettings,
    service: WebhookService,
    receiver: Receiver,
    drainer: Drainer,
) -> None:
    dest, _ = _create(uow, service, receiver.url())
    receiver.route("/hook", status=500)
    _emit(uow, ("message.created", "m1", {}))
    drainer.drain(dest)
    assert _status(uow, dest) == "failing"
    time.sleep(1.1)  # failing for longer than the sweep's failed_after_s (1 s) below
    with uow() as s:
        result = sweep.sweep(s, wh_settings.model_copy(update={"failed_after_s": 1.0}))
    assert result.failed_destination_ids == [dest]
    assert _status(uow, dest) == "failed"


def test_receiver_down_then_up_loses_nothing(
    uow: Uow, service: WebhookService, receiver: Receiver, drainer: Drainer
) -> None:
    dest, _ = _create(uow, service, receiver.url())
    receiver.stop()
    _emit(uow, *[("message.created", f"m{i}", {}) for i in range(10)])
    drainer.drain(dest)
    assert _status(uow, dest) == "failing"
    with uow() as s:
        first = repository.deliveries_for(s, dest)[0]
        # One attempt or more: how many retries fit in the drain depends on the machine's pace.
        attempts = repository.attempts_for(s, first.delivery_id)
        assert attempts
        assert all(a.status_code is None and a.error_class == "ConnectError" for a in attempts)
    receiver.start()
    _drain_until(drainer, dest, lambda: len({r.json()["id"] for r in receiver.accepted()}) == 10)
    assert _status(uow, dest) == "active"


def test_attempts_run_out_then_later_changes_proceed(
    uow: Uow,
    wh_settings: WebhookSettings,
    box: SecretBox,
    sender: Sender,
    service: WebhookService,
    receiver: Receiver,
) -> None:
    drainer = Drainer(
        uow, settings=wh_settings.model_copy(update={"max_attempts": 2}), box=box, sender=sender
    )
    dest, _ = _create(uow, service, receiver.url())
    receiver.route(
        "/hook", decide=lambda body: 500 if body["data"]["object"]["step"] == 0 else None
    )
    _emit(uow, ("message.created", "m", {"step": 0}), ("message.updated", "m", {"step": 1}))
    _drain_until(drainer, dest, lambda: bool(receiver.accepted()))
    assert [r.json()["data"]["object"]["step"] for r in receiver.received()] == [0, 0, 1]
    with uow() as s:
        assert [d.state for d in repository.deliveries_for(s, dest)] == ["failed", "delivered"]


def test_a_destination_that_now_resolves_privately_is_not_called(
    uow: Uow, box: SecretBox, sender: Sender, service: WebhookService, receiver: Receiver
) -> None:
    dest, _ = _create(uow, service, receiver.url())
    _emit(uow, ("message.created", "m", {}))
    strict = Drainer(uow, settings=WebhookSettings(), box=box, sender=sender)
    outcome = strict.drain(dest)
    assert outcome.failed == 1 and receiver.received() == []
    with uow() as s:
        (delivery,) = repository.deliveries_for(s, dest)
        (attempt,) = repository.attempts_for(s, delivery.delivery_id)
    assert attempt.error_class == "DestinationRefused"
    assert outcome.next_due_in_s is not None  # a retry is scheduled, as for any failure


def test_drain_reports_when_the_next_retry_is_due(
    uow: Uow,
    wh_settings: WebhookSettings,
    box: SecretBox,
    sender: Sender,
    service: WebhookService,
    receiver: Receiver,
) -> None:
    settings = wh_settings.model_copy(update={"backoff_base_s": 2.0, "backoff_max_s": 2.0})
    drainer = Drainer(uow, settings=settings, box=box, sender=sender)
    dest, _ = _create(uow, service, receiver.url())
    receiver.route("/hook", status=502)
    _emit(uow, ("message.created", "m", {}))
    outcome = drainer.drain(dest)
    assert outcome.failed == 1 and not outcome.more_due
    assert outcome.next_due_in_s is not None and 0 < outcome.next_due_in_s <= 2.0
    with uow() as s:
        assert repository.destinations_with_due_work(s, 10) == []
    time.sleep(outcome.next_due_in_s + 0.1)  # the retry's back-off runs out
    with uow() as s:
        assert repository.destinations_with_due_work(s, 10) == [dest]


def test_drain_budget_leaves_more_due(
    uow: Uow, service: WebhookService, receiver: Receiver, drainer: Drainer
) -> None:
    dest, _ = _create(uow, service, receiver.url())
    _emit(uow, *[("message.created", f"m{i}", {}) for i in range(10)])
    outcome = drainer.drain(dest, budget_s=0.0)
    assert (outcome.attempted, outcome.more_due) == (0, True)
    assert drainer.drain(dest).delivered == 10


def test_purge_drops_old_notifications_but_keeps_owed_ones(
    uow: Uow,
    wh_settings: WebhookSettings,
    service: WebhookService,
    receiver: Receiver,
    drainer: Drainer,
) -> None:
    dest, _ = _create(uow, service, receiver.url())
    receiver.route(
        "/hook", decide=lambda body: 500 if body["data"]["object"]["id"] == "owed" else None
    )
    _emit(uow, ("message.created", "done", {}), ("message.created", "owed", {}))
    drainer.drain(dest)
    with uow() as s:
        s.connection().exec_driver_sql(
            "UPDATE webhook_outbox SET dispatched_at = now() - interval '30 days'"
        )
    with uow() as s:
        assert sweep.purge(s, wh_settings) == 1
    with uow() as s:
        assert [d.state for d in repository.deliveries_for(s, dest)] == ["pending"]
        assert len(s.scalars(select(WebhookDestination)).all()) == 1
