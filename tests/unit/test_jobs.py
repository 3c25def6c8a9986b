"""pipeline.jobs: what a process that is not a worker sends, by task name, and how.

No broker: the Celery app is replaced by a recorder; the coalescing flag lives in fakeredis.
That the CLI's client and the workers' app publish the same messages follows from one
publish_config, checked at the end.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import fakeredis
import pytest
import redis
from cryptography.fernet import Fernet

from pipeline.config import Settings
from pipeline.crypto import SecretBox
from pipeline.grants.schemas import GrantRequest
from pipeline.jobs import MAX_SEND_COUNTDOWN_S, Jobs, publish_config
from pipeline.presets import preset, queue_names
from pipeline.redis import WEBHOOK_KICK_KEY


@dataclass
class Sent:
    id: str


@dataclass
class RecordingApp:
    """Stands for a Celery app: records ``send_task`` calls, or fails them."""

    calls: list[tuple[str, list[Any], dict[str, Any]]] = field(default_factory=list)
    fail: Exception | None = None

    def send_task(self, name: str, args: list[Any] | None = None, **options: Any) -> Sent:
        if self.fail is not None:
            raise self.fail
        self.calls.append((name, list(args or []), options))
        return Sent(id=f"task-{len(self.calls)}")


@pytest.fixture
def app() -> RecordingApp:
    return RecordingApp()


@pytest.fixture
def flags() -> fakeredis.FakeRedis:
    return fakeredis.FakeRedis()


@pytest.fixture
def jobs(app: RecordingApp, flags: fakeredis.FakeRedis) -> Jobs:
    return Jobs(lambda: app, lambda: flags)  # type: ignore[arg-type, return-value]


def test_syncs_go_by_name_to_the_providers_queue(jobs: Jobs, app: RecordingApp) -> None:
    jobs.sync_grant("g-1", "yahoo")
    jobs.sync_folder("g-1", "f-1", "generic")
    jobs.sync_folder("g-1", "f-1", "generic", countdown=5, uid_range=(10, 20))
    assert app.calls == [
        ("pipeline.sync.grant", ["g-1"], {"queue": preset("yahoo").queue}),
        ("pipeline.sync.folder", ["g-1", "f-1"], {"queue": "sync.generic", "countdown": None}),
        ("pipeline.sync.folder", ["g-1", "f-1", 10, 20], {"queue": "sync.generic", "countdown": 5}),
    ]


def test_a_grant_creation_carries_its_password_sealed_only(jobs: Jobs, app: RecordingApp) -> None:
    key = Fernet.generate_key().decode()
    settings = Settings(encryption_keys=key)
    request = GrantRequest(email="alice@yahoo.com", password="app-password")
    assert jobs.create_grant(request, settings) == "task-1"
    name, (payload,), options = app.calls[0]
    assert name == "pipeline.grants.create"
    assert options == {"queue": preset(request.resolve().provider).queue}
    assert "app-password" not in repr(app.calls)
    assert SecretBox([key]).open(payload["password_sealed"]) == "app-password"


def test_a_send_drain_is_asked_for_unless_the_sweep_will_do_it(
    jobs: Jobs, app: RecordingApp, caplog: pytest.LogCaptureFixture
) -> None:
    jobs.deliver_sends("g-1")
    jobs.deliver_sends("g-1", 30.0)
    jobs.deliver_sends("g-1", MAX_SEND_COUNTDOWN_S + 1)  # past the visibility timeout's margin
    assert [(c[1], c[2]["queue"], c[2]["countdown"]) for c in app.calls] == [
        (["g-1"], "send", None),
        (["g-1"], "send", 30.0),
    ]
    app.fail = redis.ConnectionError("broker down")
    jobs.deliver_sends("g-1")  # logged, never raised: the outbox sweep sends it
    assert "send drain not enqueued" in caplog.text


def test_webhook_kicks_coalesce_until_the_dispatch_starts(
    jobs: Jobs, app: RecordingApp, flags: fakeredis.FakeRedis
) -> None:
    for _ in range(50):
        jobs.kick_webhooks()
    assert app.calls == [("pipeline.webhooks.dispatch", [], {"queue": "webhooks"})]
    flags.delete(WEBHOOK_KICK_KEY)  # what the dispatch task does when it starts
    jobs.kick_webhooks()
    assert len(app.calls) == 2


def test_a_failed_kick_leaves_no_flag_and_never_raises(
    jobs: Jobs, app: RecordingApp, flags: fakeredis.FakeRedis
) -> None:
    app.fail = redis.ConnectionError("broker down")
    jobs.kick_webhooks()
    assert flags.get(WEBHOOK_KICK_KEY) is None
    app.fail = None
    jobs.kick_webhooks()
    assert len(app.calls) == 1


def test_without_redis_a_send_fails_when_made_and_a_kick_only_warns(
    caplog: pytest.LogCaptureFixture,
) -> None:
    jobs = Jobs.from_settings(Settings(redis_url=None))  # builds nothing yet
    with pytest.raises(Exception, match="IMAP_PIPELINE_REDIS_URL"):
        jobs.sync_grant("g-1", "generic")
    jobs.kick_webhooks()
    assert "IMAP_PIPELINE_REDIS_URL" in caplog.text


def test_every_queue_has_its_own_direct_exchange() -> None:
    queues = publish_config("redis://127.0.0.1:1/0")["task_queues"]
    assert {q.name for q in queues} == {*queue_names(), "send", "webhooks", "maintenance"}
    for q in queues:
        assert (q.exchange.name, q.exchange.type, q.routing_key) == (q.name, "direct", q.name)


def test_the_workers_publish_as_the_clients_do() -> None:
    from workers.celeryconfig import celery_config

    settings = Settings(redis_url="redis://127.0.0.1:1/0")
    publish = publish_config("redis://127.0.0.1:1/0")
    worker = celery_config(settings)
    assert {k: worker[k] for k in publish if k != "task_queues"} == {
        k: v for k, v in publish.items() if k != "task_queues"
    }
    assert [q.name for q in worker["task_queues"]] == [q.name for q in publish["task_queues"]]
